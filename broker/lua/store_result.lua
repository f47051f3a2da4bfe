-- store_result: keep a task's result and announce it.
-- KEYS[1]  P:result:<task id>
-- ARGV[1]  the encoded result
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  the channel announcing results (P:results)
-- ARGV[4]  the task id, published on it
-- Returns  the number of subscribers told.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('PUBLISH', ARGV[3], ARGV[4])
