-- finish.lua then claim.lua in one atomic call, idempotent per claim token.
--
-- See docs/rq-protocol.md §11.2 (claim tokens) and §11.6 (one script per cycle).
--
-- KEYS[1] is the key prefix (both scripts build their keys from it), ARGV[1] the finish payload
-- ('' for none), ARGV[2] the claim's token key ('' when nothing is claimed), ARGV[3] the
-- space-separated token keys of calls whose reply arrived (deleted here), ARGV[4...]
-- claim.lua's arguments.  Outcomes are applied at most once by finish.lua
-- itself; the claim runs at most once per token: a replay (redis-py's retry, a re-send after
-- an outage, a request that reached Redis after its sender gave up) returns the jobs the
-- first run claimed that are still this execution's, and claims nothing new.  Each file
-- becomes a function whose ``ARGV`` parameter shadows the global, so both run unchanged.
local function finish(ARGV)
--#include finish.lua
end
local function claim(ARGV, record, busy)
--#include claim.lua
end
local P = KEYS[1]
-- The claimed jobs `{{q, jid, eid, hgetall}...}` as one JSON string (bytes >= 0x80 as they are, the
-- rest escaped): one bulk string for the client to read instead of ~35 reply elements per job.
local function packed(claimed)
  if #claimed == 0 then return claimed end
  return cjson.encode(claimed)
end
local busy = false  -- the finish just wrote the worker hash's state busy and a current job
if ARGV[1] ~= '' then
  local _
  _, busy = finish({ARGV[1]})
end
for key in string.gmatch(ARGV[3], '%S+') do redis.call('DEL', key) end
local tk = ARGV[2]
if tk == '' then return {0, {}, {}, {}} end
if redis.call('EXISTS', tk) == 1 then
  -- A replay: the jobs the first run claimed, with their deadline renewed (the reply may
  -- have been lost for longer than the heartbeat TTL).
  local now_f, now_ts, wip_score, exec_score, exec_ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[9], ARGV[10]
  local claimed = {}
  for _, e in ipairs(redis.call('LRANGE', tk, 1, -1)) do
    local q, jid, eid = string.match(e, '^(.-)\t(.-)\t(.*)$')
    local jk = P .. ':job:' .. jid
    if redis.call('ZSCORE', P .. ':wip:' .. q, jid .. ':' .. eid)
        and redis.call('TYPE', jk)['ok'] == 'hash' then
      redis.call('ZADD', P .. ':wip:' .. q, 'XX', wip_score, jid .. ':' .. eid)
      local ek = P .. ':execution:' .. jid .. ':' .. eid
      redis.call('HSET', ek, 'last_heartbeat', now_f)
      redis.call('EXPIRE', ek, exec_ttl)
      redis.call('ZADD', P .. ':executions:' .. jid, exec_score, eid)
      redis.call('EXPIRE', P .. ':executions:' .. jid, exec_ttl)
      redis.call('HSET', jk, 'last_heartbeat', now_ts)
      table.insert(claimed, {q, jid, eid, redis.call('HGETALL', jk)})
    end
  end
  return {tonumber(redis.call('LINDEX', tk, 0)), packed(claimed), {}, {}}
end
local rest = {}
for i = 4, #ARGV do rest[i - 3] = ARGV[i] end
-- The record is written once per call, after the claim: its first element the suspended flag, then
-- `<q>\t<jid>\t<eid>` for each job whose claim began, also when a command error stopped the claim
-- part-way (the error is raised again once the record is written).
local entries = {}
local ok, reply = pcall(claim, rest, function(q, jid, eid)
  entries[#entries + 1] = q .. '\t' .. jid .. '\t' .. eid
end, busy)
redis.call('RPUSH', tk, (ok and reply[1] == 1) and '1' or '0', unpack(entries, 1, math.min(#entries, 999)))
for i = 1000, #entries, 1000 do  -- unpack() has a stack limit
  redis.call('RPUSH', tk, unpack(entries, i, math.min(i + 999, #entries)))
end
redis.call('EXPIRE', tk, __CLAIM_RECORD_TTL__)
if not ok then error(reply) end
reply[2] = packed(reply[2])
return reply
