-- wrk script: a different X-User-ID on every request, optional pacing, a JSON summary line at the end.
local counter = tonumber(os.getenv("WRK_USER_OFFSET") or "0")
local pace = tonumber(os.getenv("WRK_DELAY_MS") or "0")

request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/orders", { ["X-User-ID"] = "user-" .. counter })
end

if pace > 0 then
  delay = function() return pace end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"durationUs":%d,"socketErrors":%d,"non2xx":%d,"p50Us":%d,"p90Us":%d,"p99Us":%d,"maxUs":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
