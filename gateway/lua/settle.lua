-- Replace a reservation with the usage actually consumed.
--
-- KEYS[1]  reservation records (hash)      KEYS[2]  reservation expiries (zset)
-- KEYS[3]  settled marker of this reservation (string; makes a retried settle a no-op)
-- KEYS[4]  usage ledger (stream)
-- KEYS[5..] the counter keys the reservation returned (its windows, even if they ended since)
-- ARGV[1]  reservation id
-- ARGV[2]  actual amounts "input,output,total,cost", integers in [0, 10^18) (anything
--          else is an error reply, with nothing written)
-- ARGV[3]  clock override in ms, "" for Redis server time
-- ARGV[4]  rate-limit refunds, ";"-separated "key microseconds" (token rate limits were
--          charged the worst case; they get the difference back, if the hold was still
--          held); microseconds may have a fraction; "" for none
-- ARGV[5]  ledger bound: max events (0: no ledger event)
-- ARGV[6]  the usage event (JSON), appended to the ledger stream KEYS[4] as field "event"
-- ARGV[7]  lifetime of the settled marker KEYS[3], in seconds: it must outlive every retry
--          of this settle (and a timed-out reserve's late arrival), and no more: it is one
--          key per request
-- Returns  1 if the reservation was still held, 0 if it had expired and was released already
--          (the usage is charged either way: never bill less than the truth),
--          2 if this reservation was settled before (nothing changes: retries are safe).

-- Check the amounts before any write: Redis keeps a failed script's earlier writes, so a
-- value HINCRBY refuses would leave the hold released and the marker set, billing nothing.
-- Plain integers below 10^18 (18 digits), far from a counter's int64 limit.
local actual = split(ARGV[2], ',')
if #actual ~= 4 then return redis.error_reply('ERR settle: 4 amounts expected') end
for d = 1, 4 do
  local a = actual[d]
  if #a > 18 or not (a == '0' or string.find(a, '^[1-9]%d*$')) then
    return redis.error_reply('ERR settle: amounts must be integers in [0, 10^18)')
  end
end

if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[7]) then return 2 end

purge_expired(KEYS[1], KEYS[2], now_ms(ARGV[3]))

local held = 0
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record then
  release(record)
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  held = 1
end

for i = 5, #KEYS do
  for d = 1, 4 do
    if actual[d] ~= '0' then redis.call('HINCRBY', KEYS[i], USED[d], actual[d]) end
  end
end

-- Only a hold still held charged its rate limits: a reservation that was never made (its
-- reserve refused, or timed out before running) or was purged must not give any back.
-- Rounded up like the reserve's charge, so a refund never exceeds what was charged.
if held == 1 then
  for spec in string.gmatch(ARGV[4] or '', '[^;]+') do
    local key, micros = string.match(spec, '^(%S+) (%S+)$')
    local tat = redis.call('GET', key)
    if tat then
      local new_tat = math.ceil(tonumber(tat) - tonumber(micros))
      redis.call('SET', key, string.format('%.0f', new_tat), 'KEEPTTL')
    end
  end
end

local max_events = tonumber(ARGV[5] or '0')
if max_events > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', max_events, '*', 'event', ARGV[6], 'settled', held)
end
return held
