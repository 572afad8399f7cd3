-- lib.cooldown: what an upstream answer means for the account that gave it.
--
-- classify(status, headers, body, hint) -> action, kind, hint_seconds
--   action: "success" | "retry" (try another account) | "fatal" (answer now)
--   kind:   the pool's cooldown kind: "ok" | "quota" | "auth" | "not_found" |
--           "transient" | "neutral" (no change: the request's own fault) |
--           "overloaded" (529, or 503 saying so: the provider is, not the
--           account; no cooldown, see rt.pool)
--   hint_seconds: the upstream's own reset time, when it gave one
--
-- The reset-hint parsers read each upstream's signals (fact sheet 5.3,
-- limits sheet 3.1): Retry-After / retry-after-ms, Anthropic
-- anthropic-ratelimit-*-reset (RFC 3339) and -unified-reset (epoch),
-- OpenAI x-ratelimit-reset-* (durations like "6m0s"), Gemini
-- RetryInfo.retryDelay ("57.2s", a PerDay quota waits for the daily reset),
-- Codex resets_at / resets_in_seconds and x-codex-*-reset-* headers.
local cpx = require("cpx")
local json = require("lib.json")

local type = type
local ipairs = ipairs
local tonumber = tonumber
local floor = math.floor
local max = math.max
local lower = string.lower

local _M = {}

-- Seconds since the epoch; replaceable in specs.
_M.now = cpx.now

-- ---- time parsing ---------------------------------------------------------

-- Days from 1970-01-01 to y-m-d (proleptic Gregorian).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- RFC 3339 ("2026-01-02T03:04:05.123Z", "+01:00" offsets) -> epoch seconds.
function _M.parse_rfc3339(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)-(%d%d)-(%d%d)[Tt ](%d%d):(%d%d):(%d%d%.?%d*)(.*)$")
  if not y then return nil end
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
    + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
  if rest == "" or rest == "Z" or rest == "z" then return t end
  local sign, oh, om = rest:match("^([+-])(%d%d):?(%d%d)$")
  if not sign then return nil end
  local off = tonumber(oh) * 3600 + tonumber(om) * 60
  return sign == "+" and t - off or t + off
end

-- Epoch seconds -> "2026-01-02T03:04:05Z" (whole seconds, UTC).
function _M.format_rfc3339(t)
  t = floor(t)
  local z = floor(t / 86400)
  local s = t - z * 86400
  -- the inverse of days_from_civil
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format("%04d-%02d-%02dT%02d:%02d:%02dZ", y, m, d, floor(s / 3600), floor(s % 3600 / 60), s % 60)
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6,
                 jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 }

