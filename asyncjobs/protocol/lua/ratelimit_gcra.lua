-- The delivery jobs' fleet-wide rate limiter (asyncjobs/delivery/ratelimit.py, RedisRateLimiter).
-- GCRA with reservation: KEYS[1] holds the theoretical arrival time (TAT, ms).
-- ARGV[1] = emission interval (ms), ARGV[2] = burst tolerance (ms).
-- Returns the wait in ms (as a string, to keep fractions) before the reserved slot.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now + tolerance + 1000))
return string.format('%.3f', wait)
