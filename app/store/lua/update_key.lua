-- update_key: change fields of an existing key only (a concurrent delete must not be undone
-- by re-creating a half key). KEYS: 1 key hash
-- ARGV: 1 number of fields to set (n), then n field/value pairs, then fields to delete.
-- Returns the key's fields after the change, or an empty list when the key does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[2 + 2 * i], ARGV[3 + 2 * i])
end
for i = 2 + 2 * n, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
return redis.call('HGETALL', KEYS[1])
