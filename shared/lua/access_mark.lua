-- KEYS: position, state hash, dead-letter stream, events
-- ARGV: the re-drive field, our position (exclusive; '-' for the start), page size
local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
local pos = redis.call('GET', KEYS[1]) or ''
local page = {}
if pos ~= '' and pos ~= ARGV[2] then
  page = redis.call('XRANGE', KEYS[4], ARGV[2] == '-' and '-' or '(' .. ARGV[2], pos,
                    'COUNT', ARGV[3])
end
return {pos, redis.call('HGET', KEYS[2], ARGV[1]) or '', newest and newest[1] or '', page}
