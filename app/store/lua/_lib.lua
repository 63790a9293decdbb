-- Shared helpers, prepended to every metering script by RedisStore (one script = one slot:
-- every KEYS entry carries the same {key_id} hash tag).
--
-- A reservation is stored as the field `rid` of the res hash with the value
--   "<amount>\t<admitted_at>\t<meta json>"
-- and its expiry as the score of `rid` in the exp zset (so `extend` is one ZADD XX).
-- A ledger row is a member of the ledger zset, score = created_at, value
--   "<credits>:<reserved>:<record json>"
-- so the charged amount, decided inside the script, never needs a JSON round trip.

local function fmt(x)
  return string.format('%.17g', x)
end

local function parse_reservation(v)
  local a = string.find(v, '\t', 1, true)
  local b = string.find(v, '\t', a + 1, true)
  return string.sub(v, 1, a - 1), string.sub(v, a + 1, b - 1), string.sub(v, b + 1)
end

-- Append a ledger row and bump the per (day, channel, operation, model) aggregates of the
-- key. Fields are "2\t<day>\t<channel>\t<operation>\t<model>\t<metric>"; the leading "2"
-- tells them from fields written before channels ("<day>\t<model>\t<metric>").
-- `cost` is in micro-dollars, `estimated` a boolean.
local function ledger_add(ledger, agg, score, member, day, model, succeeded, images, credits,
                          channel, operation, cost, estimated)
  redis.call('ZADD', ledger, score, member)
  local p = '2\t' .. day .. '\t' .. channel .. '\t' .. operation .. '\t' .. model .. '\t'
  redis.call('HINCRBY', agg, p .. 'requests', 1)
  if succeeded then
    redis.call('HINCRBY', agg, p .. 'succeeded', 1)
  else
    redis.call('HINCRBY', agg, p .. 'failed', 1)
  end
  if images ~= '0' then
    redis.call('HINCRBY', agg, p .. 'images', images)
  end
  if credits ~= '0' then
    redis.call('HINCRBY', agg, p .. 'credits', credits)
  end
  if cost ~= '0' then
    redis.call('HINCRBY', agg, p .. 'cost', cost)
  end
  if estimated then
    redis.call('HINCRBY', agg, p .. 'estimated', 1)
  end
end

local function meta_str(meta, name, default)
  local v = meta[name]
  if v == nil or v == cjson.null then
    return default
  end
  return tostring(v)
end

-- Refund the reservations of one key whose expiry is <= now (at most `limit` of them when
-- given), free their slots and ledger them as 'expired' with the meta given at admit.
local function sweep_key(kh, res, exp, ledger, agg, key_id, now_s, day, limit)
  local rids
  if limit then
    rids = redis.call('ZRANGEBYSCORE', exp, '-inf', now_s, 'LIMIT', 0, limit)
  else
    rids = redis.call('ZRANGEBYSCORE', exp, '-inf', now_s)
  end
  if #rids == 0 then
    return 0
  end
  local key_exists = redis.call('EXISTS', kh) == 1
  local now = tonumber(now_s)
  local n = 0
  for _, rid in ipairs(rids) do
    redis.call('ZREM', exp, rid)
    local v = redis.call('HGET', res, rid)
    if v then
      redis.call('HDEL', res, rid)
      n = n + 1
      local amount, admitted, meta_s = parse_reservation(v)
      if key_exists and amount ~= '0' then
        redis.call('HINCRBY', kh, 'balance', amount)
      end
      local ok, meta = pcall(cjson.decode, meta_s)
      if not ok or type(meta) ~= 'table' then
        meta = {}
      end
      local model = meta_str(meta, 'model', '')
      local channel = meta_str(meta, 'channel', '')
      local operation = meta_str(meta, 'operation', 'edit')
      local latency = math.floor((now - tonumber(admitted)) * 1000)
      if latency < 0 then
        latency = 0
      end
      local row = {
        reservation_id = rid,
        key_id = key_id,
        model = model,
        size_tier = meta_str(meta, 'size_tier', 'request'),
        images = 0,
        task_id = meta_str(meta, 'task_id', ''),
        trace_id = meta_str(meta, 'trace_id', ''),
        status = 'expired',
        latency_ms = latency,
        created_at = now_s,
        error_code = 'reservation_expired',
        channel = channel,
        operation = operation,
        cost_usd = 0,
        cost_estimated = true,
      }
      ledger_add(ledger, agg, now_s, '0:' .. amount .. ':' .. cjson.encode(row), day, model,
        false, '0', '0', channel, operation, '0', true)
    end
  end
  return n
end
