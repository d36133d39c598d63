-- Replace a reservation with the usage actually consumed.
--
-- KEYS[1]  reservation records (hash)      KEYS[2]  reservation expiries (zset)
-- KEYS[3]  settled marker of this reservation (string; makes a retried settle a no-op)
-- KEYS[4]  usage ledger (stream)
-- KEYS[5]  tombstone of this reservation ("xh:<id>"), there if it expired and was charged
-- KEYS[6..] the counter keys the reservation returned (its windows, even if they ended since)
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
--          key per request (tombstones of expired holds charged here live as long)
-- ARGV[8]  ledger bound for the expired holds this call charges (0: no events)
-- Returns  1 if the reservation was still held (expired or not, as long as nobody charged
--          it yet: it is settled like any other),
--          3 if it had expired and was charged at its worst case: the truth replaces that
--          charge (the ledger entry says "reconciled" and names the expired-hold event),
--          0 if it was not held (never made, given up, or its tombstone is gone: the
--          usage is charged anyway, never bill less than the truth),
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

-- This reservation first: still in the records, it is settled as held even if its expiry
-- passed (its gateway was slow, not gone), and no expired-hold event is written for it.
local held = 0
local reconciles = ''
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record then
  release(record_parts(record), false)
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  held = 1
else
  local tombstone = redis.call('GET', KEYS[5])
  if tombstone then
    -- Charged at its worst case when it expired: take that charge back, the truth below
    -- replaces it. (The counters are the ones it was charged on; a counter gone since is
    -- not recreated.)
    local holding, event_id = record_parts(tombstone)
    local parts = split(holding, '|')
    local amounts = split(parts[1], ',')
    for i = 2, #parts do
      for d = 1, 4 do
        if amounts[d] ~= '0' and redis.call('HINCRBY', parts[i], USED[d], '-' .. amounts[d]) < 0 then
          redis.call('HDEL', parts[i], USED[d])
        end
      end
    end
    redis.call('DEL', KEYS[5])
    held = 3
    reconciles = event_id
  end
end

purge_expired(KEYS[1], KEYS[2], KEYS[4], now_ms(ARGV[3]), tonumber(ARGV[8] or '0') or 0,
  tonumber(ARGV[7]))

for i = 6, #KEYS do
  for d = 1, 4 do
    if actual[d] ~= '0' then redis.call('HINCRBY', KEYS[i], USED[d], actual[d]) end
  end
end

-- Only a hold still held charged its rate limits and keeps them charged: a reservation that
-- was never made (its reserve refused, or timed out before running), or expired and was
-- charged at its worst case, gives none back.
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
  if held == 3 then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', max_events, '*', 'event', ARGV[6],
      'settled', 'reconciled', 'reconciles', reconciles)
  else
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', max_events, '*', 'event', ARGV[6], 'settled', held)
  end
end
return held
