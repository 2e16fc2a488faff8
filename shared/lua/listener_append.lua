-- KEYS: cursor hash, events stream, dead-letter stream[, lease key]
-- ARGV: expected block ('' for none), new block, new hash, last digest, fencing token,
--       recent checkpoints (JSON), n_entries, (v, type, data)*, n_dead, (id, reason, raw)*
if #KEYS >= 4 and redis.call('GET', KEYS[4]) ~= ARGV[5] then
  return redis.error_reply('CONFLICT fenced: lease ' .. KEYS[4] .. ' is not held by this token')
end
local cur = redis.call('HGET', KEYS[1], 'block') or ''
if cur ~= ARGV[1] then
  return redis.error_reply('CONFLICT cursor is at ' .. cur .. ', expected ' .. ARGV[1])
end
local i = 7
local n = tonumber(ARGV[i]); i = i + 1
local last = false
for _ = 1, n do
  last = redis.call('XADD', KEYS[2], '*', 'v', ARGV[i], 'type', ARGV[i + 1], 'data', ARGV[i + 2])
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('XADD', KEYS[3], '*', 'id', ARGV[i], 'reason', ARGV[i + 1], 'raw', ARGV[i + 2])
  i = i + 3
end
redis.call('HSET', KEYS[1], 'block', ARGV[2], 'hash', ARGV[3], 'digest', ARGV[4], 'recent', ARGV[6])
if last then redis.call('HSET', KEYS[1], 'last_id', last) end
return last
