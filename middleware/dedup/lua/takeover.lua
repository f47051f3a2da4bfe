-- takeover: replace a lock whose holder no longer exists, if it still does.
-- KEYS[1]  the lock key
-- ARGV[1]  the holder found before (the value to replace)
-- ARGV[2]  the new task id
-- ARGV[3]  TTL in milliseconds
-- Returns  1 when taken over, 0 when the lock changed meanwhile.
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or not v then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
