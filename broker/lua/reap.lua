-- reap: return every task a consumer holds to the head of the queue and
-- forget the consumer: one found dead (its heartbeat deadline passed), or
-- one closing.
-- KEYS[1]  P:{q}:wip:<c>    the consumer's in-flight list, newest at the left
-- KEYS[2]  P:{q}:pending
-- KEYS[3]  P:{q}:consumers  zset: consumer id -> heartbeat deadline (ms)
-- KEYS[4]  P:{q}:msg        hash: task id -> message
-- KEYS[5]  P:{q}:land:<c>   ids a BLMOVE moved for the consumer, not taken yet
-- ARGV[1]  the consumer's id
-- ARGV[2]  "1" to reap only if its deadline has passed (checked again here:
--          it may have heartbeated since it was found dead), "0" to reap
--          anyway
-- Returns  the number of tasks returned, or -1 when the consumer is alive.
--          Ids without a message (wake-up tokens) are dropped.
if ARGV[2] == '1' then
  local deadline = redis.call('ZSCORE', KEYS[3], ARGV[1])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if deadline and tonumber(deadline) > now then
    return -1
  end
end
local n = 0
-- Newest first (the landed ids were moved after every in-flight one), so
-- that the oldest taken ends at the right of pending, taken next.
for _, list in ipairs({KEYS[5], KEYS[1]}) do
  for _, id in ipairs(redis.call('LRANGE', list, 0, -1)) do
    if id ~= '' and redis.call('HEXISTS', KEYS[4], id) == 1 then
      redis.call('RPUSH', KEYS[2], id)
      n = n + 1
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[5])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
