-- kick: store messages of one queue and queue them (or schedule them), each
-- optionally taking a deduplication lock first. One call serves a lone Kick,
-- the concurrent kicks coalesced into one batch, and KickMany's chunks.
-- KEYS[1]    P:{q}:msg        hash: task id -> message
-- KEYS[2]    P:{q}:pending    list of task ids, consumed from the right
-- KEYS[3]    P:{q}:scheduled  zset: task id -> due time (ms)
-- KEYS[4…]   the lock keys of the messages that carry one, in their order
-- ARGV[1]    how many arguments each message has: 5, or 2 when no message
--            of the call has a lock or a delay (the three left out are a
--            quarter of Redis's work per message in a bulk kick)
-- ARGV[2…]   per message: task id, encoded message, and with 5: delay in
--            ms (0: queue now), lock TTL in ms (0: no lock; else its key
--            is the next of KEYS[4…]), and the grace in ms for taking the
--            lock over (-1: never; see below)
-- Returns    codes, or {codes, holder…} when a holder follows: codes has
--            one character per message, '1' sent, '2' sent with its lock
--            taken over from a holder that existed nowhere on the queue, '0'
--            not sent as its lock is held, 'x' not sent as a task with its
--            id exists already; a holder follows for each '2' and '0', in
--            order. The common reply is one string of '1's, not in an
--            array: little for Redis to build and the client to read.
--
-- A held lock is taken over only when its holder is a task id Kiq generated
-- (a UUIDv7 in hex: others were given by the caller, or by another producer
-- such as Python's Taskiq, whose tasks Kiq cannot look for), exists nowhere
-- on the queue (not pending, scheduled or in flight: the msg hash holds every task
-- that exists) and the lock has more than the grace left to live: a lock
-- nearer its end may be a send still under way through the grace path, and
-- ends soon anyway. A lock with no TTL is never taken over.

-- A lone message queued now, with its lock free or without one (a single
-- caller's kick): the steps of the loop below without its tables, which
-- take Redis a sixth of such a call (7.6 against 9.2 µs, medians of six
-- alternating runs). A held lock goes on to the loop, which tries it again
-- and decides.
if #ARGV == 3 or (#ARGV == 6 and tonumber(ARGV[4]) <= 0) then
  local id = ARGV[2]
  local lock = #ARGV == 6 and ARGV[5] ~= '0' and KEYS[4]
  if not lock or redis.call('SET', lock, id, 'NX', 'PX', ARGV[5]) then
    if redis.call('HSETNX', KEYS[1], id, ARGV[3]) == 0 then
      if lock then redis.call('DEL', lock) end
      return 'x'
    end
    redis.call('LPUSH', KEYS[2], id)
    return '1'
  end
end
local function generated(id) -- broker.IsGeneratedTaskID
  return #id == 32 and id:sub(13, 13) == '7' and id:find('^[0-9a-f]+$') ~= nil
    and ('89ab'):find(id:sub(17, 17), 1, true) ~= nil
end
local codes, holders, push = {}, {}, {}
local now
local wake = false
local nextKey = 4
local stride = tonumber(ARGV[1])
for i = 2, #ARGV, stride do
  local id, ttl = ARGV[i], '0'
  if stride == 5 then ttl = ARGV[i + 3] end
  local lock
  if ttl ~= '0' then
    lock, nextKey = KEYS[nextKey], nextKey + 1
  end
  local code, holder, pttl = '1', nil, nil
  if lock and not redis.call('SET', lock, id, 'NX', 'PX', ttl) then
    holder = redis.call('GET', lock)
    local grace = tonumber(ARGV[i + 4])
    if holder == id then
      code = 'x' -- this very task holds its lock: it was kicked already
    elseif grace >= 0 and generated(holder) and redis.call('HEXISTS', KEYS[1], holder) == 0 then
      pttl = redis.call('PTTL', lock)
      if pttl > grace then
        redis.call('SET', lock, id, 'PX', ttl)
        code = '2'
      else
        code = '0'
      end
    else
      code = '0'
    end
  end
  -- HSETNX both stores the message and finds a task id that exists already;
  -- the lock this call took for it, if any, is then put back as it was.
  if (code == '1' or code == '2') and redis.call('HSETNX', KEYS[1], id, ARGV[i + 1]) == 0 then
    if code == '2' then
      redis.call('SET', lock, holder, 'PX', pttl)
    elseif lock then
      redis.call('DEL', lock)
    end
    code = 'x'
  end
  if code == '1' or code == '2' then
    local delay = 0
    if stride == 5 then delay = tonumber(ARGV[i + 2]) end
    if delay > 0 then
      if not now then
        local t = redis.call('TIME')
        now = t[1] * 1000 + math.floor(t[2] / 1000)
      end
      redis.call('ZADD', KEYS[3], now + delay, id)
      -- Now the earliest scheduled task: a consumer blocked in BLMOVE must
      -- wake to sleep until this one's due time.
      if not wake and redis.call('ZRANGE', KEYS[3], 0, 0)[1] == id then wake = true end
    else
      push[#push + 1] = id
    end
  end
  codes[#codes + 1] = code
  if code == '0' or code == '2' then holders[#holders + 1] = holder end
end
-- One LPUSH for the batch, in its order: the first message is taken first.
if #push > 0 then
  redis.call('LPUSH', KEYS[2], unpack(push))
end
-- Wake a blocked consumer with an empty id (take drops it); one such token
-- at the head of pending is enough.
if wake and redis.call('LINDEX', KEYS[2], -1) ~= '' then
  redis.call('RPUSH', KEYS[2], '')
end
if #holders == 0 then return table.concat(codes) end
return {table.concat(codes), unpack(holders)}
