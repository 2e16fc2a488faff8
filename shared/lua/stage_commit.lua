-- KEYS: position, state hash, output stream, dead-letter stream
-- ARGV: expected position, new position, replace ('1': the state hash is rewritten whole),
--   schema version of the outputs, then three MessagePack arrays of strings (one argument
--   each, so a commit of thousands of fields is a handful of arguments to send and parse):
--   state fields to set (field, value)*, state fields to delete field*, outputs (type, data)*;
--   then counted groups: n_dead, (id, reason, raw)*,
--   n_snapshot (0 or 1), snapshot data (written to KEYS[5] with the last output id it covers)
-- Returns the number of outputs appended.
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then
  return redis.error_reply('CONFLICT position is ' .. cur .. ', expected ' .. ARGV[1])
end
if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
local version = ARGV[4]
local set = cmsgpack.unpack(ARGV[5])
local n, i = #set / 2, 1
while n > 0 do  -- one HSET per chunk of fields (unpack stays far below Lua's stack limit)
  local m = math.min(n, 1000)
  redis.call('HSET', KEYS[2], unpack(set, i, i + 2 * m - 1)); i = i + 2 * m; n = n - m
end
local del = cmsgpack.unpack(ARGV[6])
n, i = #del, 1
while n > 0 do
  local m = math.min(n, 1000)
  redis.call('HDEL', KEYS[2], unpack(del, i, i + m - 1)); i = i + m; n = n - m
end
local through = false  -- the id of the last output appended
local out = cmsgpack.unpack(ARGV[7])
for j = 1, #out, 2 do
  through = redis.call('XADD', KEYS[3], '*', 'v', version, 'type', out[j], 'data', out[j + 1])
end
i = 8
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('XADD', KEYS[4], '*', 'id', ARGV[i], 'reason', ARGV[i + 1], 'raw', ARGV[i + 2])
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
if n == 1 and #KEYS >= 5 then
  if not through then
    local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
    through = last and last[1] or '0-0'
  end
  redis.call('HSET', KEYS[5], 'id', through, 'data', ARGV[i])
end
if ARGV[2] ~= cur then redis.call('SET', KEYS[1], ARGV[2]) end
return #out / 2
