-- settle: charge min(charge, reserved), refund the rest, free the slot, ledger it -- once;
-- keep a synchronous request's task record in the same step.
-- KEYS: 1 key hash, 2 reservations hash, 3 expiries zset, 4 ledger, 5 agg,
--       6 settled marker of this reservation, 7 task record
-- ARGV: 1 reservation id, 2 charge, 3 record json, 4 created_at, 5 UTC day, 6 model,
--       7 '1' if succeeded, 8 images, 9 channel, 10 operation, 11 upstream cost (micro-USD),
--       12 '1' if the cost is estimated, 13 seconds to remember a succeeded settle ('0': not),
--       14 task record ('' = none), 15 task record ttl seconds
-- Returns the charged amount; -2 when an earlier settle charged it (the marker is there);
-- -1 when it is gone (refunded or expired: nothing charged).
local kh, res, exp, ledger, agg = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid = ARGV[1]
local v = redis.call('HGET', res, rid)
if not v then
  if redis.call('EXISTS', KEYS[6]) == 1 then
    return -2
  end
  return -1
end
redis.call('HDEL', res, rid)
redis.call('ZREM', exp, rid)
local amount_s = parse_reservation(v)
local amount, charge = tonumber(amount_s), tonumber(ARGV[2])
local charge_s = ARGV[2]
if charge >= amount then
  charge, charge_s = amount, amount_s
end
if amount > charge and redis.call('EXISTS', kh) == 1 then
  redis.call('HINCRBY', kh, 'balance', amount - charge)
end
ledger_add(ledger, agg, ARGV[4], charge_s .. ':' .. amount_s .. ':' .. ARGV[3], ARGV[5], ARGV[6],
  ARGV[7] == '1', ARGV[8], charge_s, ARGV[9], ARGV[10], ARGV[11], ARGV[12] == '1')
if ARGV[7] == '1' and ARGV[13] ~= '0' then
  redis.call('SET', KEYS[6], charge_s, 'EX', ARGV[13])
end
if ARGV[14] ~= '' then
  redis.call('SET', KEYS[7], ARGV[14], 'EX', ARGV[15])
end
return charge
