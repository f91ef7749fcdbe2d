-- wrk script: POST one typical chat-completions request, print one machine-readable line.
-- wrk counts any status >= 400 under errors.status, which "errors" includes.
-- env: BENCH_MODEL (default gpt-4o-mini), BENCH_STREAM=1 for "stream":true with usage,
--      BENCH_KEY (sent as "Authorization: Bearer ..." when set),
--      BENCH_UNIQUE=<run id>: every request's prompt differs (run id + a counter), so a
--      response cache misses on each one (bench/cache_paths.py).
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
local stream = os.getenv("BENCH_STREAM") == "1"
local key = os.getenv("BENCH_KEY")
local unique = os.getenv("BENCH_UNIQUE") or ""

local body = '{"model":"' .. model .. '","messages":[' ..
  '{"role":"system","content":"You are a terse assistant."},' ..
  '{"role":"user","content":"In one sentence: why does tail latency matter behind a gateway?"}],' ..
  '"max_tokens":64'
if stream then
  body = body .. ',"stream":true,"stream_options":{"include_usage":true}'
end

wrk.method = "POST"
wrk.body = body .. "}"
wrk.headers["Content-Type"] = "application/json"
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

if unique ~= "" then
  local head, tail = wrk.body:match("^(.*)(why does tail latency.*)$")
  local counter = 0
  function request()
    counter = counter + 1
    return wrk.format(nil, nil, nil, head .. unique .. "-" .. counter .. " " .. tail)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.3f,"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"errors":%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.connect + e.read + e.write + e.status + e.timeout))
end
