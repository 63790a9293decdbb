-- admit: key valid -> rpm sliding window -> concurrency -> balance -> reserve, atomically.
-- KEYS: 1 key hash, 2 window zset, 3 reservations hash, 4 expiries zset, 5 ledger, 6 agg
-- ARGV: 1 reservation id, 2 cost, 3 rpm, 4 max concurrency, 5 now, 6 expires_at,
--       7 meta json, 8 key id, 9 UTC day of now, 10 window seconds, 11 concurrency retry s
-- Returns {status, balance, limit, remaining, reset_s, retry_after_s}; the two times are
-- strings because Redis truncates Lua numbers to integers.
local kh, win, res, exp, ledger, agg = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local rid, cost_s, now_s = ARGV[1], ARGV[2], ARGV[5]
local cost, rpm, maxc = tonumber(cost_s), tonumber(ARGV[3]), tonumber(ARGV[4])
local now, window = tonumber(now_s), tonumber(ARGV[10])

local st = redis.call('HMGET', kh, 'balance', 'disabled', 'expires_at')
if not st[1] or st[2] == '1' or (st[3] and tonumber(st[3]) <= now) then
  return {'invalid_token', 0, rpm, 0, '0', '0'}
end

-- a crashed request's slot and credits come back on the key's next request, not only when
-- the periodic sweep runs
sweep_key(kh, res, exp, ledger, agg, ARGV[8], now_s, ARGV[9], 64)

redis.call('ZREMRANGEBYSCORE', win, '-inf', now - window)
local n = redis.call('ZCARD', win)
local reset = 0
if n > 0 then
  local newest = redis.call('ZRANGE', win, -1, -1, 'WITHSCORES')
  reset = tonumber(newest[2]) + window - now
  if reset < 0 then
    reset = 0
  end
end
local balance = tonumber(redis.call('HGET', kh, 'balance'))
local remaining = rpm - n
if remaining < 0 then
  remaining = 0
end

-- the same reservation id again (a client retry after a timeout): already admitted, once
if redis.call('HEXISTS', res, rid) == 1 then
  return {'ok', balance, rpm, remaining, fmt(reset), '0'}
end

if n >= rpm then
  local oldest = redis.call('ZRANGE', win, 0, 0, 'WITHSCORES')
  local retry = tonumber(oldest[2]) + window - now
  if retry < 0 then
    retry = 0
  end
  return {'rate_limited', balance, rpm, 0, fmt(reset), fmt(retry)}
end
if redis.call('HLEN', res) >= maxc then
  return {'concurrency_limited', balance, rpm, remaining, fmt(reset), ARGV[11]}
end
if cost > balance then
  return {'insufficient_credits', balance, rpm, remaining, fmt(reset), '0'}
end

redis.call('ZADD', win, now_s, rid)
redis.call('HSET', res, rid, cost_s .. '\t' .. now_s .. '\t' .. ARGV[7])
redis.call('ZADD', exp, ARGV[6], rid)
if cost > 0 then
  balance = redis.call('HINCRBY', kh, 'balance', '-' .. cost_s)
end
return {'ok', balance, rpm, remaining - 1, fmt(window), '0'}
