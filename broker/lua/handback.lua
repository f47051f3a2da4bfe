-- handback: return tasks that were not started to the head of the queue,
-- the first id to be taken first.
-- KEYS[1]  P:{q}:wip:<consumer>
-- KEYS[2]  P:{q}:pending
-- ARGV     task ids
-- Returns  the number handed back.
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
