-- KEYS: cursor, lease, events, registry, peers, registry position, ipam position,
--       listener dead, registry dead, ipam dead, ipam state, registry state, listener health
-- ARGV: mode (full | hosts | host | stages), lag cap, pattern of the per-host keys
--       (mode host: that host's status key), scan count, (mode host: its announce key),
--       issues field, pending field
-- Host keys are found with SCAN: the script reads keys it was not given, all under the
-- network's hash tag (one cluster slot). Nothing here reads a whole stream: lags are
-- counted up to the cap, and the current issues are one field of each state hash.
local mode, cap = ARGV[1], tonumber(ARGV[2])

local function split(id)
  local ms, seq = string.match(id or '', '^(%d+)%-(%d+)$')
  if not ms then return 0, 0 end
  return tonumber(ms), tonumber(seq)
end
local function newer(a, b)  -- a > b
  local am, as = split(a)
  local bm, bs = split(b)
  if am ~= bm then return am > bm end
  return as > bs
end

-- entries of `stream` after each of `positions` (at most cap), walking back from the end once
local function lags(stream, positions)
  local seen, order = {}, {}
  for _, p in ipairs(positions) do
    if not seen[p] then seen[p] = true; order[#order + 1] = p end
  end
  table.sort(order, newer)
  local result, idx, count, max = {}, 1, 0, '+'
  while idx <= #order and count < cap do
    local page = redis.call('XREVRANGE', stream, max, '-', 'COUNT', 500)
    if #page == 0 then break end
    for _, e in ipairs(page) do
      while idx <= #order and not newer(e[1], order[idx]) do
        result[order[idx]] = count; idx = idx + 1
      end
      if idx > #order or count >= cap then break end
      count = count + 1
    end
    max = '(' .. page[#page][1]
  end
  while idx <= #order do result[order[idx]] = count; idx = idx + 1 end
  local out = {}
  for i, p in ipairs(positions) do out[i] = result[p] end
  return out
end

local function tail(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last == 0 then return false end
  return last[1][1]
end

-- id of the first entry of `stream` after `position` (false: none), for how long it waited
local function first_after(stream, position)
  local low = '-'
  if position ~= '0-0' then low = '(' .. position end
  local r = redis.call('XRANGE', stream, low, '+', 'COUNT', 1)
  if #r == 0 then return false end
  return r[1][1]
end

local positions = {redis.call('GET', KEYS[6]) or '0-0', redis.call('GET', KEYS[7]) or '0-0'}
local stage_lags = {}
if mode == 'full' or mode == 'stages' then
  stage_lags = {lags(KEYS[3], {positions[1]})[1], lags(KEYS[4], {positions[2]})[1]}
end
if mode == 'stages' then return {positions, stage_lags} end

local statuses, announces = {}, {}
local function consider(k)
  local kind = redis.call('TYPE', k).ok
  if kind == 'hash' and string.sub(k, -7) == ':status' then statuses[#statuses + 1] = k
  elseif kind == 'string' and string.sub(k, -9) == ':announce' then announces[#announces + 1] = k end
end
if mode == 'host' then
  consider(ARGV[3]); consider(ARGV[5])
else
  local found, cursor = {}, '0'
  repeat
    local r = redis.call('SCAN', cursor, 'MATCH', ARGV[3], 'COUNT', tonumber(ARGV[4]))
    cursor = r[1]
    for _, k in ipairs(r[2]) do
      if not found[k] then found[k] = true; consider(k) end
    end
  until cursor == '0'
end
table.sort(statuses)
local hashes, applied = {}, {}
for i, k in ipairs(statuses) do
  hashes[i] = redis.call('HGETALL', k)
  applied[i] = redis.call('HGET', k, 'applied_position') or '0-0'
end
local host_lags = lags(KEYS[5], applied)
local host_first = {}
for i, a in ipairs(applied) do
  host_first[i] = false
  if host_lags[i] > 0 then host_first[i] = first_after(KEYS[5], a) end
end
local endpoints = {}
for i, k in ipairs(announces) do endpoints[i] = redis.call('GET', k) end
local tails = {tail(KEYS[3]), tail(KEYS[4]), tail(KEYS[5])}
local hosts = {statuses, hashes, host_lags, announces, endpoints, tails, host_first}
if mode ~= 'full' then return {positions, stage_lags, hosts} end

local issues = {redis.call('HGET', KEYS[12], ARGV[6]) or false,
                redis.call('HGET', KEYS[11], ARGV[7]) or false}
local listener = {
  redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2]) or false,
  redis.call('PTTL', KEYS[2]), redis.call('XLEN', KEYS[3]), redis.call('HGETALL', KEYS[13]),
}
local dead = {redis.call('XLEN', KEYS[8]), redis.call('XLEN', KEYS[9]), redis.call('XLEN', KEYS[10])}
local waiting = {first_after(KEYS[3], positions[1]), first_after(KEYS[4], positions[2])}
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {positions, stage_lags, hosts, listener, dead, issues, waiting, now_ms}
