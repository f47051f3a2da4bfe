-- takeover: replace a lock whose holder no longer exists, if it is still
-- that holder's and has more than the grace left to live (a lock nearer its
-- end may be another producer's send under way on the grace path: it was
-- locked with the grace TTL and not extended yet).
-- KEYS[1]  the lock key
-- ARGV[1]  the holder found before (the value to replace)
-- ARGV[2]  the new task id
-- ARGV[3]  the grace TTL in milliseconds, also the new lock's TTL
-- Returns  1 when taken over (or found free and taken), 0 when the lock
--          changed meanwhile or is within its grace.
local v = redis.call('GET', KEYS[1])
if v and (v ~= ARGV[1] or redis.call('PTTL', KEYS[1]) <= tonumber(ARGV[3])) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
