-- rt.usage: request records kept across restarts, and the queries on them.
--
-- A subscriber of rt.record hands each inference or counting record to the
-- process-wide store (cpx.usage, runtime/state/cpx_usage.c): a bounded queue and
-- one writer thread that appends batches to SQLite. Queries run in the
-- threadpool and yield the request (synchronously outside one).
--
--   usage.configure(app) -> true | nil, err   (rt.boot, every generation)
--   usage.enabled(cfg) -> bool
--   usage.summary{from, to, details} -> CLIProxyAPI's GET /usage document
--   usage.query{from, to, group_by} -> { group_by, rows = {...} }
--   usage.export{from, to} -> { version = 1, exported_at, usage = {...} }
--   usage.import(doc) -> { added, skipped, total_requests, failed_requests }
--   usage.stats() -> the queue's counters (submitted, written, dropped, ...)
local cpx = require("cpx")
local json = require("lib.json")
local record = require("rt.record")
local cooldown = require("lib.cooldown")

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local floor = math.floor
local format = string.format
local sort = table.sort
local usage_c = cpx.usage

local _M = {}

local GROUPS = { hour = true, day = true, model = true, account = true, client_key = true,
                 provider = true, endpoint = true, status = true }
_M.GROUPS = GROUPS
local EXPORT_MAX = 200000
local DETAILS_DEFAULT = 1000

-- ---- configuration -------------------------------------------------------------

function _M.enabled(cfg)
  local u = cfg.usage
  if type(u) == "table" and u.enabled ~= nil then return u.enabled == true end
  return cfg["usage-statistics-enabled"] == true
end

local function db_path(cfg)
  local p = type(cfg.usage) == "table" and cfg.usage.path or ""
  if p ~= "" then return p end
  local dir = cfg["auth-dir"] or "~/.cli-proxy-api"
  return dir:gsub("/+$", "") .. "/usage.db"
end

_M.db_path = db_path

local function subscriber(rec)
  if rec.kind ~= "inference" and rec.kind ~= "count" then return end
  usage_c.append(rec)
end
_M.subscriber = subscriber

function _M.configure(app)
  local cfg = app.config
  if not _M.enabled(cfg) then
    record.unsubscribe("usage")
    return true
  end
  local u = cfg.usage or {}
  local ok, err = usage_c.open({ path = db_path(cfg), retention_days = u["retention-days"],
                                 queue = u["queue-size"], batch = u["batch-size"],
                                 flush_ms = u["flush-interval-ms"] })
  if not ok then
    if err ~= "not a server worker" then cpx.log("warn", "usage: " .. tostring(err)) end
    return nil, err
  end
  record.subscribe("usage", subscriber, "usage")
  return true
end

function _M.stats()
  return usage_c.stats()
end

-- ---- times ---------------------------------------------------------------------

-- epoch seconds -> "2026-12-07T07:05:01.123Z" (milliseconds, UTC): lib.cooldown's
-- formatter with the fraction added.
local function rfc3339(t)
  local ms = floor(t * 1000 + 0.5)
  local whole = cooldown.format_rfc3339(floor(ms / 1000))
  return whole:sub(1, -2) .. format(".%03dZ", ms % 1000)
end
_M.rfc3339 = rfc3339

-- RFC 3339 (any fraction, Z or an offset) or epoch seconds -> epoch seconds.
local function parse_time(v)
  if type(v) == "number" then return v end
  if type(v) ~= "string" then return nil end
  if v:match("^%d+%.?%d*$") then return tonumber(v) end
  return cooldown.parse_rfc3339(v)
end
_M.parse_time = parse_time

-- ---- queries -------------------------------------------------------------------

local function total(u)
  return (u.input or 0) + (u.output or 0)
end

local function filter(opts)
  opts = opts or {}
  return { from = parse_time(opts.from), to = parse_time(opts.to) }
end

