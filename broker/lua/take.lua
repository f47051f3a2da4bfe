-- take: move due scheduled tasks onto the queue, then take up to max tasks
-- into a consumer's in-flight list and return them with their messages.
-- KEYS[1]  P:{q}:pending
-- KEYS[2]  P:{q}:wip:<consumer>  the consumer's in-flight list
-- KEYS[3]  P:{q}:msg
-- KEYS[4]  P:{q}:scheduled
-- ARGV[1]  max: how many tasks to return at most
-- ARGV[2…] ids already moved into the in-flight list (by BLMOVE), returned first
-- Returns  {wait, {id1, msg1, id2, msg2, …}} where wait is the ms until the
--          next scheduled task is due, or -1 when none is scheduled.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
for i = #due, 1, -1 do -- the earliest due ends at the right: taken first
  redis.call('ZREM', KEYS[4], due[i])
  redis.call('RPUSH', KEYS[1], due[i])
end
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
local max = tonumber(ARGV[1])
while #ids < max do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not id then
    break
  end
  ids[#ids + 1] = id
end
local out = {}
for _, id in ipairs(ids) do
  local m = id ~= '' and redis.call('HGET', KEYS[3], id)
  if m then
    out[#out + 1] = id
    out[#out + 1] = m
  else
    redis.call('LREM', KEYS[2], 1, id) -- a wake-up, or an id without a message: drop it
  end
end
local wait = -1
local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if #nxt > 0 then
  wait = math.max(tonumber(nxt[2]) - now, 0)
end
return {wait, out}
