-- KEYS: output stream, snapshot hash
-- ARGV: none
-- Inside a stage's commit transaction, after its XADDs and the HSET of the snapshot's data:
-- sets the snapshot's 'id' to the output stream's last id ('0-0' when it is empty), the last
-- output the snapshot covers. Returns that id.
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local id = last and last[1] or '0-0'
redis.call('HSET', KEYS[2], 'id', id)
return id
