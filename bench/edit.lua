-- wrk script for the imagegate benchmark: one fixed POST, built once, sent over and over.
--
-- The body is built at load time (once per wrk Lua state), so no per-request Lua runs and
-- wrk measures only the network and the server. Settings come from the environment because
-- the top level of the script has no access to wrk's `--` arguments:
--   BENCH_BODY_KIND  "multipart" (an edit built from BENCH_IMAGE) or "file" (BENCH_BODY_FILE)
--   BENCH_IMAGE, BENCH_MODEL, BENCH_PROMPT, BENCH_BOUNDARY   for "multipart"
--   BENCH_BODY_FILE, BENCH_CONTENT_TYPE                      for "file"
--   BENCH_TOKEN      optional bearer token
-- done() prints one machine-readable line: "BENCH_RESULT {json}" (latencies in microseconds).

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local kind = os.getenv("BENCH_BODY_KIND") or "multipart"
local body, content_type

if kind == "multipart" then
  local boundary = os.getenv("BENCH_BOUNDARY") or "----imagegate-bench-7d1f0c2a9b"
  local image = slurp(assert(os.getenv("BENCH_IMAGE"), "BENCH_IMAGE not set"))
  local model = os.getenv("BENCH_MODEL") or "gpt-image-1.5"
  local prompt = os.getenv("BENCH_PROMPT") or "benchmark"
  body = table.concat({
    "--", boundary, '\r\nContent-Disposition: form-data; name="model"\r\n\r\n', model, "\r\n",
    "--", boundary, '\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n', prompt, "\r\n",
    "--", boundary, '\r\nContent-Disposition: form-data; name="image"; filename="image.png"\r\n',
    "Content-Type: image/png\r\n\r\n", image, "\r\n",
    "--", boundary, "--\r\n",
  })
  content_type = "multipart/form-data; boundary=" .. boundary
else
  body = slurp(assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE not set"))
  content_type = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = content_type
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes_read":%d,"body_bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes, #body,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
