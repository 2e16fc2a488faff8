-- KEYS: plan hash, staged hash; ARGV: plan id, field, staged JSON
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
