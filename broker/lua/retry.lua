-- retry: settle a task and send it again, with its new message, after a delay.
-- KEYS[1]  P:{q}:wip:<consumer>
-- KEYS[2]  P:{q}:msg
-- KEYS[3]  P:{q}:pending
-- KEYS[4]  P:{q}:scheduled
-- ARGV[1]  task id
-- ARGV[2]  encoded message (attempt counter raised)
-- ARGV[3]  delay in ms
-- Returns  1, or 0 when the task was no longer in flight (nothing done).
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then -- from the tail: see ack.lua
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local delay = tonumber(ARGV[3])
if delay > 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[4], t[1] * 1000 + math.floor(t[2] / 1000) + delay, ARGV[1])
  if redis.call('ZRANGE', KEYS[4], 0, 0)[1] == ARGV[1] then
    if redis.call('LINDEX', KEYS[3], -1) ~= '' then redis.call('RPUSH', KEYS[3], '') end -- wake a blocked consumer (see kick.lua)
  end
else
  redis.call('LPUSH', KEYS[3], ARGV[1])
end
return 1
