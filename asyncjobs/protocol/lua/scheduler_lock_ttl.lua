-- Shorten a scheduler lock this worker holds (asyncjobs/worker/scheduler.py): RQ gives it interval + 60 s.
-- KEYS[1] rq:scheduler-lock:<queue>; ARGV[1] our scheduler's name, ARGV[2] the new time to live (s).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
