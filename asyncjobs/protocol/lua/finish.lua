-- Record the end of many executions at once (success, failure, stop, retry,
-- repeat, give-back), each exactly as stock RQ 2.12 would leave it
-- (docs/rq-protocol.md §8), plus dependents, atomically.
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
-- ARGV[1]: JSON {worker, now (epoch int, str), now_ts, state?, current?, jobs: [...]}
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
-- Returns the number of outcomes applied.
local p = cjson.decode(ARGV[1])
local worker, now, now_ts = p.worker, tonumber(p.now), p.now_ts
local wkey = 'rq:worker:' .. worker
local FOREVER = 31536000

local function is_hash(key)
  return redis.call('TYPE', key)['ok'] == 'hash'
end

-- EXPIRE the job and, when they can exist, its dependents / dependencies sets
-- (an EXPIRE of a missing key is a no-op, so skipping those is equivalent).
local function expire_job(j, ttl, has_dependents)
  redis.call('EXPIRE', 'rq:job:' .. j.id, ttl)
  if has_dependents then redis.call('EXPIRE', 'rq:job:' .. j.id .. ':dependents', ttl) end
  if j.dd then redis.call('EXPIRE', 'rq:job::' .. j.id .. ':dependencies', ttl) end
end

local function delete_job(jid)
  local ek = 'rq:executions:' .. jid
  for _, eid in ipairs(redis.call('ZRANGE', ek, 0, -1)) do
    redis.call('DEL', 'rq:execution:' .. jid .. ':' .. eid)
  end
  redis.call('DEL', 'rq:job:' .. jid, 'rq:job:' .. jid .. ':dependents', 'rq:job::' .. jid .. ':dependencies', ek)
end

local function push(q, jid, at_front)
  if at_front then
    redis.call('LPUSH', 'rq:queue:' .. q, jid)
  else
    redis.call('RPUSH', 'rq:queue:' .. q, jid)
  end
end

-- Queue.enqueue_dependents semantics (docs/rq-protocol.md §8.9).
-- Returns true if the parent had dependents.
local function enqueue_dependents(parent, parent_status)
  local dkey = 'rq:job:' .. parent .. ':dependents'
  if redis.call('TYPE', dkey)['ok'] ~= 'set' then return false end
  local children = redis.call('SMEMBERS', dkey)
  if #children == 0 then return false end
  local enqueued = {}
  for _, child in ipairs(children) do
    local ck = 'rq:job:' .. child
    if is_hash(ck) then
      local f = redis.call('HMGET', ck, 'status', 'origin', 'allow_dependency_failures', 'enqueue_at_front', 'data')
      local status, origin, allow, front = f[1], f[2], f[3] == '1', f[4] == '1'
      if f[5] and status ~= 'canceled' then
        local met = parent_status == 'finished' or (parent_status == 'failed' and allow)
        local deps_key = 'rq:job::' .. child .. ':dependencies'
        if met and redis.call('TYPE', deps_key)['ok'] == 'set' then
          for _, dep in ipairs(redis.call('SMEMBERS', deps_key)) do
            if dep ~= parent then
              local dk = 'rq:job:' .. dep
              local s = is_hash(dk) and redis.call('HGET', dk, 'status')
              if s and not (s == 'finished' or (allow and s == 'failed')) then
                met = false
                break
              end
            end
          end
        end
        if met and origin then
          redis.call('HSET', ck, 'status', 'queued', 'enqueued_at', now_ts)
          push(origin, child, front)
          redis.call('ZREM', 'rq:deferred:' .. origin, child)
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
  redis.call('XADD', 'rq:results:' .. jid, 'MAXLEN', '~', 10, '*', unpack(fields))
  if ttl ~= nil then
    if tonumber(ttl) == -1 then
      redis.call('PERSIST', 'rq:results:' .. jid)
    else
      redis.call('EXPIRE', 'rq:results:' .. jid, ttl)
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
    redis.call('ZADD', 'rq:scheduled:' .. j.q, nx.score, j.id)
    redis.call('SADD', 'rq:queues', 'rq:queue:' .. j.q)
  end
end

local function fail_registry(j, has_dependents)
  local ttl = j.failure_ttl and tonumber(j.failure_ttl) or FOREVER
  local score = ttl
  if ttl >= 0 then score = now + ttl end
  redis.call('ZADD', 'rq:failed:' .. j.q, score, j.id)
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
      redis.call('ZADD', 'rq:finished:' .. j.q, score, j.id)
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
  local wip = 'rq:wip:' .. j.q
  if redis.call('ZSCORE', wip, member) then
    local jk = 'rq:job:' .. j.id
    -- A job deleted, or canceled with Job.cancel(), while it ran keeps what the user did
    -- (and a key that is no longer a job hash is left alone).
    if is_hash(jk) then
      local cur = redis.call('HMGET', jk, 'status', 'data')
      if cur[2] and cur[1] ~= 'canceled' then apply(j, jk) end
    end
    -- The removals Redis never refuses come last: the execution is done.
    redis.call('DEL', 'rq:execution:' .. j.id .. ':' .. j.eid)
    redis.call('ZREM', 'rq:executions:' .. j.id, j.eid)
    redis.call('ZREM', wip, member)
    applied = applied + 1
    ok = ok + (j.ok or 0)
    failed = failed + (j.failed or 0)
    wt = wt + (tonumber(j.wt) or 0)
  end
end

if redis.call('EXISTS', wkey) == 1 then
  if p.state then
    redis.call('HSET', wkey, 'state', p.state)
    if p.current and p.current ~= '' then
      redis.call('HSET', wkey, 'current_job', p.current)
    else
      redis.call('HDEL', wkey, 'current_job')
    end
  end
  if ok > 0 then redis.call('HINCRBY', wkey, 'successful_job_count', ok) end
  if failed > 0 then redis.call('HINCRBY', wkey, 'failed_job_count', failed) end
  if wt > 0 then redis.call('HINCRBYFLOAT', wkey, 'total_working_time', string.format('%.6f', wt)) end
end
return applied
