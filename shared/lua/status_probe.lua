-- KEYS: cursor, events, lease, listener health, registry position
local pos = redis.call('GET', KEYS[5]) or '0-0'
local low = '-'
if pos ~= '0-0' then low = '(' .. pos end
local first = redis.call('XRANGE', KEYS[2], low, '+', 'COUNT', 1)[1]
local t = redis.call('TIME')
return {redis.call('HGET', KEYS[1], 'block') or false, redis.call('XLEN', KEYS[2]),
        redis.call('GET', KEYS[3]) or false,
        redis.call('HMGET', KEYS[4], 'final', 'problem'),
        first and first[1] or false,
        tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
