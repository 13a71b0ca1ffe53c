-- wrk script for benchmarks/http.py: POST one fixed OIP v2 JSON infer body, then print a JSON summary.
-- Usage: wrk -c C -t T -d 3s -s benchmarks/wrk_post_json.lua http://HOST:PORT -- /v2/models/NAME/infer BODY.json

function init(args)
  -- each wrk thread has its own Lua state, so every thread reads the body itself
  local f = assert(io.open(args[2], "rb"))
  wrk.method = "POST"
  wrk.path = args[1]
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
