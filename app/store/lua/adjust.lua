-- adjust: add (or deduct) credits, never below zero, and log it for audit.
-- KEYS: 1 key hash, 2 credit log list
-- ARGV: 1 amount (signed integer), 2 log entry json without its leading '{'
-- Returns {0, new balance} | {1, 0} unknown key | {2, balance} would go below zero.
local bal = redis.call('HGET', KEYS[1], 'balance')
if not bal then
  return {1, 0}
end
if tonumber(bal) + tonumber(ARGV[1]) < 0 then
  return {2, tonumber(bal)}
end
local nb = redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
redis.call('RPUSH', KEYS[2], '{"balance_after":' .. nb .. ',' .. ARGV[2])
return {0, nb}
