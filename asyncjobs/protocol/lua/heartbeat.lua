-- Refresh the heartbeat of every running execution and of the worker in one
-- step (docs/rq-protocol.md §7), so no running job ever looks abandoned.
-- An execution whose rq:wip member is gone has finished (or was taken by RQ's
-- maintenance) while this call was on its way: it is skipped, so its execution
-- records are never written again after the finish removed them.
-- The worker's executions set (RQ 3, docs/rq-protocol.md §13.3) gets the
-- worker key's TTL, as a stock worker's heartbeat gives it, and every running
-- execution's member again (a set lost with an expired worker key heals).
-- KEYS[1]: the key prefix (docs/rq-protocol.md §13.2)
-- ARGV: worker, worker_ttl, now_float, now_ts, wip_score, hb_ttl, exec_score, exec_ttl, then q, jid, eid triples
local P = KEYS[1]
local worker, worker_ttl, now_f, now_ts = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wip_score, hb_ttl, exec_score, exec_ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local wkey = P .. ':worker:' .. worker
local alive = redis.call('EXISTS', wkey)
redis.call('HSET', wkey, 'last_heartbeat', now_ts)
redis.call('EXPIRE', wkey, worker_ttl)
local wexec = wkey .. ':executions'
for i = 9, #ARGV, 3 do
  local q, jid, eid = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local wip, member = P .. ':wip:' .. q, jid .. ':' .. eid
  if redis.call('ZSCORE', wip, member) then
    local ek = P .. ':execution:' .. jid .. ':' .. eid
    redis.call('HSET', ek, 'last_heartbeat', now_f)
    redis.call('EXPIRE', ek, exec_ttl)  -- as long as its rq:executions entry (claim.lua)
    redis.call('ZADD', wip, 'XX', wip_score, member)
    redis.call('ZADD', P .. ':executions:' .. jid, 'XX', exec_score, eid)
    redis.call('EXPIRE', P .. ':executions:' .. jid, exec_ttl)
    local jk = P .. ':job:' .. jid
    if redis.call('TYPE', jk)['ok'] == 'hash' then
      redis.call('HSET', jk, 'last_heartbeat', now_ts)
    end
    redis.call('SADD', wexec, member)
  end
end
redis.call('EXPIRE', wexec, worker_ttl)
return alive
