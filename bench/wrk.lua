-- wrk script for bench/run.py: one request shape per run, optional fixed rate, JSON summary.
-- The request is set in init() and left static (no request() function): a Lua call per request
-- would make wrk itself the bottleneck.
-- Arguments (after --): METHOD BODY_BYTES RATE_PER_SECOND CONNECTIONS
-- (RATE 0 = as fast as possible; CONNECTIONS = wrk's -c, used to pace a fixed rate)
local method, body, rate, connections = "GET", nil, 0, 1

function init(args)
  method = args[1] or "GET"
  local size = tonumber(args[2] or "0")
  rate = tonumber(args[3] or "0")
  connections = tonumber(args[4] or "1")
  if size > 0 then
    local prefix = '{"displayName":"bench","period":1,"userData":"'
    local suffix = '"}'
    body = prefix .. string.rep("a", size - #prefix - #suffix) .. suffix
    wrk.headers["Content-Type"] = "application/json"
  end
  wrk.method = method
  wrk.body = body
  if rate <= 0 then
    -- wrk asks the script for a delay before every request when it defines delay(): leave it
    -- undefined for full-speed runs, so they cost wrk no Lua call per request.
    delay = nil
  end
end

-- Fixed rate: every connection waits connections * 1000 / rate ms between its requests.
function delay()
  return connections * 1000 / rate
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
