-- kick_many: kick.lua for a batch of messages of one queue, in one call.
-- KEYS[1]    P:{q}:msg
-- KEYS[2]    P:{q}:pending
-- KEYS[3]    P:{q}:scheduled
-- KEYS[4…]   the lock keys of the messages that carry one
-- ARGV       five per message: task id, encoded message, delay in ms, the
--            index in KEYS of its lock key (0: none), lock TTL in ms
-- Returns    two per message: {1, ''} sent, {0, holder} locked by the queued
--            task holder, {-1, ''} the task id exists already.
local out = {}
local now
local wake = false
for i = 1, #ARGV, 5 do
  local id, lock = ARGV[i], tonumber(ARGV[i + 3])
  local code, holder = 1, ''
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    code = -1
  elseif lock > 0 and not redis.call('SET', KEYS[lock], id, 'NX', 'PX', ARGV[i + 4]) then
    holder = redis.call('GET', KEYS[lock]) or ''
    if holder ~= '' and redis.call('HEXISTS', KEYS[1], holder) == 1 then
      code = 0
    else
      redis.call('SET', KEYS[lock], id, 'PX', ARGV[i + 4]) -- the holder is gone: take over
      holder = ''
    end
  end
  if code == 1 then
    redis.call('HSET', KEYS[1], id, ARGV[i + 1])
    local delay = tonumber(ARGV[i + 2])
    if delay > 0 then
      if not now then
        local t = redis.call('TIME')
        now = t[1] * 1000 + math.floor(t[2] / 1000)
      end
      redis.call('ZADD', KEYS[3], now + delay, id)
      wake = true
    else
      redis.call('LPUSH', KEYS[2], id)
    end
  end
  out[#out + 1] = code
  out[#out + 1] = holder
end
if wake and redis.call('LINDEX', KEYS[2], -1) ~= '' then
  redis.call('RPUSH', KEYS[2], '') -- wake a blocked consumer (see kick.lua)
end
return out
