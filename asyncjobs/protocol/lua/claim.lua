-- Pop up to N job ids from the queues in the given order and mark each one
-- started in the same atomic step, exactly as a stock worker's two start
-- transactions would (docs/rq-protocol.md §6), so a popped
-- id is never outside both the queue and rq:wip:<q>.
--
-- This is the body of a function inside store.py's exchange script, which
-- passes `busy` (see the end) and `record(q, jid, eid)`: it notes each claim under the call's token
-- before the claim's own writes, so a replay of the call returns these jobs
-- instead of claiming new ones (docs/rq-protocol.md §11.2).
--
-- Bad entries fail on their own and never abort the call (docs/rq-protocol.md
-- §11.5): an id whose hash is gone, or has no `data`, is dropped (as a stock
-- worker silently drops it); an id whose rq:job:<id> key is not a hash is
-- "poisoned": popped and reported.
--
-- Order per job (docs/rq-protocol.md §11.4): every write Redis may refuse under
-- maxmemory (HSET, ZADD, RPUSH) comes before the LPOP, which it never refuses: a
-- call stopped half-way leaves the id on its queue.
--
-- Under either RQ major it writes what RQ 3.0's Block A and Block B write
-- (docs/rq-protocol.md §13.3): the execution hash with `job_id`, and the
-- `<jid>:<eid>` member of the worker's executions set, which RQ 3's readers
-- (`Worker.get_current_executions()`, `rq info`, rq-dashboard) list; RQ 2.12's
-- readers ignore both and read `current_job`, which is kept.
--
-- KEYS[1]: the key prefix (`rq`, or RQ_KEY_PREFIX): every key is built from it
--          (docs/rq-protocol.md §13.2), and declaring it routes the call to the
--          Redis Cluster node that owns the prefix's slot (§14).
-- KEYS[2]: the queue limits hash (asyncjobs/limits.py, docs/rq-protocol.md §11.8): per queue `c:<q>` (fleet-wide
--          concurrency), `r:<q>` (`<count>/<period ms>` starts) and `p:<q>` (paused until, epoch
--          ms, -1 until resumed), read (one HMGET) only when check_limits is 1: the worker
--          re-reads which queues have limits every second.  A queue that is
--          paused, at its concurrency or out of rate is skipped: the claim goes on with the next.
--          Concurrency counts the queue's rq:wip members whose deadline has not passed (a lease
--          the heartbeat renews); rate keeps the starts of the last period in `<KEYS[2]>:rate:<q>`.
-- ARGV: worker, now_float, now_ts, wip_score, hb_ttl, exec_score, exec_ttl,
--       n, nq, check_limits (1: read KEYS[2]), the nq queue names as a JSON array, this worker's
--       own room per queue as a JSON array (-1: none; '' for no caps at all), then n execution
--       ids.  (Two arguments for the queues, not 2 x nq: a worker on 1,000 queues sends and
--       Redis parses two strings per claim, not 2,000 arguments.)
-- Returns {suspended (0/1), {{q, jid, eid, hgetall}...}, {dropped ids}, {{id, type}...},
--          {{q, ms}...}}: the last lists the queues with jobs that a limit held back, with the
--          milliseconds until one may open (-1: paused until resumed).
local worker, now_f, now_ts = ARGV[1], ARGV[2], ARGV[3]
local wip_score, hb_ttl, exec_score, exec_ttl = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local n, nq = tonumber(ARGV[8]), tonumber(ARGV[9])
local check_limits = ARGV[10] == '1'
local queues = cjson.decode(ARGV[11])
local caps = ARGV[12] ~= '' and cjson.decode(ARGV[12]) or nil
local base = 12
local P = KEYS[1]
local LIM = KEYS[2]
local wkey = P .. ':worker:' .. worker
local wexec = wkey .. ':executions'

local claimed = {}
local dropped = {}
local poisoned = {}

if redis.call('EXISTS', P .. ':suspended') == 1 then
  return {1, claimed, dropped, poisoned, {}}
end

-- Take the head of queue `qk` if it is a job: returns true when claimed.
local function start(q, qk, jid, eid)
  local jk = P .. ':job:' .. jid
  -- One read for a healthy job: HGETALL fails (WRONGTYPE) only on a key that is not a hash, and
  -- only then is its TYPE read, for the report (docs/rq-protocol.md §11.5).
  local h = redis.pcall('HGETALL', jk)
  if h['err'] then
    redis.call('LPOP', qk)
    table.insert(poisoned, {jid, redis.call('TYPE', jk)['ok']})
    return false
  end
  local has_data = false
  for i = 1, #h, 2 do
    if h[i] == 'data' then
      has_data = true
      break
    end
  end
  if not has_data then
    redis.call('LPOP', qk)
    table.insert(dropped, jid)
    return false
  end
  record(q, jid, eid)
  local ek = P .. ':execution:' .. jid .. ':' .. eid
  redis.call('HSET', ek, 'id', eid, 'job_id', jid, 'created_at', now_f, 'last_heartbeat', now_f,
             'worker_name', worker)
  redis.call('EXPIRE', ek, exec_ttl)  -- as long as its rq:executions entry (stock: hb_ttl; see header)
  redis.call('ZADD', P .. ':executions:' .. jid, exec_score, eid)
  redis.call('EXPIRE', P .. ':executions:' .. jid, exec_ttl)
  redis.call('HSET', jk, 'status', 'started', 'started_at', now_ts, 'last_heartbeat', now_ts, 'worker_name', worker)
  redis.call('ZADD', P .. ':wip:' .. q, wip_score, jid .. ':' .. eid)
  redis.call('SADD', wexec, jid .. ':' .. eid)
  redis.call('PERSIST', jk)
  redis.call('LPOP', qk)
  table.insert(claimed, {q, jid, eid, h})
  return true
