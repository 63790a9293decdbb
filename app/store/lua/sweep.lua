-- sweep: refund every expired reservation of one key (see sweep_key in _lib.lua).
-- KEYS: 1 key hash, 2 reservations hash, 3 expiries zset, 4 ledger, 5 agg
-- ARGV: 1 key id, 2 now, 3 UTC day of now
-- Returns the number of reservations refunded.
return sweep_key(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], nil)
