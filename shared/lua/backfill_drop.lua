-- KEYS: plan hash, staged hash; ARGV: plan id ('' = whichever plan runs)
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1], KEYS[2])
