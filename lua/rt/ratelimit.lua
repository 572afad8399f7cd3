-- rt.ratelimit: a sliding-window request limiter shared by the workers
-- (cpx.shared holds each key's recent request times; cpx.lock makes the
-- read-modify-write of one key atomic across workers). Providers with a
-- client-side limit (Qwen: 60 requests a minute per account) call take()
-- before they send.
local cpx = require("cpx")

local type = type
local tonumber = tonumber
local ipairs = ipairs
local concat = table.concat
local ceil = math.ceil
local floor = math.floor
local gmatch = string.gmatch
local format = string.format

local _M = {}

local PREFIX = "ratelimit:"
-- Bounded: a window keeps at most this many times whatever the limit says
-- (cpx.shared values are at most 64 KiB).
local MAX_LIMIT = 1000
_M.MAX_LIMIT = MAX_LIMIT

local local_store = {}
local shared = cpx.shared or {
  get = function(k) return local_store[k] end,
  set = function(k, v) local_store[k] = v; return true end,
}

local function now()
  return cpx.now and cpx.now() or os.time()
end

-- key, limit (requests), window (seconds) -> true | false, seconds to wait
-- until the oldest request in the window leaves it (at least 1).
function _M.take(key, limit, window)
  if type(key) ~= "string" or type(limit) ~= "number" or type(window) ~= "number" then
    error("rt.ratelimit.take(key, limit, window): bad arguments", 2)
  end
  if limit > MAX_LIMIT then limit = MAX_LIMIT end
  local lk
  if cpx.lock then lk = cpx.lock(PREFIX .. key, { timeout = 5 }) end
  -- ms resolution, as stored
  local t = floor(now() * 1000) / 1000
  local from = t - window
  local kept = {}
  for s in gmatch(shared.get(PREFIX .. key) or "", "[^,]+") do
    local v = tonumber(s)
    if v and v > from and v <= t + window then kept[#kept + 1] = v end
  end
  local ok, wait = true, nil
  if #kept >= limit then
    ok = false
    wait = ceil(kept[#kept - limit + 1] + window - t)
    if wait < 1 then wait = 1 end
  else
    kept[#kept + 1] = t
    local parts = {}
    for i, v in ipairs(kept) do parts[i] = format("%.3f", v) end
    shared.set(PREFIX .. key, concat(parts, ","))
  end
  if lk then lk:release() end
  return ok, wait
end

-- How many requests `key` has in the window now (for the management view
-- and the specs).
function _M.count(key, window)
  local t, n = now(), 0
  for s in gmatch(shared.get(PREFIX .. key) or "", "[^,]+") do
    local v = tonumber(s)
    if v and v > t - window then n = n + 1 end
  end
  return n
end

return _M
