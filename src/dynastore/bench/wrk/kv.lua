-- wrk script of `dynastore bench wrk`: GET or PUT of fixed-size values over random keys of a key
-- space, against dynastore (Riak's HTTP API) or etcd (its v3 JSON gateway, keys and values in base64).
--
--   wrk ... -s kv.lua URL -- KIND OP KEYS VALUE_BYTES BUCKET [LOG_DIR]
--
-- KIND is dynastore or etcd, OP get or put, KEYS the size of the key space (keys k0 .. k<KEYS-1>,
-- the names the benchmark pre-loads), BUCKET dynastore's bucket. done() prints one line
-- `WRK_JSON {...}` with wrk's own counts and latency percentiles (the --latency distribution), then
-- one line `WRK_HIST <cpu_us> <latency_us>:<count> ...`: the histogram those percentiles come from
-- (after wrk's correction for coordinated omission, so its total exceeds the request count), so that
-- the histograms of several wrk processes driving one cluster side by side merge exactly, and the CPU
-- the listing took (not the run's). wrk 4.1 gives a script only `latency(i)`, the i-th distinct value
-- and its count, found by scanning wrk's array from the smallest latency: listing costs up to distinct
-- values x range reads (much less on a skewed distribution), so it stops past HIST_CPU_MAX_US of CPU
-- and the line is then `WRK_HIST skipped <cpu_us>`, leaving only the percentiles.
--
-- With LOG_DIR, each thread also logs every response it gets to LOG_DIR/thread-<id>.log as
-- `<end_us> <latency_us> <status>`, times from CLOCK_MONOTONIC (the clock of Python's
-- time.monotonic()) read through LuaJIT's ffi. wrk's Lua has no connection identity, so this needs
-- one connection per thread (-t N -c N): a thread's request() and response() then strictly
-- alternate (see request()), and the time between them is that request's latency. A request still unanswered when
-- wrk stops is printed by done() (its start) so that a stall to the end is counted, not lost.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } dynastore_timespec;
int clock_gettime(int clk_id, dynastore_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("dynastore_timespec")

local CLOCK_PROCESS_CPUTIME_ID = 2
-- The most CPU listing the histogram may take, checked every HIST_CHECK_EVERY values (one value's
-- search reads at most the whole array: 30 M entries with --timeout 30s, some milliseconds).
local HIST_CPU_MAX_US = 1000000
local HIST_CHECK_EVERY = 64

local function now_us(clock)
  ffi.C.clock_gettime(clock or CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000000 + math.floor(tonumber(timespec.tv_nsec) / 1000)
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = B64:sub(c1 + 1, c1 + 1) .. B64:sub(c2 + 1, c2 + 1)
      .. (b and B64:sub(c3 + 1, c3 + 1) or "=") .. (c and B64:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

-- Main state: the threads, so that done() can ask each for its unanswered request.
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

-- Thread state.
local kind, op, keys, value, bucket, log
local key_names = {}
local body_value
pending_start_us = -1

local function log_response(status, headers, body)
  local now = now_us()
  log:write(string.format("%d %d %d\n", now, now - pending_start_us, status))
  pending_start_us = -1
end

function init(args)
  kind, op, keys = args[1], args[2], tonumber(args[3])
  local value_bytes = tonumber(args[4])
  bucket = args[5]
  assert(kind == "dynastore" or kind == "etcd", "KIND must be dynastore or etcd")
  assert(op == "get" or op == "put", "OP must be get or put")
  assert(keys and keys >= 1 and value_bytes and value_bytes >= 1 and bucket, "KEYS VALUE_BYTES BUCKET")
  math.randomseed((thread_id or 0) * 7919 + now_us() % 1000003)
  -- A printable value, different per thread so that writes are not all byte-identical.
  local chars = {}
  for i = 1, value_bytes do
    chars[i] = string.char(97 + (i + (thread_id or 0)) % 26)
  end
  value = table.concat(chars)
  for i = 0, keys - 1 do
    local name = "k" .. i
    key_names[i + 1] = kind == "etcd" and base64(name) or name
  end
  if kind == "etcd" then
    body_value = base64(value)
  end
  if args[6] then
    log = assert(io.open(args[6] .. "/thread-" .. (thread_id or 0) .. ".log", "w"))
    -- Set only when logging: wrk keeps each response's headers and body for the script (CPU) only
    -- when the script has a response(), and it asks after init().
    response = log_response
  end
end

function request()
  local key = key_names[math.random(keys)]
  if log then
    -- wrk asks again without a response when its first write found the socket not ready yet (the
    -- request is then built anew and sent once), and after a connection broke (wrk reconnects; it
    -- counts that as a connect, read or write error, in its totals only): the request sent is the last.
    pending_start_us = now_us()
  end
  if kind == "dynastore" then
    local path = "/buckets/" .. bucket .. "/keys/" .. key
    if op == "get" then
      return wrk.format("GET", path)
    end
    return wrk.format("PUT", path, { ["Content-Type"] = "application/octet-stream" }, value)
  end
  if op == "get" then
    return wrk.format("POST", "/v3/kv/range", { ["Content-Type"] = "application/json" }, '{"key":"' .. key .. '"}')
  end
  return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" },
    '{"key":"' .. key .. '","value":"' .. body_value .. '"}')
end

function done(summary, latency, requests)
  local e = summary.errors
  local pending = {}
  for _, thread in ipairs(threads) do
    local started = thread:get("pending_start_us")
    if started and started >= 0 then
      pending[#pending + 1] = string.format("%d", started)
    end
  end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"mean":%.1f,"max":%d},' ..
    '"end_us":%d,"pending_start_us":[%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max, now_us(), table.concat(pending, ",")))
  local cpu_start_us = now_us(CLOCK_PROCESS_CPUTIME_ID)
  local distinct = #latency
  local parts = {}
  for i = 1, distinct do
    local us, count = latency(i)
    parts[i] = string.format("%d:%d", us, count)
    if i % HIST_CHECK_EVERY == 0 and now_us(CLOCK_PROCESS_CPUTIME_ID) - cpu_start_us > HIST_CPU_MAX_US then
      parts = nil
      break
    end
  end
  if parts and distinct > 0 then
    io.write(string.format("WRK_HIST %d %s\n", now_us(CLOCK_PROCESS_CPUTIME_ID) - cpu_start_us, table.concat(parts, " ")))
  else
    io.write(string.format("WRK_HIST skipped %d\n", now_us(CLOCK_PROCESS_CPUTIME_ID) - cpu_start_us))
  end
end
