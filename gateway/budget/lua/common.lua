-- Shared helpers, prepended to each budget script (Redis scripts cannot import).
--
-- Key names follow the layout gateway/budget/keys.py documents (the Python side's one
-- place for it): the caller passes the tag and counter parts; the scripts add window ids
-- (reserve.lua), the "xh:" tombstones and a tag from its "rsv" key (below).
--
-- A counter is a hash per (scope, window) holding, for each dimension
-- d in 0..3 (input tokens, output tokens, total tokens, cost in nano-USD),
-- "u<d>" = settled usage and "r<d>" = in-flight reservations.
-- A reservation record is "in,out,total,cost|key|key|...\n<event>": the amounts it holds
-- on each counter key, then the JSON object its expired-hold ledger event starts from
-- (request id, project, key, model; may be empty). Records live in a hash, their expiry
-- (ms) in a zset.
--
-- A hold that expires unsettled (its gateway died) is an answer nobody recorded: it is
-- charged at its worst case, moved from "r" to "u" on every counter it holds, with a
-- ledger event saying so. Moving an amount from r to u leaves u + r unchanged, and caps
-- are checked against u + r: whether an expired hold was charged already or is still
-- waiting in the zset, every cap decision is the same. So a call charges a bounded batch
-- (EXPIRED_BATCH) and says how many are left; readers (usage, metrics, a refusal's body)
-- drain them all first, a batch per call.
-- A charged hold leaves a tombstone "xh:<id>" (its amounts and keys, and the id of its
-- ledger event) for as long as a settled marker lives: a gateway that was only slow
-- settles later, and its truth replaces the worst case (see settle.lua).

local function now_ms(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function split(s, sep)
  local out = {}
  for piece in string.gmatch(s, '([^' .. sep .. ']+)') do out[#out + 1] = piece end
  return out
end

-- Field names by dimension, built once: a number-to-string concatenation per call
-- was a measurable part of each script's run time.
local RESERVED = { 'r0', 'r1', 'r2', 'r3' }
local USED = { 'u0', 'u1', 'u2', 'u3' }
local EXPIRED_BATCH = 32

-- A record's holding part ("amounts|key|...") and its event part (may be '').
local function record_parts(record)
  local nl = string.find(record, '\n', 1, true)
  if not nl then return record, '' end
  return string.sub(record, 1, nl - 1), string.sub(record, nl + 1)
end

-- Give back the amounts a reservation record holds; with charge, add them to the usage
-- too (an expired hold, charged at its worst case).
local function release(holding, charge)
  local parts = split(holding, '|')
  local amounts = split(parts[1], ',')
  local give_back = {}
  for d = 1, 4 do
    if amounts[d] ~= '0' then give_back[#give_back + 1] = { d, '-' .. amounts[d] } end
  end
  for i = 2, #parts do
    for _, field in ipairs(give_back) do
      -- Held amounts never exceed what a counter reserves, so a negative result means
      -- the counter had expired (a hold purged long after): HINCRBY just recreated it
      -- without an expiry. Remove the field again (an emptied hash is deleted), and
      -- charge nothing there: that window's counter is gone.
      if redis.call('HINCRBY', parts[i], RESERVED[field[1]], field[2]) < 0 then
        redis.call('HDEL', parts[i], RESERVED[field[1]])
      elseif charge then
        redis.call('HINCRBY', parts[i], USED[field[1]], amounts[field[1]])
      end
    end
  end
  return amounts
end

-- Charge one expired hold at its worst case, write its ledger event, leave its tombstone.
-- expiry: "<max ledger events> <tombstone lifetime s>".
local function charge_expired(tag, ledger, rid, record, expired_at, now, max_events, lifetime)
  local holding, event = record_parts(record)
  local a = release(holding, true)
  local event_id = ''
  if max_events > 0 then
    local head = '{'
    if #event > 2 then head = string.sub(event, 1, -2) .. ',' end
    local json = head .. '"kind":"expired_hold","reservation_id":' .. cjson.encode(rid)
      .. ',"input_tokens":' .. a[1] .. ',"output_tokens":' .. a[2]
      .. ',"total_tokens":' .. a[3] .. ',"cost_nano_usd":' .. a[4]
      .. ',"expired_at":' .. string.format('%.3f', expired_at / 1000)
      .. ',"ts":' .. string.format('%.3f', now / 1000)
      .. ',"estimated":true,"reason":"hold expired unsettled (gateway gone): charged at its worst case"}'
    event_id = redis.call('XADD', ledger, 'MAXLEN', '~', max_events, '*', 'event', json,
      'settled', 'expired')
  end
  redis.call('SET', tag .. 'xh:' .. rid, holding .. '\n' .. event_id, 'EX', lifetime)
end

-- Charge the reservations whose expiry passed (a crashed gateway's), a bounded batch per
-- call. Returns how many expired ones are left (0 unless the batch was full).
local function purge_expired(rsv_hash, rsv_expiry, ledger, now, max_events, lifetime)
  local tag = string.sub(rsv_hash, 1, -4)  -- "<prefix>:{prj:<id>}:" of "...:rsv"
  local expired = redis.call('ZRANGEBYSCORE', rsv_expiry, '-inf', now, 'WITHSCORES',
    'LIMIT', 0, EXPIRED_BATCH)
  for i = 1, #expired, 2 do
    local rid = expired[i]
    local record = redis.call('HGET', rsv_hash, rid)
    if record then
      charge_expired(tag, ledger, rid, record, tonumber(expired[i + 1]), now, max_events, lifetime)
      redis.call('HDEL', rsv_hash, rid)
    end
    redis.call('ZREM', rsv_expiry, rid)
  end
  if #expired < 2 * EXPIRED_BATCH then return 0 end
  return redis.call('ZCOUNT', rsv_expiry, '-inf', now)
end

-- The "<max ledger events> <tombstone lifetime s>[ <event>]" argument.
local function expiry_arg(arg)
  local max_events, lifetime, rest = string.match(arg or '', '^(%d+) (%d+) ?(.*)$')
  if not max_events then return 0, 600, '' end
  return tonumber(max_events), tonumber(lifetime), rest
end
