-- wrk summary for `make bench-queue`: one line with the error rate (any
-- non-2xx/3xx status or socket error counts) and p50/p95/p99 latency.
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.status + e.connect + e.read + e.write + e.timeout
  local secs = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d errors=%d error_rate=%.2f%% rps=%.0f ok_rps=%.0f p50_ms=%.1f p95_ms=%.1f p99_ms=%.1f max_ms=%.1f\n",
    summary.requests, errors, 100 * errors / math.max(summary.requests, 1),
    summary.requests / secs, (summary.requests - errors) / secs,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
