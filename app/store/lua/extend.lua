-- extend: push a live reservation's expiry out.
-- KEYS: 1 reservations hash, 2 expiries zset, 3 settled marker of this reservation
-- ARGV: 1 reservation id, 2 new expires_at.
-- Returns 1 (live), 2 (settled: an earlier settle charged it) or 0 (gone: nothing charged).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    return 2
  end
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
