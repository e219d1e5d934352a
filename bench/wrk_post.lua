-- wrk script: POST chat-completion bodies, one JSON per line of a file, in rotation.
-- Usage: wrk -t1 -c64 -d10s -s bench/wrk_post.lua URL -- BODIES.jsonl [DELAY_MS]
-- DELAY_MS > 0 makes every connection pause before each request for a random time, exponentially
-- distributed with that mean: together the connections offer about
-- connections * 1000 / DELAY_MS requests per second as a Poisson stream (paced load). wrk's
-- latency clock starts when a request is written, after the pause.
-- done() prints one line "WRK_JSON {...}" with latency percentiles in microseconds.

local requests = {}
local idx = 0
local delay_ms = 0

function init(args)
  local path = args[1]
  delay_ms = tonumber(args[2] or "0") or 0
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  if #requests == 0 then
    error("no request bodies in " .. tostring(path))
  end
  math.randomseed(os.time() + #requests)
  idx = math.random(#requests) - 1
  if delay_ms <= 0 then
    delay = nil -- no pauses: wrk then skips its per-request timer
  end
end

function request()
  idx = idx % #requests + 1
  return requests[idx]
end

function delay()
  return -math.log(1.0 - math.random()) * delay_ms
end

function done(summary, latency, requests_stats)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"lat_mean_us":%.1f,"lat_max_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
