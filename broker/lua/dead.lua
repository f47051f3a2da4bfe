-- dead: settle a task by moving it to the dead-letter list, releasing the
-- deduplication lock it holds.
-- KEYS[1]  P:{q}:wip:<consumer>
-- KEYS[2]  P:{q}:msg
-- KEYS[3]  P:{q}:dead   list of encoded dead letters, newest first
-- KEYS[4]  (optional) the task's lock key, compare-and-deleted
-- ARGV[1]  task id
-- ARGV[2]  encoded dead letter
-- ARGV[3]  most dead letters kept
-- Returns  {code, dropped}: code 1 when recorded, 2 when the lock was
--          deleted too, 0 when the task was no longer in flight (nothing
--          done); dropped counts the oldest dead letters trimmed off the list
--          to keep it at the limit.
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then -- from the tail: see ack.lua
  return {0, 0}
end
redis.call('HDEL', KEYS[2], ARGV[1])
local limit = tonumber(ARGV[3])
local dropped = math.max(redis.call('LPUSH', KEYS[3], ARGV[2]) - limit, 0)
if dropped > 0 then
  redis.call('LTRIM', KEYS[3], 0, limit - 1)
end
if KEYS[4] and redis.call('GET', KEYS[4]) == ARGV[1] then
  redis.call('DEL', KEYS[4])
  return {2, dropped}
end
return {1, dropped}