end

-- The limits of the queues asked for: one HMGET, when the worker knows of any.
local lim = {}
if check_limits then
  local fields = {}
  for i = 1, nq do
    local q = queues[i]
    fields[3 * i - 2], fields[3 * i - 1], fields[3 * i] = 'c:' .. q, 'r:' .. q, 'p:' .. q
  end
  lim = redis.call('HMGET', LIM, unpack(fields))
end
local blocked = {}
local now_ms = nil
local function clock()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end

-- How many jobs of queue i this claim may start (up to `want`); when none, the milliseconds until
-- one may (-1: paused until resumed); the rate key and period when a rate is set.
local function room(i, q, want)
  local cap = caps and tonumber(caps[i])
  if cap and cap >= 0 and cap < want then want = cap end
  local c, r, p = lim[3 * i - 2], lim[3 * i - 1], lim[3 * i]
  if p then
    local untl = tonumber(p)
    if untl == -1 then return 0, nil, -1, 0 end
    if untl and untl > clock() then return 0, nil, untl - clock(), 0 end
  end
  if c then
    local limit = tonumber(c)
    if limit then
      local running = redis.call('ZCOUNT', P .. ':wip:' .. q, now_f, '+inf')
      if running >= limit then return 0, nil, 1000, 0 end
      if limit - running < want then want = limit - running end
    end
  end
  local rk = nil
  if r then
    local count, period = string.match(r, '^(%d+)/(%d+)$')
    count, period = tonumber(count), tonumber(period)
    if count and period then
      rk = LIM .. ':rate:' .. q
      redis.call('ZREMRANGEBYSCORE', rk, '-inf', clock() - period)
      local starts = redis.call('ZCARD', rk)
      if starts >= count then
        local oldest = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')
        return 0, nil, math.max(1, tonumber(oldest[2]) + period - clock()), 0
      end
      if count - starts < want then want = count - starts end
      return want, rk, 0, period
    end
  end
  return want, nil, 0, 0
end

-- Bad entries are popped too, but at most MAX_BAD per call: a flood of them cannot stall Redis.
local MAX_BAD = 1000
local used, bad = 0, 0
-- A worker listening on many queues finds most of them empty: one EXISTS over a chunk of CHUNK queue
-- keys (one command, counted in C) passes over a chunk of empty queues instead of an LRANGE for each,
-- so a claim's cost grows with the queues that have jobs, not with all the queues listed.
local CHUNK = 32
local empty_through = 0  -- queues 1..empty_through are known empty
local function known_empty(i)
  if nq <= CHUNK then return false end
  if i <= empty_through then return true end
  if i % CHUNK ~= 1 then return false end
  local last = math.min(i + CHUNK - 1, nq)
  local ks = {}
  for j = i, last do ks[#ks + 1] = P .. ':queue:' .. queues[j] end
  if redis.call('EXISTS', unpack(ks)) == 0 then
    empty_through = last
    return true
  end
  return false
end
for i = 1, nq do
  if not known_empty(i) then
    local q = queues[i]
    local qk = P .. ':queue:' .. q
    local allowed, rk, wait, period = nil, nil, 0, 0
    local taken = 0
    -- The queue's head, read in one LRANGE for as many jobs as the call still wants: every id
    -- visited before a stop is popped (claimed or bad), so the next read starts at the next one.
    local ids, pos = {}, 0
    while used < n and bad < MAX_BAD do
      pos = pos + 1
      if pos > #ids then
        ids, pos = redis.call('LRANGE', qk, 0, math.max(n - used, bad > 0 and 100 or 1) - 1), 1
      end
      local jid = ids[pos]
      if not jid then break end
      if allowed == nil then
        allowed, rk, wait, period = room(i, q, n - used)
      end
      if taken >= allowed then
        if taken == 0 and wait ~= 0 then table.insert(blocked, {q, string.format('%d', wait)}) end
        break
      end
      local eid = ARGV[base + used + 1]
      if start(q, qk, jid, eid) then
        used, taken = used + 1, taken + 1
        if rk then redis.call('ZADD', rk, clock(), jid .. ':' .. eid) end
      else
        bad = bad + 1
      end
    end
    if rk and taken > 0 then redis.call('PEXPIRE', rk, period) end
    if used >= n or bad >= MAX_BAD then break end
  end
end

-- rq info / dashboards: the worker is busy and names one running job (RQ 2.12's readers);
-- RQ 3's read the executions set, which lives as long as the execution records.
if #claimed > 0 then redis.call('EXPIRE', wexec, exec_ttl) end
-- (`busy`: the finish in the same call has just written both: nothing to add.)
if #claimed > 0 and not busy and redis.call('EXISTS', wkey) == 1 then
  redis.call('HSET', wkey, 'state', 'busy')
  if redis.call('HEXISTS', wkey, 'current_job') == 0 then
    redis.call('HSET', wkey, 'current_job', claimed[1][2])
  end
end
return {0, claimed, dropped, poisoned, blocked}
