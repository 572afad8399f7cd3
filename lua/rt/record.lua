-- rt.record: one record per finished client request, on every path (the
-- Lua pipeline and the C fast lane), delivered to subscribers. Usage,
-- metrics and anything else that counts requests read it, so no path can
-- go uncounted.
--
-- Contract (docs/architecture.md, "The request record"):
--   record.subscribe(name, fn[, native])
--                                fn(rec) runs under pcall, must not yield;
--                                subscribing a name again replaces it.
--                                native names fn's C counterpart, which the
--                                C relay calls itself ("access_log",
--                                "metrics", "usage", or "reqlog_failed":
--                                fn only wants failed records): while every
--                                subscriber has one, a relayed request's
--                                record is never built in Lua
--   record.unsubscribe(name)
--   record.emit(rec)
--   rec = { id, time (epoch s, start), latency_ms, ttft_ms, method,
--           endpoint (path), client_format, stream, provider, account,
--           credential, model (as asked), upstream_model, alias,
--           client_key (a label, never the key), status, failed, error,
--           attempts, usage = {input, output, reasoning, cache_read,
--           cache_write}, tag, path ("lane" | "lua"), request_id, source
--           (account email or entry name, CLIProxyAPI's "source") }
--
-- Used by rt.server and rt.pipeline (the Lua path):
--   record.begin(info, client_format) -> rec   at the start of the handler
--   record.of(info) -> rec | nil
--   record.finish(rec, status, err)            once; later calls do nothing
-- and by the C lane (through rt.boot's app.lane_records): record.lane(app, list).
local cpx = require("cpx")
local json = require("lib.json")
local ir = require("lib.ir")

local type = type
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local error = error
local setmetatable = setmetatable
local floor = math.floor
local find = string.find
local json_member = cpx.json.member
local record_usage = cpx.record_usage
local log = cpx.log or function() end
local now = cpx.now
local monotonic = cpx.monotonic

local _M = {}

-- ---- subscribers ------------------------------------------------------------

local subs = {} -- ordered list of { name, fn, native }

local NATIVE = { access_log = true, metrics = true, usage = true, reqlog_failed = true }
local lane_records = cpx.lane and cpx.lane.records

-- Tells the C relay which subscribers it can feed itself (cpx.lane.records).
local function sync_native()
  if not lane_records then return end
  local m = { native = true }
  for _, s in ipairs(subs) do
    local k = s[3]
    if k == "reqlog_failed" then
      m.failed_to_lua = true
    elseif k then
      m[k] = true
    else
      m.native = false
    end
  end
  lane_records(m)
end

function _M.subscribe(name, fn, native)
  if type(name) ~= "string" or name == "" then error("record.subscribe: name must be a string", 2) end
  if type(fn) ~= "function" then error("record.subscribe: fn must be a function", 2) end
  if native ~= nil and not NATIVE[native] then
    error("record.subscribe: native must be access_log, metrics, usage or reqlog_failed", 2)
  end
  local found = false
  for _, s in ipairs(subs) do
    if s[1] == name then
      s[2], s[3] = fn, native
      found = true
      break
    end
  end
  if not found then subs[#subs + 1] = { name, fn, native } end
  sync_native()
end

function _M.unsubscribe(name)
  for i, s in ipairs(subs) do
    if s[1] == name then
      table.remove(subs, i)
      break
    end
  end
  sync_native()
end

function _M.emit(rec)
  for _, s in ipairs(subs) do
    local ok, err = pcall(s[2], rec)
    if not ok then log("error", "record subscriber " .. s[1] .. " failed: " .. tostring(err)) end
  end
end

-- ---- client key labels -----------------------------------------------------

-- A client key is never stored or logged: it is named by a digest prefix,
-- the same for the same key on every path and across restarts.
local label_cache = setmetatable({}, { __mode = "k" })
local function key_label(key)
  if type(key) ~= "string" or key == "" then return nil end
  local l = label_cache[key]
  if not l then
    l = "key-" .. cpx.sha256_hex(key):sub(1, 8)
    label_cache[key] = l
  end
  return l
end
_M.key_label = key_label

-- ---- usage out of upstream answers -------------------------------------------

local codecs -- translators.codecs, loaded on first use (the hub needs lib.ir)

local function raw_usage(fmt, d)
  if fmt == "gemini" then
    return d.usageMetadata or (type(d.response) == "table" and d.response.usageMetadata) or nil
  elseif fmt == "claude" then
    return d.usage or (type(d.message) == "table" and d.message.usage) or nil
  elseif fmt == "openai_responses" then
    return (type(d.response) == "table" and d.response.usage) or d.usage
  end
  return d.usage
end

-- The usage of one decoded answer or stream event of format fmt, merged
-- into `into` (later values win). Returns into (or a new table, or nil).
local function usage_of(fmt, d, into)
  if type(d) ~= "table" then return into end
  local u = raw_usage(fmt, d)
  if type(u) ~= "table" then return into end
  codecs = codecs or require("translators").codecs
  local c = codecs[fmt]
  if not c or not c.usage_in then return into end
  local ok, x = pcall(c.usage_in, u)
  if not ok or type(x) ~= "table" then return into end
  return ir.merge_usage(into, x)
end
_M.usage_of = usage_of

-- The usage in some bytes of a stream (its first and last few KiB, for
-- answers relayed without Lua): the events that are whole are read.
function _M.usage_from_stream(fmt, text)
  if type(text) ~= "string" or text == "" then return nil end
  local frames = cpx.sse.new(#text + 16):feed(text .. "\n\n")
  local into
  for _, ev in ipairs(frames or {}) do
    -- only the events that name a usage ("usage", "usageMetadata") are
    -- decoded: a chat stream's many chunks are not
    local d = ev.data
    if d and d:byte(1) == 123 and find(d, '"usage', 1, true) then -- '{'
      into = usage_of(fmt, json.decode(d), into)
    end
  end
  return into
end

-- A JSON body (non-stream answer) -> usage.
function _M.usage_from_body(fmt, text)
  if type(text) ~= "string" or text:byte(1) ~= 123 then return nil end
  return usage_of(fmt, json.decode(text), nil)
end

local KINDS = { "input", "output", "reasoning", "cache_read", "cache_write" }
local function norm_usage(u)
  local o = {}
  for _, k in ipairs(KINDS) do
    local v = type(u) == "table" and u[k] or nil
    o[k] = type(v) == "number" and v or 0
  end
  return o
end

-- ---- the Lua path ------------------------------------------------------------

-- info -> rec and req -> rec while the request runs. Weak keys alone do not
-- free these: LuaJIT has no ephemerons, and a rec holds its info (and req),
-- so an entry would keep its own key alive. finish() removes both entries.
local open = setmetatable({}, { __mode = "k" }) -- info -> rec

function _M.begin(info, client_format, key)
  local rec = {
    id = cpx.uuid(), request_id = info.id, time = now(), method = info.method, endpoint = info.path,
    client_format = client_format, stream = false, client_key = key_label(key), path = "lua",
    attempts = 0, _t0 = monotonic(), _info = info, -- _info: rt.reqlog's request section
  }
  open[info] = rec
  return rec
end

function _M.of(info)
  return info and open[info]
end

-- The request object's record (rt.http notes the body a client got).
local by_req = setmetatable({}, { __mode = "k" })
function _M.bind(req, rec)
  by_req[req] = rec
  rec._req = req
end
function _M.of_req(req)
  return by_req[req]
end

-- Milliseconds since the record began (for ttft_ms).
function _M.elapsed_ms(rec)
  return floor((monotonic() - rec._t0) * 1e6 + 0.5) / 1e3
end

function _M.finish(rec, status, err)
  if not rec or rec._done then return end
  rec._done = true
  if rec._info then open[rec._info] = nil end
  if rec._req then by_req[rec._req] = nil end
  rec.latency_ms = _M.elapsed_ms(rec)
  rec._t0 = nil
  status = type(status) == "number" and status or (err and 500 or 499)
  rec.status = status
  if err ~= nil and rec.error == nil then rec.error = tostring(err) end
  rec.failed = status >= 400 or rec.error ~= nil
  rec.usage = norm_usage(rec.usage)
  _M.emit(rec)
end

-- What a record says of the account a target names: provider, account,
-- credential (an OAuth account's file, else the config entry's name),
-- source (its email or the entry's name), upstream_model. rt.lane hands
-- the same fields to the C relay for its records.
function _M.target_fields(target)
  local e = type(target.entry) == "table" and target.entry or {}
  return { provider = target.provider, account = target.account, credential = e.file or target.owner,
           source = e.email or target.owner, upstream_model = target.upstream_model }
end

-- Copies what rt.pool and the pipeline learnt about the attempts.
function _M.note_target(rec, target, alias)
  if not rec or type(target) ~= "table" then return end
  local f = _M.target_fields(target)
  rec.provider, rec.account, rec.credential = f.provider, f.account, f.credential
  rec.source, rec.upstream_model = f.source, f.upstream_model
  if alias ~= nil then rec.alias = alias end
end

-- A JSON body, or only its end when it was long: the usage object is
-- there in OpenAI's, Claude's and Gemini's answers.
local function tail_usage(fmt, tail, whole)
  if type(tail) ~= "string" then return nil end
  local name = fmt == "gemini" and "usageMetadata" or "usage"
  -- a whole body: its top-level usage member alone is decoded (the rest
  -- of the answer is never looked at), else the whole body
  local obj = whole and json_member(tail, name) or nil
  if not obj then
    local u = whole and _M.usage_from_body(fmt, tail)
    if u then return u end
    obj = tail:match('"' .. name .. '"%s*:%s*(%b{})')
  end
  if obj and obj:byte(1) == 123 then
    return usage_of(fmt, { [name] = json.decode(obj) }, nil)
  end
  return nil
end

-- The usage in the first and last bytes the C relay sent of an answer
-- (gap: some between them were not kept), as cpx.record_usage reads it.
local function lane_usage(fmt, head, tail, gap, stream)
  if stream then
    -- (a blank line between the two ends: an event cut at the seam is
    -- not read as one)
    return _M.usage_from_stream(fmt, head .. (gap and "\n\n" or "") .. tail)
  elseif not gap then
    return tail_usage(fmt, head .. tail, true)
  end
  return tail_usage(fmt, tail, false)
end
_M.lane_usage = lane_usage

-- ---- the C lane ---------------------------------------------------------------

-- list: what cpx_lane.c collected for each request it served to the end:
-- { format, endpoint, model, member, key_index, status, time, latency_ms,
--   ttft_ms, stream, aborted, error, head, tail, gap }: head and tail are
-- the first and last bytes relayed (gap: some between them were not
-- kept). Called after the loop iteration, never from inside a response.
function _M.lane(app, list)
  local keys = app and app.config and app.config["api-keys"] or {}
  for _, l in ipairs(list) do
    local targets, alias = nil, nil
    if app and app.registry then targets, alias = app.registry:lookup(l.model) end
    local t = targets and targets[l.member] or nil
    local status = l.aborted and 499 or l.status
    local fmt = l.format or "openai_chat"
    local rec = {
      id = cpx.uuid(), request_id = l.request_id, time = l.time, latency_ms = l.latency_ms,
      ttft_ms = l.ttft_ms, method = "POST", endpoint = l.endpoint or "/v1/chat/completions",
      client_format = fmt, stream = l.stream == true, model = l.model,
      client_key = key_label(keys[l.key_index or 0]), status = status, attempts = 1, tag = "fast", kind = "inference",
      path = "lane",
    }
    _M.note_target(rec, t, alias ~= l.model and alias or nil)
    if l.aborted then
      rec.error = "client closed request"
    elseif l.error then
      rec.error = l.error
    end
    rec.failed = status >= 400 or rec.error ~= nil
    -- (the C relay's own reader when there is one: the same rule,
    -- spec/lua/rt/record_native_spec.lua compares them)
    local u = (record_usage or lane_usage)(fmt, l.head or "", l.tail or "", l.gap == true, l.stream == true)
    rec.usage = norm_usage(u)
    _M.emit(rec)
  end
end

-- For tests: the subscriber names, in order.
function _M.subscribers()
  local o = {}
  for i, s in ipairs(subs) do o[i] = s[1] end
  return o
end

return _M
