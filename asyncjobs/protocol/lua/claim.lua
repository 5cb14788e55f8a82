-- Pop up to N job ids from the queues in the given order and mark each one
-- started in the same atomic step, exactly as a stock worker's two start
-- transactions would (rq-protocol.md §3.3), so a popped id is never outside
-- both the queue and rq:wip:<q>.  A job whose hash is gone (or has no `data`)
-- is dropped, as a stock worker silently drops it.
--
-- ARGV: worker, now_float, now_ts, wip_score, hb_ttl, exec_score, exec_ttl,
--       n, mode ('pop' | 'moved'), nq, q1..qnq, then either n execution ids
--       ('pop') or, for 'moved', one job id followed by one execution id.
-- Returns {suspended(0/1), {q, jid, eid, hgetall}..., dropped ids...}
local worker, now_f, now_ts = ARGV[1], ARGV[2], ARGV[3]
local wip_score, hb_ttl, exec_score, exec_ttl = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local n, mode, nq = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local base = 10 + nq

local claimed = {}
local dropped = {}

-- rq info / dashboards: the worker is busy and names one running job.
local function mark_busy()
  local wkey = 'rq:worker:' .. worker
  if #claimed > 0 and redis.call('EXISTS', wkey) == 1 then
    redis.call('HSET', wkey, 'state', 'busy')
    if redis.call('HEXISTS', wkey, 'current_job') == 0 then
      redis.call('HSET', wkey, 'current_job', claimed[1][2])
    end
  end
end

local function start(q, jid, eid)
  local jk = 'rq:job:' .. jid
  local h = redis.call('HGETALL', jk)
  local has_data = false
  for i = 1, #h, 2 do
    if h[i] == 'data' then
      has_data = true
      break
    end
  end
  if not has_data then
    table.insert(dropped, jid)
    return false
  end
  local ek = 'rq:execution:' .. jid .. ':' .. eid
  redis.call('HSET', ek, 'id', eid, 'created_at', now_f, 'last_heartbeat', now_f, 'worker_name', worker)
  redis.call('EXPIRE', ek, hb_ttl)
  redis.call('ZADD', 'rq:executions:' .. jid, exec_score, eid)
  redis.call('EXPIRE', 'rq:executions:' .. jid, exec_ttl)
  redis.call('ZADD', 'rq:wip:' .. q, wip_score, jid .. ':' .. eid)
  redis.call('HSET', jk, 'status', 'started', 'started_at', now_ts, 'last_heartbeat', now_ts, 'worker_name', worker)
  redis.call('PERSIST', jk)
  table.insert(claimed, {q, jid, eid, h})
  return true
end

if mode == 'moved' then
  local q, jid, eid = ARGV[11], ARGV[base + 1], ARGV[base + 2]
  -- The id was BLMOVEd into the intermediate list; take it out as stock's horse does.
  if redis.call('LREM', 'rq:queue:' .. q .. ':intermediate', 1, jid) > 0 then
    start(q, jid, eid)
  end
  mark_busy()
  return {0, claimed, dropped}
end

if redis.call('EXISTS', 'rq:suspended') == 1 then
  return {1, claimed, dropped}
end

local used = 0
for i = 1, nq do
  local q = ARGV[10 + i]
  local qk = 'rq:queue:' .. q
  while used < n do
    local jid = redis.call('LPOP', qk)
    if not jid then break end
    used = used + 1
    start(q, jid, ARGV[base + used])
  end
  if used >= n then break end
end
mark_busy()
return {0, claimed, dropped}
