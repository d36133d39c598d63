-- Shared helpers, prepended to each budget script (Redis scripts cannot import).
--
-- A counter is a hash per (scope, window) holding, for each dimension
-- d in 0..3 (input tokens, output tokens, total tokens, cost in nano-USD),
-- "u<d>" = settled usage and "r<d>" = in-flight reservations.
-- A reservation record is "in,out,total,cost|key|key|...": the amounts it holds
-- on each counter key. Records live in a hash, their expiry (ms) in a zset.

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

-- Give back the amounts a reservation record holds.
local function release(record)
  local parts = split(record, '|')
  local amounts = split(parts[1], ',')
  local give_back = {}
  for d = 1, 4 do
    if amounts[d] ~= '0' then give_back[#give_back + 1] = { RESERVED[d], '-' .. amounts[d] } end
  end
  for i = 2, #parts do
    for _, field in ipairs(give_back) do
      -- Held amounts never exceed what a counter reserves, so a negative result means
      -- the counter had expired (a hold purged long after): HINCRBY just recreated it
      -- without an expiry. Remove the field again (an emptied hash is deleted).
      if redis.call('HINCRBY', parts[i], field[1], field[2]) < 0 then
        redis.call('HDEL', parts[i], field[1])
      end
    end
  end
end

-- Release reservations whose expiry passed (a crashed gateway's), a bounded batch per call.
local function purge_expired(rsv_hash, rsv_expiry, now)
  local expired = redis.call('ZRANGEBYSCORE', rsv_expiry, '-inf', now, 'LIMIT', 0, 32)
  for _, rid in ipairs(expired) do
    local record = redis.call('HGET', rsv_hash, rid)
    if record then
      release(record)
      redis.call('HDEL', rsv_hash, rid)
    end
    redis.call('ZREM', rsv_expiry, rid)
  end
end
