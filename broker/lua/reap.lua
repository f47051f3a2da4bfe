-- reap: return every task a consumer holds to the head of the queue and
-- forget the consumer: a dead consumer (its heartbeat deadline passed), or
-- one closing.
-- KEYS[1]  P:{q}:wip:<consumer>
-- KEYS[2]  P:{q}:pending
-- KEYS[3]  P:{q}:consumers  zset: consumer -> heartbeat deadline (ms)
-- ARGV[1]  the consumer's id
-- ARGV[2]  "1" to reap only if its deadline has passed, "0" to reap anyway
-- Returns  the number of tasks returned, or -1 when the consumer is alive.
if ARGV[2] == '1' then
  local deadline = redis.call('ZSCORE', KEYS[3], ARGV[1])
  local t = redis.call('TIME')
  if deadline and tonumber(deadline) > t[1] * 1000 + math.floor(t[2] / 1000) then
    return -1
  end
end
local n = 0
-- The oldest taken is at the right of the in-flight list; move the newest
-- first so that the oldest ends at the right of pending, taken next.
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  n = n + 1
end
redis.call('ZREM', KEYS[3], ARGV[1])
return n
