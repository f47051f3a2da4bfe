-- dead: settle a task by moving it to the dead-letter list, releasing the
-- deduplication lock it holds.
-- KEYS[1]  P:{q}:wip:<consumer>
-- KEYS[2]  P:{q}:msg
-- KEYS[3]  P:{q}:dead   list of encoded dead letters, newest first
-- KEYS[4]  (optional) the task's lock key, compare-and-deleted
-- ARGV[1]  task id
-- ARGV[2]  encoded dead letter
-- ARGV[3]  most dead letters kept
-- Returns  1, 2 when the lock was deleted too, or 0 when the task was no
--          longer in flight (nothing done).
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
if KEYS[4] and redis.call('GET', KEYS[4]) == ARGV[1] then
  redis.call('DEL', KEYS[4])
  return 2
end
return 1
