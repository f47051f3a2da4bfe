-- kick: store a message and queue it (or schedule it), optionally taking a
-- deduplication lock first.
-- KEYS[1]  P:{q}:msg        hash: task id -> message
-- KEYS[2]  P:{q}:pending    list of task ids, consumed from the right
-- KEYS[3]  P:{q}:scheduled  zset: task id -> due time (ms)
-- KEYS[4]  (optional) the lock key
-- ARGV[1]  task id
-- ARGV[2]  encoded message
-- ARGV[3]  delay in ms (0: queue now)
-- ARGV[4]  (with KEYS[4]) lock TTL in ms
-- Returns  {1, healed}: sent (healed = 1 when a stale lock was taken over);
--          {0, holder}: the lock is held by the queued task holder;
--          {-1}: a task with this id exists already.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return {-1}
end
local healed = 0
if KEYS[4] then
  if not redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[4]) then
    local holder = redis.call('GET', KEYS[4])
    if holder and redis.call('HEXISTS', KEYS[1], holder) == 1 then
      return {0, holder}
    end
    -- The holder exists nowhere in this queue: take the lock over.
    redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[4])
    healed = 1
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local delay = tonumber(ARGV[3])
if delay > 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[3], t[1] * 1000 + math.floor(t[2] / 1000) + delay, ARGV[1])
  -- Now the earliest scheduled task: wake a consumer blocked in BLMOVE with
  -- an empty id (take drops it), so it sleeps until this one's due time.
  -- One such token at the head of pending is enough.
  if redis.call('ZRANGE', KEYS[3], 0, 0)[1] == ARGV[1] then
    if redis.call('LINDEX', KEYS[2], -1) ~= '' then redis.call('RPUSH', KEYS[2], '') end
  end
else
  redis.call('LPUSH', KEYS[2], ARGV[1])
end
return {1, healed}
