-- wrk script for the dispatch-receiver benchmark (driven by bench/run.py).
--
--   wrk -t2 -c16 -d15s -s bench/post.lua http://127.0.0.1:PORT -- PREFIX [STOP_AFTER] [PATH] [ACKS]
--
-- Thread i posts the lines of PREFIX.i in order ("<Authorization or empty>\t<JSON body>"),
-- each line once (its own slice: no body repeats beyond the file's designed re-deliveries);
-- a thread that runs out of lines starts its file again and counts a wrap. STOP_AFTER > 0
-- stops each thread once it has that many responses (the --soak mode: each line once); as
-- wrk itself still waits out -d, the thread then creates ACKS.stopped.<id> and run.py, seeing
-- every thread's, sends wrk SIGINT (which ends it normally, done() included).
-- done() prints one line "WRK_RESULT {json}" with wrk's summary, latency percentiles in
-- microseconds, and per-thread counts of requests issued, responses by status code, wraps;
-- with ACKS it also writes the file ACKS: "callback_id delivery_count" of every 200 answer
-- (the receiver names the row and the delivery it committed), for the database check.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- Per-thread globals (read by done() through thread:get).
issued, responded, wraps, codes = 0, 0, 0, {}
acks_id, acks_dc, n_acks = {}, {}, 0

local file, stop_after, target, stop_marker
local stopped = false
local headers = {}

function init(args)
   local prefix = args[1] or error("usage: -- PREFIX [STOP_AFTER] [PATH]")
   stop_after = tonumber(args[2] or "0")
   target = args[3] or "/webhooks/vonage"
   ack_path = args[4]  -- global: done() reads it through thread:get
   stop_marker = (ack_path or args[1]) .. ".stopped." .. id
   file = assert(io.open(prefix .. "." .. id, "rb"))
   headers["Host"] = wrk.host .. ":" .. wrk.port
   headers["Content-Type"] = "application/json"
   headers["User-Agent"] = "wrk dispatch-receiver bench"
end

function request()
   local line = file:read("*l")
   if not line then
      wraps = wraps + 1
      file:seek("set", 0)
      line = file:read("*l")
   end
   issued = issued + 1
   local tab = line:find("\t", 1, true)
   local auth = line:sub(1, tab - 1)
   if auth == "" then auth = nil end
   headers["Authorization"] = auth
   return wrk.format("POST", target, headers, line:sub(tab + 1))
end

function response(status, headers, body)
   responded = responded + 1
   codes[status] = (codes[status] or 0) + 1
   if status == 200 then
      n_acks = n_acks + 1
      acks_id[n_acks] = tonumber(body:match('"callback_id":%s*(%d+)')) or -1
      acks_dc[n_acks] = tonumber(body:match('"delivery_count":%s*(%d+)')) or -1
   end
   if stop_after > 0 and responded >= stop_after and not stopped then
      stopped = true
      assert(io.open(stop_marker, "wb")):close()
      wrk.thread:stop()
   end
end

local function json_codes(t)
   local parts = {}
   for code, n in pairs(t) do
      parts[#parts + 1] = string.format('"%d": %d', code, n)
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

local function write_acks(path)
   local out = assert(io.open(path, "wb"))
   for _, thread in ipairs(threads) do
      local ids, dcs = thread:get("acks_id"), thread:get("acks_dc")
      for i = 1, thread:get("n_acks") do
         out:write(ids[i], " ", dcs[i], "\n")
      end
   end
   out:close()
end

function done(summary, latency, requests)
   local ack_path = threads[1] and threads[1]:get("ack_path")
   if ack_path and ack_path ~= "" then
      write_acks(ack_path)
   end
   local per_thread = {}
   for _, thread in ipairs(threads) do
      per_thread[#per_thread + 1] = string.format(
         '{"id": %d, "issued": %d, "responded": %d, "wraps": %d, "codes": %s}',
         thread:get("id"), thread:get("issued"), thread:get("responded"),
         thread:get("wraps"), json_codes(thread:get("codes")))
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, ' ..
      '"p50": %d, "p90": %d, "p99": %d, "p99.9": %d}, "threads": [%s]}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), table.concat(per_thread, ", ")))
end
