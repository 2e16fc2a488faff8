-- KEYS: a stream; ARGV: a position in it, most entries counted
return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
