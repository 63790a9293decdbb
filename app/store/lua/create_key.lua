-- create_key: write the key hash unless the id is taken. KEYS: 1 key hash
-- ARGV: field, value, field, value, ... Returns 1 when created, 0 when the id exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
