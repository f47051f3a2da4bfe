-- own: make sure a task that starts running holds its lock.
-- KEYS[1]  the lock key
-- ARGV[1]  the task id
-- ARGV[2]  TTL in milliseconds
-- Returns  {1} when the task held it (TTL reset), {2} when it was free and is
--          taken again, {0, holder} when another task holds it.
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2}
end
return {0, v}
