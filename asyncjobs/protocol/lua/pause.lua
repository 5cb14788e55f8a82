-- Pause a queue (asyncjobs/limits.py: asyncjobs-worker queues pause, Throttled).
-- KEYS[1] the limits hash; ARGV: queue, milliseconds (-1: until resumed), '1' to only extend.
-- Timed by the server's clock, as the claim script is. Returns the pause's end (ms, or -1).
local f = 'p:' .. ARGV[1]
local ms = tonumber(ARGV[2])
local v = -1
if ms >= 0 then
  local t = redis.call('TIME')
  v = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ms
end
if ARGV[3] == '1' then
  local cur = tonumber(redis.call('HGET', KEYS[1], f) or '0')
  if cur == -1 or (v ~= -1 and cur >= v) then return cur end
end
redis.call('HSET', KEYS[1], f, string.format('%d', v))
return v
