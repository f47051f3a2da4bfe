-- release: delete a lock, only if the task owns it (compare-and-delete).
-- KEYS[1]  the lock key
-- ARGV[1]  the task id
-- Returns  1 when deleted, 0 when the lock is gone or held by another task.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
