-- wrk script for bench/run.py.
-- Arguments after "--": request paths, used in turn by each connection's
-- requests (e.g. the 50 workspaces' feeds); none = the URL's own path.
-- At the end it prints one line "WRK_JSON {...}" with exact figures.

local paths = {}
local counter = 0

function init(args)
  for i = 1, #args do paths[i] = args[i] end
  -- Threads start at different offsets so they do not poll in lock step.
  counter = math.random(0, 1000)
end

function request()
  if #paths == 0 then
    return wrk.format(nil, nil)
  end
  counter = counter + 1
  return wrk.format(nil, paths[(counter % #paths) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
