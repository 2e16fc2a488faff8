-- KEYS: plan hash, staged hash; ARGV: id, start, end, size
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'start', ARGV[2], 'end', ARGV[3], 'size', ARGV[4])
return 1
