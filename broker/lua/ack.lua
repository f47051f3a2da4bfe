-- ack: settle finished tasks: drop them from the in-flight list and their
-- messages.
-- KEYS[1]  P:{q}:wip:<consumer>
-- KEYS[2]  P:{q}:msg
-- ARGV     task ids
-- Returns  the number of ids that were in flight. An id no longer in flight
-- (handed back meanwhile) is left alone, so settling twice is harmless.
local n = 0
for _, id in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], 1, id) > 0 then
    redis.call('HDEL', KEYS[2], id)
    n = n + 1
  end
end
return n
