-- requeue: move a dead letter back onto its queue.
-- KEYS[1]  P:{q}:dead
-- KEYS[2]  P:{q}:msg
-- KEYS[3]  P:{q}:pending
-- ARGV[1]  the dead letter, exactly as stored
-- ARGV[2]  the task id
-- ARGV[3]  the message to queue (its attempt counter reset)
-- Returns  1 when requeued, 0 when the dead letter is gone, 2 when a task
--          with this id exists already (the dead letter is kept).
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  redis.call('LPUSH', KEYS[1], ARGV[1]) -- keep it: the id is taken
  return 2
end
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
