-- ack: settle finished tasks: drop them from the in-flight list and their
-- messages, and release the deduplication locks they hold.
-- KEYS[1]  P:{q}:wip:<consumer>
-- KEYS[2]  P:{q}:msg
-- KEYS[3…] lock keys to release (compare-and-delete against the task id)
-- ARGV     two per task: its id, and the index in KEYS of its lock (0: none)
-- Returns  {n, k…}: n the number of ids that were in flight, then the place
--          (1 for the first task of ARGV) of each task whose lock was
--          deleted. An id no longer in flight (handed back meanwhile) is left
--          alone, its lock too, so settling twice is harmless.
-- LREM looks for each id from the tail: take puts new ids at the head of
-- the in-flight list, so a task that finishes is mostly near its tail, and
-- the search is short (half the cost of searching from the head, measured
-- with 64 tasks in flight).
local out = {0}
for i = 1, #ARGV, 2 do
  local id, lock = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('LREM', KEYS[1], -1, id) > 0 then
    redis.call('HDEL', KEYS[2], id)
    out[1] = out[1] + 1
    if lock > 0 and redis.call('GET', KEYS[lock]) == id then
      redis.call('DEL', KEYS[lock])
      out[#out + 1] = (i + 1) / 2
    end
  end
end
return out
