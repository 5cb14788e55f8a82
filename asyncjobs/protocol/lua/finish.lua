-- Record the end of many executions at once (success, failure, stop, retry,
-- repeat, give-back), each exactly as a stock RQ worker of the installed major
-- would leave it (docs/rq-protocol.md §8, §13), plus dependents, atomically.
--
-- At most once (docs/rq-protocol.md §11.1): an outcome is applied only while
-- its execution's member `<id>:<eid>` is still in rq:wip:<q>, and removing that
-- member is part of applying it.  A replayed call (a retry after a lost reply,
-- a re-send after an outage) and an outcome for a job that RQ's maintenance
-- already took as abandoned are therefore no-ops, and their counters are not
-- added twice.
--
-- Order within one outcome (docs/rq-protocol.md §11.4): every write Redis may
-- refuse under maxmemory (HSET, XADD, ZADD, pushes) comes before the removals it
-- never refuses (DEL, ZREM): a call stopped half-way leaves the execution in
-- rq:wip, where the worker (one by one) or RQ's abandoned-job maintenance finds
-- it again.
--
-- Each applied outcome also removes the execution's member of the worker's
-- executions set (RQ 3, docs/rq-protocol.md §13.3) and, for a job enqueued with
-- RQ 3's `rate_limit=RateLimit(...)`, releases its slot unless the job is queued
-- again, promoting the next waiting jobs exactly as RQ 3's RELEASE script does
-- (docs/rq-protocol.md §13.4), in the same atomic step as the outcome.
--
-- KEYS[1]: the key prefix (`rq`, or RQ_KEY_PREFIX; docs/rq-protocol.md §13.2)
-- ARGV[1]: JSON {worker, now (epoch int, str), now_ts, rq3?, state?, current?, jobs: [...]}
--   rq3: the installed RQ is 3.x: a rate-limited dependent waits for a slot instead
--        of being pushed, and a deleted job's results stream goes with it (§13.5, §13.8)
--   state/current: the worker's `state` and `current_job` to write with the batch.
-- Each job (asyncjobs.protocol.transitions.Transition.to_wire):
--   id, eid, q          job id, execution id, queue
--   kind                success | failure | stopped | max_retries | retry | requeue
--   started_at, ended_at, hb    job-hash timestamps (absent for requeue)
--   result              flat XADD fields of the Result entry (optional)
--   result_ttl          success: result TTL (0 = delete the job, -1 = forever)
--   failure_ttl         failed/stopped: TTL of the job and its result (optional)
--   deps                enqueue dependents (finished/failed parent)
--   dd                  the job's rq:job::<id>:dependencies set exists
--   no_registry         failed without a FailedJobRegistry entry
--   next                {status 'queued'|'scheduled', at_front, fields {..}, score?}
--   repairs             {field: value} fixed in a malformed hash
--   ok, failed, wt      worker counters to add (successful, failed, working time)
--   rl                  the job's RQ 3 rate-limit key (it holds a slot under it)
-- Returns the number of outcomes applied.
local P = KEYS[1]
local p = cjson.decode(ARGV[1])
local worker, now, now_ts, rq3 = p.worker, tonumber(p.now), p.now_ts, p.rq3
local wkey = P .. ':worker:' .. worker
local wexec = wkey .. ':executions'
local FOREVER = 31536000

local function is_hash(key)
  return redis.call('TYPE', key)['ok'] == 'hash'
end

