-- extend: push a live reservation's expiry out. KEYS: 1 reservations hash, 2 expiries zset
-- ARGV: 1 reservation id, 2 new expires_at. Returns 1, or 0 when the reservation is gone.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