-- IMF-fixdate ("Wed, 21 Oct 2015 07:28:00 GMT") -> epoch seconds.
function _M.parse_http_date(s)
  if type(s) ~= "string" then return nil end
  local d, mon, y, h, mi, sec = s:match("^%a+, (%d%d?) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  local m = mon and MONTHS[lower(mon)]
  if not m then return nil end
  return days_from_civil(tonumber(y), m, tonumber(d)) * 86400 + tonumber(h) * 3600
    + tonumber(mi) * 60 + tonumber(sec)
end

local UNITS = { h = 3600, m = 60, s = 1, ms = 0.001, us = 0.000001, ["µs"] = 0.000001, ns = 1e-9 }

-- Go-style durations ("1s", "6m0s", "1h2m3.5s", "20ms") and bare or
-- protobuf ("57.238747106s") seconds -> seconds.
function _M.parse_duration(s)
  if type(s) == "number" then return s end
  if type(s) ~= "string" or s == "" then return nil end
  local n = tonumber(s)
  if n then return n end
  local total, pos = 0, 1
  while pos <= #s do
    local num, unit, nxt = s:match("^(%d+%.?%d*)(%a+)()", pos)
    if not num then
      num, unit, nxt = s:match("^(%d+%.?%d*)(µs)()", pos)
    end
    if not num or not UNITS[unit] then return nil end
    total = total + tonumber(num) * UNITS[unit]
    pos = nxt
  end
  return total
end

-- Go's Duration.String() for whole seconds: "1m2s", "1h0m0s", "0s".
function _M.go_duration(secs)
  secs = floor(secs + 0.5)
  if secs <= 0 then return "0s" end
  local h = floor(secs / 3600)
  local m = floor((secs % 3600) / 60)
  local s = secs % 60
  if h > 0 then return h .. "h" .. m .. "m" .. s .. "s" end
  if m > 0 then return m .. "m" .. s .. "s" end
  return s .. "s"
end

-- ---- hints ------------------------------------------------------------------

local function positive(x)
  if x and x > 0 then return x end
  return nil
end

-- Retry-After (seconds or HTTP date) and retry-after-ms.
function _M.retry_after(h)
  if not h then return nil end
  local ms = tonumber(h["retry-after-ms"])
  if ms and ms > 0 then return ms / 1000 end
  local v = h["retry-after"]
  if not v then return nil end
  local n = tonumber(v)
  if n then return positive(n) end
  local t = _M.parse_http_date(v)
  return t and positive(t - _M.now()) or nil
end

-- Anthropic: the reset of an exhausted limit (remaining 0), else the
-- latest one given; the subscription windows' unified reset is epoch s.
function _M.anthropic_reset(h)
  if not h then return nil end
  local best, any
  for _, dim in ipairs({ "requests", "tokens", "input-tokens", "output-tokens" }) do
    local t = _M.parse_rfc3339(h["anthropic-ratelimit-" .. dim .. "-reset"])
    if t then
      local wait = t - _M.now()
      any = max(any or 0, wait)
      if h["anthropic-ratelimit-" .. dim .. "-remaining"] == "0" then best = max(best or 0, wait) end
    end
  end
  local unified = h["anthropic-ratelimit-unified-reset"]
  if unified then
    local t = tonumber(unified) or _M.parse_rfc3339(unified)
    if t then any = max(any or 0, t - _M.now()) end
  end
  return positive(best or any)
end

-- OpenAI: x-ratelimit-reset-{requests,tokens}; the exhausted one first.
function _M.openai_reset(h)
  if not h then return nil end
  local best, any
  for _, dim in ipairs({ "requests", "tokens" }) do
    local d = _M.parse_duration(h["x-ratelimit-reset-" .. dim])
    if d then
      any = max(any or 0, d)
      if h["x-ratelimit-remaining-" .. dim] == "0" then best = max(best or 0, d) end
    end
  end
  return positive(best or any)
end

local function decode(body)
  if type(body) == "table" then return body end
  if type(body) ~= "string" or body == "" then return nil end
  local t = json.decode(body)
  return type(t) == "table" and t or nil
end
_M.decode = decode

-- Seconds to the next midnight in Pacific time (Gemini's daily quotas
-- reset then); a fixed UTC-8 is at most an hour late in summer.
local function to_pacific_midnight()
  local now = _M.now()
  local local_s = now - 8 * 3600
  return 86400 - (local_s % 86400)
end

-- Gemini: RetryInfo.retryDelay; a PerDay QuotaFailure waits for the reset.
function _M.gemini_reset(body)
  local t = decode(body)
  -- Gemini answers an object; its streaming endpoints an array of them.
  local err = t and (t.error or (type(t[1]) == "table" and t[1].error))
  if type(err) ~= "table" or type(err.details) ~= "table" then return nil end
  local delay, daily
  for _, d in ipairs(err.details) do
    if type(d) == "table" then
      local kind = type(d["@type"]) == "string" and d["@type"] or ""
      if kind:find("RetryInfo", 1, true) then
        delay = _M.parse_duration(d.retryDelay)
      elseif kind:find("QuotaFailure", 1, true) and type(d.violations) == "table" then
        for _, v in ipairs(d.violations) do
          if type(v) == "table" and type(v.quotaId) == "string" and v.quotaId:find("PerDay", 1, true) then
            daily = true
          end
        end
      end
    end
  end
  if daily then return to_pacific_midnight() end
  return positive(delay)
end

-- Codex (ChatGPT backend): resets_at (epoch s) / resets_in_seconds in the
-- body, x-codex-primary-reset-at / -reset-after-seconds in the headers.
function _M.codex_reset(h, body)
  local t = decode(body)
  local err = t and t.error
  if type(err) == "table" then
    local at = tonumber(err.resets_at)
    if at then return positive(at - _M.now()) end
    local inn = tonumber(err.resets_in_seconds)
    if inn then return positive(inn) end
  end
  local used = h and tonumber(h["x-codex-primary-used-percent"])
  if used and used >= 100 then
    local at = tonumber(h["x-codex-primary-reset-at"])
    if at then return positive(at - _M.now()) end
    local after = tonumber(h["x-codex-primary-reset-after-seconds"])
    if after then return positive(after) end
  end
  return nil
end

-- ---- classification ---------------------------------------------------------

-- "model not supported" in any of the upstreams' words.
local NOT_SUPPORTED = { "model_not_found", "model not found", "not supported", "does not exist",
                        "unsupported model", "no such model", "not_found_error" }

local OVERLOADED = { "overloaded" }

local function mentions(body, list)
  if type(body) ~= "string" or body == "" then return false end
  local b = lower(body:sub(1, 4096))
  for _, w in ipairs(list) do
    if b:find(w, 1, true) then return true end
  end
  return false
end

-- The default rules (the issue's list). hint: a provider's own reset time.
function _M.classify(status, headers, body, hint)
  if status == nil then return "retry", "transient", nil end -- network error
  if status < 400 then return "success", "ok" end
  hint = hint or _M.retry_after(headers)
  if status == 429 then return "retry", "quota", hint end
  if status == 401 or status == 402 or status == 403 then return "retry", "auth", hint end
  if status == 404 then return "retry", "not_found" end
  if status == 400 then
    if mentions(body, NOT_SUPPORTED) then return "retry", "not_found" end
    return "fatal", "neutral"
  end
  -- Overload is the provider's, not the account's (limits §3.1): no
  -- cooldown; rt.pool moves on to other providers only.
  if status == 529 or (status == 503 and mentions(body, OVERLOADED)) then return "retry", "overloaded" end
  if status == 408 or status >= 500 then return "retry", "transient", hint end
  return "fatal", "neutral" -- 413, 422 and the rest: the request's own fault
end

-- The pool's cooldown kinds (cpx.pool.report).
_M.KINDS = { ok = true, quota = true, auth = true, not_found = true, transient = true, neutral = true,
             overloaded = true } -- overloaded: reported to the pool as neutral

return _M
