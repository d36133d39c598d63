-- Charge every expired hold of one tag, a batch per call (see common.lua): readers of
-- usage call it until it returns 0, so what they report as reserved is live holds only.
--
-- KEYS[1]  reservation records (hash)      KEYS[2]  reservation expiries (zset)
-- KEYS[3]  usage ledger (stream)
-- ARGV[1]  clock override in ms, "" for Redis server time
-- ARGV[2]  "<max ledger events> <tombstone lifetime s>"
-- Returns  how many expired holds are left after this call's batch.

local max_events, lifetime = expiry_arg(ARGV[2])
return purge_expired(KEYS[1], KEYS[2], KEYS[3], now_ms(ARGV[1]), max_events, lifetime)
