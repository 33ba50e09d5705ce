-- wrk script for scripts/bench-http.sh: counts every response whose status is not the expected
-- one (the first script argument), so a run can never silently measure errors, and prints one
-- machine-readable result line.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  expected = tonumber(args[1])
  unexpected = 0
  first_unexpected = 0
end

function response(status, headers, body)
  if status ~= expected then
    unexpected = unexpected + 1
    if first_unexpected == 0 then
      first_unexpected = status
    end
  end
end

function done(summary, latency, requests)
  local bad, first = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("unexpected")
    local f = t:get("first_unexpected")
    if first == 0 and f ~= 0 then
      first = f
    end
  end
  local e = summary.errors
  io.write(string.format(
    "KEYGATE_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d unexpected=%d first_unexpected=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    bad, first, e.connect, e.read, e.write, e.timeout))
end