-- A key that is of `kind` or does not exist (anything else is not RQ's: left alone).
local function is_or_none(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == kind or t == 'none'
end

-- RQ 3's ACQUIRE_AND_ENQUEUE_SCRIPT (rq/rate_limit.py, docs/rq-protocol.md §13.4): fill free
-- slots of rate-limit key `rl` with waiting jobs, oldest first.  Entries whose hash is gone,
-- has no origin or is not `rate_limited` are dropped, as there; a key that is not a job hash is
-- dropped too (RQ's script would raise on it and stall every later promotion).
local function acquire(rl, concurrency)
  local allowed, waiting = P .. ':rl:' .. rl .. ':allowed', P .. ':rl:' .. rl .. ':rate_limited'
  if not (is_or_none(allowed, 'zset') and is_or_none(waiting, 'zset')) then return end
  while redis.call('ZCARD', allowed) < concurrency do
    local popped = redis.call('ZPOPMIN', waiting)
    if #popped == 0 then break end
    local jid = popped[1]
    local jk = P .. ':job:' .. jid
    if is_hash(jk) then
      local f = redis.call('HMGET', jk, 'origin', 'status', 'enqueue_at_front')
      if f[1] and f[2] == 'rate_limited' then
        redis.call('ZADD', allowed, now, jid)
        if f[3] == '1' then
          redis.call('LPUSH', P .. ':queue:' .. f[1], jid)
        else
          redis.call('RPUSH', P .. ':queue:' .. f[1], jid)
        end
        redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now_ts)
      end
    end
  end
end

-- RQ 3's RELEASE_AND_ENQUEUE_SCRIPT: give back `jid`'s slot, then promote.  The concurrency is
-- the key's registry config (`HGET <prefix>:rl:<key> concurrency`, 0 when unset), as stock reads it.
local function release_slot(rl, jid)
  local allowed = P .. ':rl:' .. rl .. ':allowed'
  if not is_or_none(allowed, 'zset') then return end
  redis.call('ZREM', allowed, jid)
  local config = P .. ':rl:' .. rl
  local concurrency = 0
  if is_hash(config) then concurrency = tonumber(redis.call('HGET', config, 'concurrency')) or 0 end
  acquire(rl, concurrency)
end

-- RQ 3's rate-limited enqueue (Queue._enqueue_rate_limited_job) for a dependent: it waits in
-- `rate_limited` for a slot instead of being pushed.  False (push it) when its limiter's keys
-- are not RQ's, so a corrupted limiter never strands the job.
local function enqueue_rate_limited(child, ck, rl, concurrency, origin)
  local config, waiting = P .. ':rl:' .. rl, P .. ':rl:' .. rl .. ':rate_limited'
  if not (is_or_none(config, 'hash') and is_or_none(waiting, 'zset')
          and is_or_none(P .. ':rl:' .. rl .. ':allowed', 'zset') and is_or_none(P .. ':rl-keys', 'set')) then
    return false
  end
  redis.call('SADD', P .. ':rl-keys', rl)
  redis.call('HSET', config, 'concurrency', concurrency)
  redis.call('HSET', ck, 'status', 'rate_limited')
  redis.call('ZADD', waiting, now, child)
  acquire(rl, concurrency)
  redis.call('ZREM', P .. ':deferred:' .. origin, child)  -- removals last (docs/rq-protocol.md §11.4)
  return true
end

-- EXPIRE the job and, when they can exist, its dependents / dependencies sets
-- (an EXPIRE of a missing key is a no-op, so skipping those is equivalent).
local function expire_job(j, ttl, has_dependents)
  redis.call('EXPIRE', P .. ':job:' .. j.id, ttl)
  if has_dependents then redis.call('EXPIRE', P .. ':job:' .. j.id .. ':dependents', ttl) end
  if j.dd then redis.call('EXPIRE', P .. ':job::' .. j.id .. ':dependencies', ttl) end
end

local function delete_job(jid)
  local ek = P .. ':executions:' .. jid
  for _, eid in ipairs(redis.call('ZRANGE', ek, 0, -1)) do
    redis.call('DEL', P .. ':execution:' .. jid .. ':' .. eid)
  end
  redis.call('DEL', P .. ':job:' .. jid, P .. ':job:' .. jid .. ':dependents', P .. ':job::' .. jid .. ':dependencies', ek)
  if rq3 then redis.call('DEL', P .. ':results:' .. jid) end  -- RQ 3's Job.delete() takes the results too
end

local function push(q, jid, at_front)
  if at_front then
    redis.call('LPUSH', P .. ':queue:' .. q, jid)
  else
    redis.call('RPUSH', P .. ':queue:' .. q, jid)
  end
end

-- Queue.enqueue_dependents semantics (docs/rq-protocol.md §8.9), in one step: RQ 3 moves a
-- ready child through `ready_to_enqueue` and its ReadyJobRegistry between two transactions
-- (§13.5); here both happen in this script, so the child goes straight from deferred to its
-- queue, which RQ 3's readers accept as RQ 2.12's did.  Under RQ 3 a rate-limited child waits
-- for a slot instead (§13.4).
-- Returns true if the parent had dependents.
local function enqueue_dependents(parent, parent_status)
  local dkey = P .. ':job:' .. parent .. ':dependents'
  local children = redis.pcall('SMEMBERS', dkey)  -- fails (WRONGTYPE) only when it is not a set
  if children['err'] or #children == 0 then return false end
  local enqueued = {}
  for _, child in ipairs(children) do
    local ck = P .. ':job:' .. child
    if is_hash(ck) then
      local f = redis.call('HMGET', ck, 'status', 'origin', 'allow_dependency_failures', 'enqueue_at_front', 'data',
                           'rate_limit_key', 'rate_limit_concurrency')
      local status, origin, allow, front = f[1], f[2], f[3] == '1', f[4] == '1'
      if f[5] and status ~= 'canceled' then
        local met = parent_status == 'finished' or (parent_status == 'failed' and allow)
        local deps_key = P .. ':job::' .. child .. ':dependencies'
        if met and redis.call('TYPE', deps_key)['ok'] == 'set' then
          -- Page through the set (SSCAN) and stop at the first dependency not met: a child of N
          -- parents costs each parent's finish a page or two, not N members copied every time
          -- (with SMEMBERS, 3,000 parents held Redis for seconds in all; issue 18, 7a).
          local cursor = '0'
          repeat
            local page = redis.call('SSCAN', deps_key, cursor, 'COUNT', 100)
            cursor = page[1]
            for _, dep in ipairs(page[2]) do
              if dep ~= parent then
                local dk = P .. ':job:' .. dep
                local s = is_hash(dk) and redis.call('HGET', dk, 'status')
                if s and not (s == 'finished' or (allow and s == 'failed')) then
                  met = false
                  break
                end
              end
            end
          until cursor == '0' or not met
        end
        if met and origin then
          local rl, concurrency = f[6], tonumber(f[7] or '')
          if not (rq3 and rl and rl ~= '' and concurrency
                  and enqueue_rate_limited(child, ck, rl, concurrency, origin)) then
            redis.call('HSET', ck, 'status', 'queued', 'enqueued_at', now_ts)
            push(origin, child, front)
            redis.call('ZREM', P .. ':deferred:' .. origin, child)
          end
          table.insert(enqueued, child)
        end
      end
    end
  end
  if #enqueued == #children then
    redis.call('DEL', dkey)
  else
    for i = 1, #enqueued, 1000 do  -- unpack() has a stack limit: chunk large fan-outs
      redis.call('SREM', dkey, unpack(enqueued, i, math.min(i + 999, #enqueued)))
    end
  end
  return true
end

local function add_result(jid, fields, ttl)
  redis.call('XADD', P .. ':results:' .. jid, 'MAXLEN', '~', 10, '*', unpack(fields))
  if ttl ~= nil then
    if tonumber(ttl) == -1 then
      redis.call('PERSIST', P .. ':results:' .. jid)
    else
      redis.call('EXPIRE', P .. ':results:' .. jid, ttl)
    end
  end
end

local function requeue_or_schedule(j, jk, fields)
  local nx = j.next
  table.insert(fields, 'status')
  table.insert(fields, nx.status)
  for k, v in pairs(nx.fields or {}) do
    table.insert(fields, k)
    table.insert(fields, v)
  end
  if nx.status == 'queued' then
    table.insert(fields, 'enqueued_at')
    table.insert(fields, now_ts)
    redis.call('HSET', jk, unpack(fields))
    push(j.q, j.id, nx.at_front)
  else
    redis.call('HSET', jk, unpack(fields))
    redis.call('ZADD', P .. ':scheduled:' .. j.q, nx.score, j.id)
    redis.call('SADD', P .. ':queues', P .. ':queue:' .. j.q)
  end
end

local function fail_registry(j, has_dependents)
  local ttl = j.failure_ttl and tonumber(j.failure_ttl) or FOREVER
  local score = ttl
  if ttl >= 0 then score = now + ttl end
  redis.call('ZADD', P .. ':failed:' .. j.q, score, j.id)
  if ttl > 0 then
    expire_job(j, ttl, has_dependents)
  end
end

local function apply(j, jk)
  local kind = j.kind
  -- One HSET per job: repairs (malformed hashes), timestamps, then the new status.
  local fields = {}
  if j.repairs then
    for k, v in pairs(j.repairs) do
      table.insert(fields, k)
      table.insert(fields, v)
    end
  end
  if kind == 'requeue' then
    -- Back at the front, as if never started: what stock's requeue clears, and the worker.
    for _, v in ipairs({'status', 'queued', 'started_at', '', 'ended_at', '', 'worker_name', ''}) do
      table.insert(fields, v)
    end
    redis.call('HSET', jk, unpack(fields))
    push(j.q, j.id, true)
    return
  end
  for _, v in ipairs({'started_at', j.started_at, 'ended_at', j.ended_at, 'last_heartbeat', j.hb,
                      'worker_name', worker}) do
    table.insert(fields, v)
  end
  if kind == 'success' then
    local ttl = tonumber(j.result_ttl)
    if ttl == 0 then
      if j.deps then enqueue_dependents(j.id, 'finished') end
      delete_job(j.id)
    else
      add_result(j.id, j.result, ttl)
      local score = '+inf'
      if ttl > 0 then score = now + ttl end
      redis.call('ZADD', P .. ':finished:' .. j.q, score, j.id)
      if j.next then
        requeue_or_schedule(j, jk, fields)
      else
        table.insert(fields, 'status')
        table.insert(fields, 'finished')
        redis.call('HSET', jk, unpack(fields))
      end
      local has_dependents = j.deps and enqueue_dependents(j.id, 'finished')
      if ttl > 0 and not j.next then expire_job(j, ttl, has_dependents) end
    end
  elseif kind == 'failure' or kind == 'stopped' or kind == 'max_retries' then
    table.insert(fields, 'status')
    table.insert(fields, kind == 'stopped' and 'stopped' or 'failed')
    redis.call('HSET', jk, unpack(fields))
    if j.result then add_result(j.id, j.result, j.failure_ttl) end
    local has_dependents = false
    if j.deps then has_dependents = enqueue_dependents(j.id, 'failed') end
    if not j.no_registry then fail_registry(j, has_dependents or not j.deps) end
  elseif kind == 'retry' then
    if j.result then add_result(j.id, j.result, j.failure_ttl) end
    requeue_or_schedule(j, jk, fields)
  end
end

local applied, ok, failed, wt = 0, 0, 0, 0
for _, j in ipairs(p.jobs) do
  local member = j.id .. ':' .. j.eid
  local wip = P .. ':wip:' .. j.q
  if redis.call('ZSCORE', wip, member) then
    local jk = P .. ':job:' .. j.id
    -- A job deleted, or canceled with Job.cancel(), while it ran keeps what the user did
    -- (and a key that is no longer a job hash is left alone: HMGET fails on it with WRONGTYPE).
    local cur = redis.pcall('HMGET', jk, 'status', 'data')
    if not cur['err'] and cur[2] and cur[1] ~= 'canceled' then apply(j, jk) end
    -- The removals Redis never refuses come last: the execution is done.
    redis.call('DEL', P .. ':execution:' .. j.id .. ':' .. j.eid)
    redis.call('ZREM', P .. ':executions:' .. j.id, j.eid)
    redis.call('SREM', wexec, member)
    redis.call('ZREM', wip, member)
    -- Its rate-limit slot, once the outcome is stored (RQ 3's release_slot): kept while the job
    -- is queued again (an immediate retry or repeat, a give-back) or running elsewhere.
    if j.rl and j.rl ~= '' then
      local st = is_hash(jk) and redis.call('HGET', jk, 'status')
      if st ~= 'queued' and st ~= 'started' then release_slot(j.rl, j.id) end
    end
    applied = applied + 1
    ok = ok + (j.ok or 0)
    failed = failed + (j.failed or 0)
    wt = wt + (tonumber(j.wt) or 0)
  end
end

-- The second value (dropped when this file runs as a script of its own) tells exchange.lua's claim
-- that the worker hash already says busy with a current job: it need not write either again.
local busy = false
if redis.call('EXISTS', wkey) == 1 then
  if p.state then
    if p.current and p.current ~= '' then
      redis.call('HSET', wkey, 'state', p.state, 'current_job', p.current)
      busy = p.state == 'busy'
    else
      redis.call('HSET', wkey, 'state', p.state)
      redis.call('HDEL', wkey, 'current_job')
    end
  end
  if ok > 0 then redis.call('HINCRBY', wkey, 'successful_job_count', ok) end
  if failed > 0 then redis.call('HINCRBY', wkey, 'failed_job_count', failed) end
  if wt > 0 then redis.call('HINCRBYFLOAT', wkey, 'total_working_time', string.format('%.6f', wt)) end
end
return applied, busy
