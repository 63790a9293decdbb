-- delete_key: drop the key and its rate window, so the next admit answers invalid_token.
-- Live reservations, the ledger, aggregates and credit log stay: an in-flight request still
-- settles into the ledger, and the sweep clears what is left.
-- KEYS: 1 key hash, 2 window zset. Returns the key's hash of the secret, or false.
local h = redis.call('HGET', KEYS[1], 'key_hash')
if not h then
  return false
end
redis.call('DEL', KEYS[1], KEYS[2])
return h
