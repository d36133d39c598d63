-- Move a held reservation's expiry to now + ttl: before a retry or a fallback, so that a
-- hold outlives every attempt of its request (each attempt is shorter than the ttl).
--
-- KEYS[1]  reservation records (hash)      KEYS[2]  reservation expiries (zset)
-- ARGV[1]  reservation id
-- ARGV[2]  reservation ttl in ms
-- ARGV[3]  clock override in ms, "" for Redis server time
-- Returns  1 if the reservation is still held (its expiry moved), 0 if it is gone (it
--          expired and was released: the request holds nothing any more).

if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local at = now_ms(ARGV[3]) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', 'GT', string.format('%d', at), ARGV[1])
return 1
