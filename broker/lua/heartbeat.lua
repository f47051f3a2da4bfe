-- heartbeat: push a consumer's deadline forward and list the consumers whose
-- deadline has passed (to be reaped one by one with reap.lua).
-- KEYS[1]  P:{q}:consumers  zset: consumer id -> heartbeat deadline (ms)
-- ARGV[1]  the consumer's id
-- ARGV[2]  heartbeat TTL in ms
-- Returns  the ids of dead consumers, at most 100.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
