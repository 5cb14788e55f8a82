-- The queue sampler's lock (asyncjobs/host/sampler.py): take it if free, or keep it if it is ours.
-- KEYS[1] the lock; ARGV[1] our token, ARGV[2] its time to live (ms).  1 = we sample this queue.
local cur = redis.call('GET', KEYS[1])
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
