-- take: queue the scheduled tasks that are due, then move up to max tasks
-- from the queue into a consumer's in-flight list and return them with their
-- messages.
-- KEYS[1]  P:{q}:pending    list of task ids, taken from the right
-- KEYS[2]  P:{q}:wip:<c>    the consumer's in-flight list
-- KEYS[3]  P:{q}:msg        hash: task id -> message
-- KEYS[4]  P:{q}:scheduled  zset: task id -> due time (ms)
-- KEYS[5]  P:{q}:consumers  zset: consumer id -> heartbeat deadline (ms)
-- KEYS[6]  P:{q}:land:<c>   ids a BLMOVE moved for the consumer: returned
--                           first (the BLMOVE was sent in one pipeline just
--                           ahead of this call, or its reply was lost)
-- ARGV[1]  the consumer's id
-- ARGV[2]  heartbeat TTL in ms
-- ARGV[3]  max: how many tasks to return at most
-- ARGV[4…] ids BLMOVE already moved into the in-flight list; returned first,
--          unless they are no longer there (the consumer was reaped)
-- Returns  {wait, {id1, msg1, id2, msg2, …}} where wait is the ms until the
--          earliest scheduled task is due, or -1 when none is scheduled.
--          Wake-up tokens ('') and ids without a message are dropped from
--          the in-flight list, not returned, and not counted against max.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
for i = #due, 1, -1 do -- the earliest due ends at the right: taken first
  redis.call('ZREM', KEYS[4], due[i])
  redis.call('RPUSH', KEYS[1], due[i])
end

local out, taken = {}, 0
local function deliver(id)
  local m = id ~= '' and redis.call('HGET', KEYS[3], id)
  if m then
    out[#out + 1] = id
    out[#out + 1] = m
    taken = taken + 1
  else
    redis.call('LREM', KEYS[2], 1, id)
  end
end

-- move moves ids from list into the in-flight list, and delivers them,
-- until list is empty or limit are taken.
local function move(list, limit)
  while taken < limit do
    local id = redis.call('LMOVE', list, KEYS[2], 'RIGHT', 'LEFT')
    if not id then
      return
    end
    deliver(id)
  end
end

move(KEYS[6], math.huge) -- the landed ids, all of them
for i = 4, #ARGV do
  if redis.call('LPOS', KEYS[2], ARGV[i]) then
    deliver(ARGV[i])
  end
end
move(KEYS[1], tonumber(ARGV[3]))

if taken > 0 then
  -- A consumer holding tasks must be registered, or nobody would reap it:
  -- this one may have been presumed dead (its heartbeats lost) and reaped.
  redis.call('ZADD', KEYS[5], 'GT', now + tonumber(ARGV[2]), ARGV[1])
end

local wait = -1
local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if #nxt > 0 then
  wait = math.max(tonumber(nxt[2]) - now, 0)
end
return {wait, out}
