-- acquire: take a deduplication lock unless another task holds it.
-- KEYS[1]  the lock key
-- ARGV[1]  the task id (the lock's value)
-- ARGV[2]  TTL in milliseconds
-- Returns  {1} when taken, {0, holder, pttl} when another task holds the
--          lock: its id, read in the same script (a script sees no key
--          expire while it runs, so the holder is never empty), and its
--          remaining life in ms (-1: no TTL).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1}
end
return {0, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
