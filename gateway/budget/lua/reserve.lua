-- Reserve a request's worst case on every applicable counter: all or nothing.
--
-- KEYS[1]  reservation records (hash)      KEYS[2]  reservation expiries (zset)
-- KEYS[3]  settled marker of this reservation: if it exists, the gateway already gave
--          this reservation up (its reserve call timed out), so it must not be held now
-- KEYS[4]  usage ledger (stream): where expired holds charged here are recorded
-- ARGV[1]  counter key prefix, hash tag included, e.g. "gw:{prj:p1}:"
-- ARGV[2]  reservation id
-- ARGV[3]  reservation ttl in ms
-- ARGV[4]  clock override in ms, "" for Redis server time (tests move the clock)
-- ARGV[5]  amounts "input,output,total,cost"
-- ARGV[6]  counters, ";"-separated, each "suffix window caps": scope suffix ("p",
--          "k:<key id>", "u:<user hash>"), window ("day"|"month"|"lifetime"),
--          caps "dim=limit,dim=limit" (dim 0..3) or "-" for none
-- ARGV[7]  rate limits (GCRA over a 60 s window), ";"-separated, each "suffix us units":
--          key suffix, microseconds per unit (60e6 / limit per minute, with its fraction:
--          whole microseconds distorted large limits), units this request costs (never
--          more than the limit: the caller refuses those for good); "" for none
-- ARGV[8]  "<max ledger events> <tombstone lifetime s> <event>": the bound of the ledger
--          (0: no events), how long a charged expired hold's tombstone lives, and the
--          JSON object this hold's expired-hold event starts from (request id, project...)
-- ARGV[9]  shrink instead of refuse: "min_output choices input_cost_numerator output_price"
--          (min_output per choice; the cost of the input is input_cost_numerator / 1e6
--          nano-USD, each output token output_price / 1e6), "" to refuse as usual
-- (Few arguments on purpose: packing each one costs the client more than parsing here.)
-- Returns  {1, expired left, tightest, rate room, shrunk, key1, ..., keyN}  admitted
--          (shrunk: the amounts held, "input,output,total,cost", when the worst case did
--          not fit and the output was lowered to what every cap has room for; "-" if not)
--          (tightest: "room limit window_id" of the token cap and of the cost cap with
--          the least room left once this request is held, "|"-separated, "-" for none;
--          rate room: "units_left reset_ms" per rate limit, ";"-separated)
--          {0, counter index, dim, limit, used, reserved, window id, expired left}  refused
--          (402; "expired left": expired holds beyond this call's batch, still counted
--          as reserved in used/reserved: drain them and ask again for an exact body)
--          {2, rate limit index, retry after ms}                   rate limited (429)
--          {3}                                                     given up already
-- Nothing is written unless every rate limit and every cap has room.

if redis.call('EXISTS', KEYS[3]) == 1 then return {3} end

local now = now_ms(ARGV[4])
local max_events, lifetime, event = expiry_arg(ARGV[8])
-- Charged (u) or not yet (r), an expired hold weighs the same in every cap check below.
local expired_left = purge_expired(KEYS[1], KEYS[2], KEYS[4], now, max_events, lifetime)

-- Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local y, m, d = civil(math.floor(now / 86400000))
local window_ids = {
  day = string.format('d%04d%02d%02d', y, m, d),
  month = string.format('m%04d%02d', y, m),
  lifetime = 'all',
}
-- Counters outlive their window so usage stays readable for a while (set when created).
local window_ttl = { day = '3456000', month = '34560000' }  -- 40 and 400 days, in seconds

local amounts = split(ARGV[5], ',')
local amount_n = {}
for i = 1, 4 do amount_n[i] = tonumber(amounts[i]) end

