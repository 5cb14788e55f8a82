-- Register a worker's death if the key is still this process's (RedisStore.register_death).
-- KEYS: the worker key, rq:workers, the worker's executions set, then rq:workers:<q> per queue.
local key = KEYS[1]
if redis.call('HGET', key, 'pid') ~= ARGV[1] or redis.call('HEXISTS', key, 'death') == 1 then
  return 0
end
redis.call('SREM', KEYS[2], key)
for i = 4, #KEYS do redis.call('SREM', KEYS[i], key) end
redis.call('HSET', key, 'death', ARGV[2])
redis.call('HDEL', key, 'current_job')
redis.call('EXPIRE', key, 60)
redis.call('DEL', KEYS[3])
return 1