-- usage.query{from, to, group_by = "hour" | ... | "a,b"} -> result | nil, err
function _M.query(opts)
  opts = opts or {}
  local f = filter(opts)
  local dims = {}
  local g = opts.group_by
  if type(g) == "string" and g ~= "" then
    for d in g:gmatch("[^,%s]+") do
      if not GROUPS[d] then
        return nil, "group_by must be one of hour, day, model, account, client_key, provider, endpoint, status"
      end
      dims[#dims + 1] = d
    end
  elseif type(g) == "table" then
    for _, d in ipairs(g) do
      if not GROUPS[d] then return nil, "unknown group_by " .. tostring(d) end
      dims[#dims + 1] = d
    end
  end
  if #dims > 3 then return nil, "group_by takes at most 3 fields" end
  f.group_by = dims
  local rows, err = usage_c.aggregate(f)
  if not rows then return nil, err end
  local out = json.array()
  for i, r in ipairs(rows) do
    local row = { requests = r.requests, success = r.success, failure = r.failure,
                  tokens = { input = r.input, output = r.output, reasoning = r.reasoning,
                             cache_read = r.cache_read, cache_write = r.cache_write, total = total(r) },
                  latency_ms_avg = r.requests > 0 and floor(r.latency_ms_sum / r.requests * 1000 + 0.5) / 1000 or 0 }
    for _, d in ipairs(dims) do row[d] = r[d] end
    out[i] = row
  end
  return { from = f.from and rfc3339(f.from) or json.null, to = f.to and rfc3339(f.to) or json.null,
           group_by = json.array(dims), rows = out }
end

local function tokens_of(u)
  return { input_tokens = u.input or 0, output_tokens = u.output or 0, reasoning_tokens = u.reasoning or 0,
           cached_tokens = u.cache_read or 0, cache_write_tokens = u.cache_write or 0, total_tokens = total(u) }
end

local OPTIONAL = { "id", "ttft_ms", "status", "provider", "endpoint", "method", "client_format", "upstream_model",
                   "alias", "credential", "error", "attempts", "tag", "path", "stream" }

-- One stored record as a CLIProxyAPI detail (its fields, then ours).
local function detail(r)
  local d = { timestamp = rfc3339(r.time), time = r.time, latency_ms = r.latency_ms or 0,
              source = r.source or "", auth_index = r.account or "", tokens = tokens_of(r.usage or {}),
              failed = r.failed == true }
  for _, k in ipairs(OPTIONAL) do
    if r[k] ~= nil then d[k] = r[k] end
  end
  return d
end

local function api_name(k) return (k == nil or k == "") and "unknown" or k end

-- CLIProxyAPI's GET /usage document (fact sheet 6), from the store:
-- totals and the apis -> models tree are exact sums; `details` lists the
-- newest opts.details records (default 1000; CLIProxyAPI kept all of them
-- in memory, which grew without bound).
function _M.summary(opts)
  opts = opts or {}
  local f = filter(opts)
  local limit = tonumber(opts.details) or DETAILS_DEFAULT
  local function agg(dims)
    return usage_c.aggregate({ from = f.from, to = f.to, group_by = dims })
  end
  local totals, err = agg({})
  if not totals then return nil, err end
  local t = totals[1] or { requests = 0, success = 0, failure = 0 }
  local tree = agg({ "client_key", "model" })
  local by_day = agg({ "day" })
  local by_hour = agg({ "hour_of_day" })
  if not (tree and by_day and by_hour) then return nil, "usage query failed" end
  local apis = {}
  for _, g in ipairs(tree) do
    local name = api_name(g.client_key)
    local a = apis[name]
    if not a then
      a = { total_requests = 0, total_tokens = 0, models = {} }
      apis[name] = a
    end
    a.total_requests = a.total_requests + g.requests
    a.total_tokens = a.total_tokens + total(g)
    a.models[api_name(g.model)] = { total_requests = g.requests, total_tokens = total(g), details = json.array() }
  end
  local recs = {}
  if limit > 0 then
    recs = usage_c.query({ from = f.from, to = f.to, limit = limit, newest = true }) or {}
  end
  -- oldest first inside each model, as CLIProxyAPI appended them
  for i = #recs, 1, -1 do
    local r = recs[i]
    local a = apis[api_name(r.client_key)]
    local m = a and a.models[api_name(r.model)]
    if m then m.details[#m.details + 1] = detail(r) end
  end
  local rd, rh, td, th = {}, {}, {}, {}
  for _, g in ipairs(by_day) do
    rd[g.day] = g.requests
    td[g.day] = total(g)
  end
  for _, g in ipairs(by_hour) do
    rh[g.hour_of_day] = g.requests
    th[g.hour_of_day] = total(g)
  end
  return {
    usage = { total_requests = t.requests, success_count = t.success, failure_count = t.failure,
              total_tokens = totals[1] and total(t) or 0, apis = apis,
              requests_by_day = rd, requests_by_hour = rh, tokens_by_day = td, tokens_by_hour = th },
    failed_requests = t.failure,
  }
end

-- Every record in the range, as CLIProxyAPI's export (each detail carries
-- cliproxy's fields too, so an import gives back the same records).
function _M.export(opts)
  opts = opts or {}
  local s, err = _M.summary({ from = opts.from, to = opts.to, details = EXPORT_MAX })
  if not s then return nil, err end
  return { version = 1, exported_at = rfc3339(cpx.now()), usage = s.usage }
end

-- A stable id for a detail that has none (a CLIProxyAPI export): the same
-- detail always gets the same id, so importing twice adds nothing.
local function derived_id(api, model, d)
  local tk = type(d.tokens) == "table" and d.tokens or {}
  return "imp-" .. cpx.sha256_hex(table.concat({ api, model, tostring(d.timestamp), tostring(d.source),
    tostring(d.auth_index), tostring(tk.input_tokens), tostring(tk.output_tokens), tostring(tk.total_tokens),
    tostring(d.failed), tostring(d.latency_ms) }, "\0")):sub(1, 32)
end

local function num(v) return type(v) == "number" and v or nil end
local function str(v) return type(v) == "string" and v or nil end

local function record_of(api, model, d)
  local t = num(d.time) or parse_time(d.timestamp)
  if not t then return nil end
  local tk = type(d.tokens) == "table" and d.tokens or {}
  local rec = {
    id = str(d.id) or derived_id(api, model, d), time = t, latency_ms = num(d.latency_ms),
    ttft_ms = num(d.ttft_ms), model = model ~= "unknown" and model or nil,
    client_key = api ~= "unknown" and api or nil, source = str(d.source) ~= "" and d.source or nil,
    account = str(d.auth_index) ~= "" and d.auth_index or nil, failed = d.failed == true,
    status = num(d.status), attempts = num(d.attempts), stream = d.stream == true and true or nil,
    usage = { input = num(tk.input_tokens), output = num(tk.output_tokens), reasoning = num(tk.reasoning_tokens),
              cache_read = num(tk.cached_tokens), cache_write = num(tk.cache_write_tokens) },
  }
  for _, k in ipairs({ "provider", "endpoint", "method", "client_format", "upstream_model", "alias",
                       "credential", "error", "tag", "path" }) do
    rec[k] = str(d[k])
  end
  if d.stream == false then rec.stream = false end
  return rec
end

-- POST /usage/import: CLIProxyAPI's export shape (or ours); merged by id.
function _M.import(doc)
  if type(doc) ~= "table" then return nil, "expected a JSON object" end
  local u = type(doc.usage) == "table" and doc.usage or doc
  if type(u.apis) ~= "table" then return nil, "usage.apis is missing" end
  local recs, failed = {}, 0
  for api, a in pairs(u.apis) do
    local models = type(a) == "table" and a.models
    if type(models) == "table" then
      for model, m in pairs(models) do
        for _, d in ipairs(type(m) == "table" and type(m.details) == "table" and m.details or {}) do
          local r = type(d) == "table" and record_of(tostring(api), tostring(model), d) or nil
          if r then
            recs[#recs + 1] = r
            if r.failed then failed = failed + 1 end
          end
        end
      end
    end
  end
  if #recs > EXPORT_MAX then return nil, "at most " .. EXPORT_MAX .. " records per import" end
  sort(recs, function(x, y) return x.time < y.time end)
  local added, err = usage_c.import(recs)
  if not added then return nil, err end
  return { added = added, skipped = #recs - added, total_requests = #recs, failed_requests = failed }
end

return _M
