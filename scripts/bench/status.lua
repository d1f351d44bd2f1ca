-- wrk script for `make bench-abuse` (scenario C): counts the answers by status
-- code in every thread and prints one line at the end: STATUS 200=n 503=n ...
-- (socket errors and timeouts are in wrk's own summary).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  codes = {}
end

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("codes")
    for k, v in pairs(c) do total[k] = (total[k] or 0) + v end
  end
  local keys = {}
  for k in pairs(total) do table.insert(keys, k) end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do table.insert(parts, k .. "=" .. total[k]) end
  io.write("STATUS " .. table.concat(parts, " ") .. "\n")
end
