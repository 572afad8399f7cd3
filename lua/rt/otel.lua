-- rt.otel: one OpenTelemetry span per request record, sent over OTLP/HTTP
-- (JSON encoding) to `otel.endpoint` by cpx.otlp's sender thread (batches,
-- off the event loop; a full queue drops spans and counts them).
local cpx = require("cpx")
local json = require("lib.json")
local record = require("rt.record")

local type = type
local tostring = tostring
local format = string.format
local gsub = string.gsub
local floor = math.floor
local otlp = cpx.otlp

local _M = {}

local function attr(list, key, v)
  if v == nil then return end
  local value
  if type(v) == "number" and v == floor(v) then
    value = { intValue = format("%d", v) }
  elseif type(v) == "boolean" then
    value = { boolValue = v }
  else
    value = { stringValue = tostring(v) }
  end
  list[#list + 1] = { key = key, value = value }
end

local function nanos(t) return format("%.0f", t * 1e9) end

-- The span of one record (OTLP JSON: ids in hex, times as strings).
function _M.span(rec)
  local trace = gsub(rec.id or cpx.uuid(), "-", "")
  if #trace ~= 32 or trace:find("[^%x]") then trace = cpx.sha256_hex(tostring(rec.id)):sub(1, 32) end
  local attrs = json.array()
  local u = rec.usage or {}
  attr(attrs, "http.request.method", rec.method)
  attr(attrs, "http.route", rec.endpoint)
  attr(attrs, "http.response.status_code", rec.status)
  attr(attrs, "gen_ai.request.model", rec.model)
  attr(attrs, "gen_ai.response.model", rec.upstream_model)
  attr(attrs, "gen_ai.provider.name", rec.provider)
  attr(attrs, "gen_ai.usage.input_tokens", u.input)
  attr(attrs, "gen_ai.usage.output_tokens", u.output)
  attr(attrs, "cliproxy.account", rec.account)
  attr(attrs, "cliproxy.client_key", rec.client_key)
  attr(attrs, "cliproxy.path", rec.path)
  attr(attrs, "cliproxy.stream", rec.stream)
  attr(attrs, "cliproxy.ttft_ms", rec.ttft_ms and floor(rec.ttft_ms + 0.5) or nil)
  attr(attrs, "cliproxy.request_id", rec.request_id)
  local t0 = rec.time or cpx.now()
  return {
    traceId = trace, spanId = trace:sub(1, 16),
    name = tostring(rec.method or "") .. " " .. tostring(rec.endpoint or ""),
    kind = 2, -- SPAN_KIND_SERVER
    startTimeUnixNano = nanos(t0), endTimeUnixNano = nanos(t0 + (rec.latency_ms or 0) / 1000),
    attributes = attrs,
    status = rec.failed and { code = 2, message = rec.error and tostring(rec.error) or nil } or { code = 1 },
  }
end

local function subscriber(rec)
  otlp.push(json.encode(_M.span(rec)))
end

function _M.configure(app)
  local o = app.config.otel
  local ep = type(o) == "table" and o.endpoint or ""
  if ep == "" then
    record.unsubscribe("otel")
    return true
  end
  local ok, err = otlp.open(ep, o["service-name"])
  if not ok then return nil, err end
  record.subscribe("otel", subscriber)
  return true
end

return _M