local counters = {}
for spec in string.gmatch(ARGV[6], '[^;]+') do
  local suffix, window, caps = string.match(spec, '^(%S+) (%S+) (%S+)$')
  counters[#counters + 1] = {suffix, window, caps}
end
local n = #counters

-- Rate limits (GCRA): each key holds a theoretical arrival time in whole microseconds; a
-- request is allowed while that time stays within one minute ahead of now. Computed in
-- doubles (exact to a fraction of a microsecond at these magnitudes, below 2^53) and
-- rounded up, so rounding never admits more than the limit.
local WINDOW_US = 60000000
local now_us = now * 1000
local new_tats = {}
local rate_room = {}
local i = 0
for spec in string.gmatch(ARGV[7] or '', '[^;]+') do
  i = i + 1
  local suffix, us, units = string.match(spec, '^(%S+) (%S+) (%S+)$')
  local key = ARGV[1] .. suffix
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now_us then tat = now_us end
  local new_tat = math.ceil(tat + tonumber(us) * tonumber(units))
  if new_tat - now_us > WINDOW_US then
    local wait_ms = math.ceil((new_tat - now_us - WINDOW_US) / 1000)
    if wait_ms > 60000 then wait_ms = 60000 end
    return {2, i, wait_ms}
  end
  new_tats[i] = {key, new_tat}
  local left = math.floor((WINDOW_US - (new_tat - now_us)) / tonumber(us))
  rate_room[i] = string.format('%d %d', left, math.ceil((new_tat - now_us) / 1000))
end

local shrink = nil
if ARGV[9] and ARGV[9] ~= '' then
  local mo, per, inum, oprice = string.match(ARGV[9], '^(%S+) (%S+) (%S+) (%S+)$')
  shrink = {tonumber(mo), tonumber(per), tonumber(inum), tonumber(oprice)}
end

local keys = {}
local refusal = nil  -- the first cap without room for the worst case
local fit = amount_n[2]  -- (shrink) the most output every cap has room for
local seen = {}  -- every cap checked: {dim, limit, used, reserved, window id}
-- Whether a counter may be new, so its expiry must be set: a capped counter's state
-- says so (no field at all); of the others nothing is read, so they always get it.
local fresh = {}
for c = 1, n do
  local window = counters[c][2]
  local key = ARGV[1] .. counters[c][1] .. ':' .. window_ids[window]
  keys[c] = key
  fresh[c] = true
  local caps = counters[c][3]
  if caps ~= '-' then
    local state = redis.call('HMGET', key, 'u0', 'u1', 'u2', 'u3', 'r0', 'r1', 'r2', 'r3')
    fresh[c] = not (state[1] or state[2] or state[3] or state[4]
                    or state[5] or state[6] or state[7] or state[8])
    for _, cap in ipairs(split(caps, ',')) do
      local eq = string.find(cap, '=', 1, true)
      local dim = tonumber(string.sub(cap, 1, eq - 1))
      local limit = tonumber(string.sub(cap, eq + 1))
      local used = tonumber(state[dim + 1] or '0')
      local reserved = tonumber(state[dim + 5] or '0')
      local free = limit - used - reserved
      if free < amount_n[dim + 1] then
        if shrink == nil then
          return {0, c, dim, string.format('%d', limit), string.format('%d', used),
                  string.format('%d', reserved), window_ids[window], expired_left}
        end
        refusal = refusal or {c, dim, limit, used, reserved, window_ids[window]}
      end
      if shrink ~= nil then
        local most  -- the output this cap has room for
        if dim == 0 then
          most = free >= amount_n[1] and fit or -1
        elseif dim == 1 then
          most = free
        elseif dim == 2 then
          most = free - amount_n[1]
        elseif shrink[4] > 0 then
          most = math.floor((free * 1000000 - shrink[3]) / shrink[4])
        else
          most = free * 1000000 >= shrink[3] and fit or -1
        end
        if most < fit then fit = most end
      end
      seen[#seen + 1] = {dim, limit, used, reserved, window_ids[window]}
    end
  end
end

local shrunk = -1
if refusal ~= nil then
  -- The worst case does not fit: hold the output every cap has room for, in whole
  -- choices, if that is at least min_output a choice; else refuse as usual.
  local per_choice = math.floor(fit / shrink[2])
  if per_choice < shrink[1] then
    return {0, refusal[1], refusal[2], string.format('%d', refusal[3]),
            string.format('%d', refusal[4]), string.format('%d', refusal[5]), refusal[6],
            expired_left}
  end
  shrunk = per_choice * shrink[2]
  amount_n[2] = shrunk
  amount_n[3] = amount_n[1] + shrunk
  amount_n[4] = math.ceil((shrink[3] + shrunk * shrink[4]) / 1000000)
  for d = 1, 4 do amounts[d] = string.format('%d', amount_n[d]) end
end

local tightest = {}  -- [1] tokens, [2] cost: {room, limit, window id}
for _, cap in ipairs(seen) do
  local dim = cap[1]
  local room = cap[2] - cap[3] - cap[4] - amount_n[dim + 1]
  local slot = dim == 3 and 2 or 1
  if tightest[slot] == nil or room < tightest[slot][1] then
    tightest[slot] = {room, cap[2], cap[5]}
  end
end

for c = 1, n do
  local key = keys[c]
  for d = 1, 4 do
    if amounts[d] ~= '0' then redis.call('HINCRBY', key, RESERVED[d], amounts[d]) end
  end
  local ttl = window_ttl[counters[c][2]]
  if ttl and fresh[c] then redis.call('EXPIRE', key, ttl) end
end

for _, t in ipairs(new_tats) do
  redis.call('SET', t[1], string.format('%.0f', t[2]), 'PX', math.ceil((t[2] - now_us) / 1000) + 1000)
end

redis.call('HSET', KEYS[1], ARGV[2], table.concat(amounts, ',') .. '|' .. table.concat(keys, '|') .. '\n' .. event)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])

local function tight(t)
  if t == nil then return '-' end
  return string.format('%d %d %s', t[1], t[2], t[3])
end
local out = {1, expired_left, tight(tightest[1]) .. '|' .. tight(tightest[2]),
             table.concat(rate_room, ';'), shrunk >= 0 and table.concat(amounts, ',') or '-'}
for c = 1, n do out[c + 5] = keys[c] end
return out
