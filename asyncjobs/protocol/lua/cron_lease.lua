-- The cron leader lease (issue 21; README "Cron"): one worker of the fleet enqueues cron ticks.
-- KEYS[1]: the lease key (Keys.cron_leader, under the key prefix, so in its Redis Cluster slot)
-- ARGV: op, holder, lease_ms
--   op 'take':    the holder's lease is renewed (compare-and-renew), or taken if nobody holds it
--   op 'release': deleted only if the holder still holds it (a late release never frees another's)
-- Returns {1 if the holder holds the lease after the call else 0, the holder after the call or false}.
local key, op, holder, lease_ms = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('GET', key)
if op == 'release' then
  if current == holder then
    redis.call('DEL', key)
    return {1, false}
  end
  return {0, current}
end
if current == holder then
  redis.call('PEXPIRE', key, lease_ms)
  return {1, holder}
end
if not current then
  redis.call('SET', key, holder, 'PX', lease_ms)
  return {1, holder}
end
return {0, current}
