-- settle: charge min(charge, reserved), refund the rest, free the slot, ledger it -- once.
-- KEYS: 1 key hash, 2 reservations hash, 3 expiries zset, 4 ledger, 5 agg
-- ARGV: 1 reservation id, 2 charge, 3 record json, 4 created_at, 5 UTC day, 6 model,
--       7 '1' if succeeded, 8 images, 9 channel, 10 operation, 11 upstream cost (micro-USD),
--       12 '1' if the cost is estimated
-- Returns the charged amount, or -1 when the reservation is gone (settled or expired).
local kh, res, exp, ledger, agg = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid = ARGV[1]
local v = redis.call('HGET', res, rid)
if not v then
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
return charge
