-- rt.mgmt.config: the whole config (JSON and raw YAML) and the scalar
-- settings, in CLIProxyAPI v6's shapes:
--   GET /config                      the config as JSON
--   GET /config.yaml                 the file as it is
--   PUT /config.yaml                 replace it (validated like a file load)
--   GET/PUT/PATCH /<setting>         {"<name>": value} / {"value": X} -> {"status":"ok"}
-- Writes go through rt.management.edit_config: atomic, the rest of the file
-- byte-identical, then the file watcher's reload applies them.
local json = require("lib.json")

local cpx = require("cpx")

local type = type
local pairs = pairs
local getmetatable = getmetatable
local setmetatable = setmetatable
local ipairs = ipairs
local floor = math.floor

local _M = { name = "config" }

-- Returns a JSON-ready copy without the runtime's own fields and without
-- the management secret (CLIProxyAPI does not hand out its hash either).
local function public(v)
  if type(v) ~= "table" then return v end
  local o = {}
  for k, x in pairs(v) do
    if type(k) ~= "string" or k:sub(1, 1) ~= "_" then o[k] = public(x) end
  end
  return setmetatable(o, getmetatable(v))
end

local function get_config(req, ctx)
  local cfg = ctx.mgmt.current()
  local out = public(cfg)
  if out["remote-management"] then out["remote-management"]["secret-key"] = nil end
  for _, e in ipairs(out["openai-compatibility"] or {}) do e.index = nil end
  return 200, out
end

local function get_yaml(req, ctx)
  local text, err = cpx.mgmt.read_file(ctx.mgmt.config_path())
  if not text then return 500, ctx.mgmt.err("read_failed", err) end
  return 200, text, { ["Content-Type"] = "application/yaml; charset=utf-8", ["X-Content-Type-Options"] = "nosniff" }
end

local function put_yaml(req, ctx)
  local m = ctx.mgmt
  local text = req.body or ""
  local cfg, kind, msg = m.validate_text(text)
  if not cfg then return kind == "invalid_yaml" and 400 or 422, m.err(kind, msg) end
  -- Written as sent, so its comments stay; whatever the file held before
  -- is replaced (no compare-and-swap: the client sent the whole file).
  local ok, status, body = m.edit_config(function() return text end)
  if not ok then return status, body end
  return 200, { ok = true, changed = json.array({ "config" }) }
end

-- route, key path in config.yaml, type, default when absent
local SCALARS = {
  { "/debug", { "debug" }, "boolean" },
  { "/logging-to-file", { "logging-to-file" }, "boolean" },
  { "/logs-max-total-size-mb", { "logs-max-total-size-mb" }, "integer" },
  { "/error-logs-max-files", { "error-logs-max-files" }, "integer" },
  { "/usage-statistics-enabled", { "usage-statistics-enabled" }, "boolean" },
  { "/proxy-url", { "proxy-url" }, "string", delete = true },
  { "/quota-exceeded/switch-project", { "quota-exceeded", "switch-project" }, "boolean", default = false },
  { "/quota-exceeded/switch-preview-model", { "quota-exceeded", "switch-preview-model" }, "boolean",
    default = false },
  { "/request-log", { "request-log" }, "boolean" },
  { "/ws-auth", { "ws-auth" }, "boolean" },
  { "/request-retry", { "request-retry" }, "integer" },
  { "/max-retry-interval", { "max-retry-interval" }, "integer" },
  { "/max-retry-credentials", { "max-retry-credentials" }, "integer" },
  { "/force-model-prefix", { "force-model-prefix" }, "boolean" },
  { "/routing/strategy", { "routing", "strategy" }, "string" },
}
_M.SCALARS = SCALARS

local function value_at(cfg, path)
  local v = cfg
  for _, k in ipairs(path) do
    if type(v) ~= "table" then return nil end
    v = v[k]
  end
  return v
end

local function type_ok(want, v)
  if want == "integer" then return type(v) == "number" and v == floor(v) end
  return type(v) == want
end

local routes = {
  { method = "GET", path = "/config", handler = get_config },
  { method = "GET", path = "/config.yaml", handler = get_yaml },
  { method = "PUT", path = "/config.yaml", handler = put_yaml },
}

for _, s in ipairs(SCALARS) do
  local route, path, want = s[1], s[2], s[3]
  local name = path[#path]
  local default = s.default
  routes[#routes + 1] = { method = "GET", path = route, handler = function(req, ctx)
    local v = value_at(ctx.mgmt.current(), path)
    if v == nil then v = default end
    if v == nil then v = json.null end
    return 200, { [name] = v }
  end }
  local function update(req, ctx)
    local m = ctx.mgmt
    local body = json.decode(req.body or "")
    if type(body) ~= "table" or not type_ok(want, body.value) then
      return 400, m.err("invalid body")
    end
    return m.saved(m.set_key(path, body.value))
  end
  routes[#routes + 1] = { method = "PUT", path = route, handler = update }
  routes[#routes + 1] = { method = "PATCH", path = route, handler = update }
  if s.delete then
    routes[#routes + 1] = { method = "DELETE", path = route, handler = function(req, ctx)
      return ctx.mgmt.saved(ctx.mgmt.set_key(path, ""))
    end }
  end
end

_M.routes = routes

return _M
