-- Replace a reservation with the usage actually consumed.
--
-- KEYS[1]  reservation records (hash)      KEYS[2]  reservation expiries (zset)
-- KEYS[3]  settled marker of this reservation (string; makes a retried settle a no-op)
-- KEYS[4]  usage ledger (stream)
-- KEYS[5..] the counter keys the reservation returned (its windows, even if they ended since)
-- ARGV[1]  reservation id
-- ARGV[2]  actual amounts "input,output,total,cost"
-- ARGV[3]  clock override in ms, "" for Redis server time
-- ARGV[4]  rate-limit refund count R, then per refund: key, microseconds to give back
--          (token rate limits were charged the worst case; they get the difference back)
-- then     ledger: max events (0: no ledger; the stream is KEYS[4] and counters start at
--          KEYS[5]), then field/value pairs of the usage event
-- Returns  1 if the reservation was still held, 0 if it had expired and was released already
--          (the usage is charged either way: never bill less than the truth),
--          2 if this reservation was settled before (nothing changes: retries are safe).

if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', 86400) then return 2 end

purge_expired(KEYS[1], KEYS[2], now_ms(ARGV[3]))

local held = 0
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record then
  release(record)
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  held = 1
end

local actual = split(ARGV[2], ',')
for i = 5, #KEYS do
  for d = 1, 4 do
    if actual[d] ~= '0' then redis.call('HINCRBY', KEYS[i], 'u' .. (d - 1), actual[d]) end
  end
end

local r_n = tonumber(ARGV[4] or '0')
for i = 1, r_n do
  local key = ARGV[3 + i * 2]
  local tat = redis.call('GET', key)
  if tat then
    redis.call('SET', key, string.format('%.0f', tonumber(tat) - tonumber(ARGV[4 + i * 2])), 'KEEPTTL')
  end
end

local l_base = 5 + r_n * 2
local max_events = tonumber(ARGV[l_base] or '0')
if max_events > 0 then
  local fields = {}
  for i = l_base + 1, #ARGV do fields[#fields + 1] = ARGV[i] end
  fields[#fields + 1] = 'settled'
  fields[#fields + 1] = tostring(held)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', max_events, '*', unpack(fields))
end
return held
