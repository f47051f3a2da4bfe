-- extend: set a lock's TTL, only if the task still owns it.
-- KEYS[1]  the lock key
-- ARGV[1]  the task id
-- ARGV[2]  TTL in milliseconds
-- Returns  1 when extended, 0 when the lock is gone or held by another task.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
