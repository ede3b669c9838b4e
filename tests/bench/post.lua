-- wrk script of the overhead benchmark: POST one OpenAI chat request (non-streaming, or
-- streaming with `-- stream`), and print one machine-readable line when done:
--   wrk -t1 -c32 -d5s -s tests/bench/post.lua http://127.0.0.1:8080/v1/chat/completions -- stream

local stream = false

function init(args)
  stream = args[1] == "stream"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_API_KEY") or "sk-bench")
  local body = '{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello in ten words"}],"max_tokens":64'
  if stream then
    body = body .. ',"stream":true'
  end
  wrk.body = body .. "}"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
