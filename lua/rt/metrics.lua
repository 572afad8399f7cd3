-- rt.metrics: GET /metrics in Prometheus text format (off unless
-- `metrics.enabled`; `metrics.key` makes it ask for that key as
-- Authorization: Bearer). The counters live in C (cpx.metrics, process-wide)
-- and are fed by an rt.record subscriber; account states are read from the
-- pool when the page is asked for.
local cpx = require("cpx")
local record = require("rt.record")
local access = require("rt.access")

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local concat = table.concat
local sort = table.sort
local format = string.format
local gsub = string.gsub
local metrics_c = cpx.metrics

local _M = {}

function _M.configure(app)
  -- Counting costs one C call per request; it runs whether or not the page
  -- is served, so turning the page on shows the whole history.
  record.subscribe("metrics", metrics_c.observe, "metrics")
  return app
end

local function esc(v)
  return (gsub(tostring(v), '[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- Every (account, upstream model) pair the registry serves.
local function account_lines(app)
  local reg = app.registry
  if not reg then return "" end
  local seen, state = {}, {}
  local cool = {}
  for _, m in ipairs(reg:list()) do
    local targets = reg:lookup(m.id) or {}
    for _, t in ipairs(targets) do
      local key = t.account .. "\0" .. t.upstream_model
      if not seen[key] then
        seen[key] = true
        local st = cpx.pool.state(t.account, t.upstream_model)
        local s = state[t.account] or { provider = t.provider, cooling = false }
        state[t.account] = s
        if st and st.remaining and st.remaining > 0 then
          s.cooling = true
          cool[#cool + 1] = format('cliproxy_account_cooldown_seconds{account="%s",model="%s"} %.3f',
            esc(t.account), esc(t.upstream_model), st.remaining)
        end
      end
    end
  end
  local names = {}
  for a in pairs(state) do names[#names + 1] = a end
  sort(names)
  local out = {
    "# HELP cliproxy_account_state 1 for the state each account is in (ok, cooling, disabled).",
    "# TYPE cliproxy_account_state gauge",
  }
  for _, a in ipairs(names) do
    local s = state[a]
    local now = s.cooling and "cooling" or "ok"
    for _, k in ipairs({ "ok", "cooling", "disabled" }) do
      out[#out + 1] = format('cliproxy_account_state{account="%s",provider="%s",state="%s"} %d',
        esc(a), esc(s.provider), k, k == now and 1 or 0)
    end
  end
  for _, f in ipairs(reg.disabled or {}) do
    out[#out + 1] = format('cliproxy_account_state{account="%s",provider="",state="disabled"} 1', esc(f))
  end
  out[#out + 1] = "# HELP cliproxy_account_cooldown_seconds Seconds until an account reopens for a model."
  out[#out + 1] = "# TYPE cliproxy_account_cooldown_seconds gauge"
  sort(cool)
  for _, l in ipairs(cool) do out[#out + 1] = l end
  return concat(out, "\n") .. "\n"
end

-- OAuth accounts whose refresh fails (rt.refresh.state): 1 for each
-- credential file that needs a new login or has failed its last refresh.
local function refresh_lines(app)
  local ok, refresh = pcall(require, "rt.refresh")
  local st = ok and type(refresh.state) == "function" and refresh.state(app.config) or {}
  local files = {}
  for f in pairs(st) do files[#files + 1] = f end
  sort(files)
  local out = {
    "# HELP cliproxy_account_refresh_failing 1 when an OAuth account's last refresh failed or it needs a login.",
    "# TYPE cliproxy_account_refresh_failing gauge",
  }
  for _, f in ipairs(files) do
    local e = st[f]
    local failing = e.needs_login or (e.failures or 0) > 0
    out[#out + 1] = format('cliproxy_account_refresh_failing{account="%s",provider="%s"} %d', esc(f),
      esc(e.type or ""), failing and 1 or 0)
  end
  return concat(out, "\n") .. "\n"
end

local function otel_lines()
  local st = cpx.otlp and cpx.otlp.stats() or {}
  return format("# HELP cliproxy_otel_spans_total Spans by what the OTLP sender did with them.\n"
    .. "# TYPE cliproxy_otel_spans_total counter\n"
    .. 'cliproxy_otel_spans_total{result="sent"} %d\ncliproxy_otel_spans_total{result="dropped"} %d\n'
    .. 'cliproxy_otel_spans_total{result="failed"} %d\n', st.sent or 0, st.dropped or 0, st.failed or 0)
end

function _M.render(app)
  return metrics_c.render() .. account_lines(app) .. refresh_lines(app) .. otel_lines()
end

-- The route: 404 when off (as if absent), 401 without the configured key.
function _M.handle(app, req, info)
  local m = app.config.metrics or {}
  local json_headers = { ["Content-Type"] = "application/json" }
  if m.enabled ~= true then
    return req:respond(404, json_headers, '{"error":"not found"}')
  end
  if type(m.key) == "string" and m.key ~= "" then
    local ok = access.check({ m.key }, info)
    if not ok then
      return req:respond(401, { ["Content-Type"] = "application/json", ["WWW-Authenticate"] = "Bearer" },
        '{"error":"missing or invalid metrics key"}')
    end
  end
  return req:respond(200, { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8" }, _M.render(app))
end

return _M
