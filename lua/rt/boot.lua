-- rt.boot: builds one generation: validates the config, loads and checks
-- every module, and returns { config, handle } to the C runtime.
local cpx = require("cpx")
local config = require("rt.config")
local registry = require("rt.registry")

local type = type
local ipairs = ipairs
local xpcall = xpcall
local tostring = tostring
local pairs = pairs
local next = next
local format = string.format

local _M = {}

local PROVIDERS = { "openai_compat", "claude", "gemini", "codex", "vertex", "gemini_cli", "antigravity", "qwen",
                    "iflow", "vertex_sa" }
local FORMATS = { openai_chat = true, openai_responses = true, claude = true, gemini = true }

-- A provider declares its contract as data; errors name file and field.
-- Every field the engine reads from a provider module is listed here, so a
-- typo or a wrong type fails the load instead of silently changing routing.
local PROVIDER_FIELDS = {
  { "name", "string", true },
  { "format", "format", true },
  { "prepare", "function", true },
  { "classify", "function" },
  { "fixup", "function" },
  { "raw_ok", "function" },
  { "raw_fixup", "function" },
  { "response_fixup", "function" },
  { "stream_fixup", "function" },
  { "error_status", "function" },
  { "admit", "function" },
  { "force_stream", "boolean" },
  { "fast_path", "boolean" },
  { "relay", "relay" },
  { "oauth", "table" },
}
local FORMAT_LIST = "openai_chat, openai_responses, claude, gemini"

-- A provider's `relay` declaration (rt.lane, docs/modules.md): nil or an
-- error naming the field.
local function is_strings(v)
  if type(v) ~= "table" then return false end
  for i, x in ipairs(v) do
    if type(x) ~= "string" or x == "" then return false, i end
  end
  return #v > 0 or next(v) == nil
end

local function check_relay(v)
  if type(v) ~= "table" then return "relay", "a table" end
  for k in pairs(v) do
    if k ~= "unless" and k ~= "require" and k ~= "at_most" and k ~= "headers" and k ~= "lua_headers"
        and k ~= "account" then
      return "relay." .. tostring(k), "one of unless, require, at_most, headers, lua_headers, account"
    end
  end
  if v.unless ~= nil then
    if type(v.unless) ~= "table" then return "relay.unless", "a list" end
    for i, u in ipairs(v.unless) do
      if not (type(u) == "string" and u ~= "") and not (is_strings(u) and #u > 0) then
        return "relay.unless[" .. i .. "]", "a member name or a list of member names"
      end
    end
  end
  if v.require ~= nil and not is_strings(v.require) then return "relay.require", "a list of member names" end
  if v.lua_headers ~= nil and not is_strings(v.lua_headers) then
    return "relay.lua_headers", "a list of header names"
  end
  if v.at_most ~= nil then
    if type(v.at_most) ~= "table" then return "relay.at_most", "a list" end
    for i, c in ipairs(v.at_most) do
      if type(c) ~= "table" or type(c[1]) ~= "string" or c[1] == "" or type(c[2]) ~= "number"
          or c[2] < 0 or c[2] % 1 ~= 0 then
        return "relay.at_most[" .. i .. "]", "{ text, count } with a non-empty text and a whole count"
      end
    end
  end
  if v.headers ~= nil then
    if type(v.headers) ~= "table" then return "relay.headers", "a list" end
    for i, h in ipairs(v.headers) do
      if type(h) ~= "table" or type(h[1]) ~= "string" or type(h[2]) ~= "string"
          or not h[1]:match("^[%w%-_]+$") or not h[2]:match("^[%w%-_]+$") then
        return "relay.headers[" .. i .. "]", "{ client-header, Upstream-Header } (header names)"
      end
      if h.list ~= nil and type(h.list) ~= "boolean" then
        return "relay.headers[" .. i .. "].list", "a boolean"
      end
    end
  end
  if v.account ~= nil and type(v.account) ~= "function" then return "relay.account", "a function" end
  return nil
end

local function check_provider(name, p)
  local file = "providers/" .. name .. ".lua"
  if type(p) ~= "table" then return nil, file .. ": module must return a table" end
  for _, f in ipairs(PROVIDER_FIELDS) do
    local key, want, required = f[1], f[2], f[3]
    local v = p[key]
    if want == "relay" then
      if v ~= nil then
        local field, what = check_relay(v)
        if field then return nil, format("%s: field '%s' must be %s", file, field, what) end
      end
    elseif want == "format" then
      if (v ~= nil or required) and not FORMATS[v] then
        return nil, format("%s: field '%s' must be one of %s", file, key, FORMAT_LIST)
      end
    elseif (v ~= nil or required) and type(v) ~= want then
      return nil, format("%s: field '%s' must be a %s, not a %s", file, key, want, type(v))
    end
  end
  return true
end
_M.check_provider = check_provider

-- Once per worker per generation, when it starts serving (the C runtime
-- calls it on the worker's loop, after a reload swapped the generation in):
-- starts the generation's background tasks. A middleware module may export
-- init_worker(conf) for its own. Errors are logged, never fatal.
function _M.init_worker(app)
  require("rt.refresh").init_worker(app)
  -- device logins (Qwen) started from the management API keep polling
  local okm, moauth = pcall(require, "rt.mgmt.oauth")
  if okm then
    local ok, err = xpcall(moauth.init_worker, cpx.traceback, app)
    if not ok then cpx.log("error", "rt.mgmt.oauth: init_worker: " .. tostring(err)) end
  end
  for _, en in ipairs(app.middleware.list or {}) do
    local fn = en.module.init_worker
    if fn then
      local ok, err = xpcall(fn, cpx.traceback, en.conf)
      if not ok then
        cpx.log("error", format("middleware/%s.lua: init_worker: %s", en.name, tostring(err)))
      end
    end
  end
end

function _M.start(doc, lines, path)
  local cfg, err = config.validate(doc, lines, path)
  if not cfg then return nil, err end
  for _, k in ipairs(cfg._unknown) do
    cpx.log("warn", format("%s: unknown key '%s' (ignored)", path, k))
  end
  local providers = {}
  for _, name in ipairs(PROVIDERS) do
    local p = require("providers." .. name)
    local ok, perr = check_provider(name, p)
    if not ok then return nil, perr end
    if p.oauth then
      local facts, ferr = require("rt.oauth").facts(p.oauth.type or name, cfg)
      if not facts then return nil, ferr end
    end
    providers[name] = p
  end
  local translators = require("translators")
  local pok, perr = pcall(translators.load_pairs)
  if not pok then return nil, tostring(perr) end
  for _, f in ipairs(translators.formats) do
    local c = translators.codecs[f]
    for _, fn in ipairs({ "decode_request", "encode_request", "decode_response", "encode_response",
                          "stream_decode", "stream_encode", "encode_error", "stream_error" }) do
      if type(c[fn]) ~= "function" then
        return nil, format("translators/%s.lua: field '%s' must be a function", f, fn)
      end
    end
  end
  local chain, merr = require("rt.middleware").load(cfg, lines)
  if not chain then return nil, merr end
  -- Decided once per generation: whether payload rules force the pipeline
  -- to decode same-format bodies.
  local app = { config = cfg, registry = registry.build(cfg), providers = providers, middleware = chain,
                payload_active = require("rt.payload").active(cfg.payload) }
  local server = require("rt.server")
  server.init(app)
  local mok, mgerr = require("rt.management").init(app)
  if not mok then return nil, mgerr end
  require("rt.lane").sync(app)
  -- The request record's subscribers (rt.record): usage store, metrics,
  -- traces, request logs, the access log.
  local record = require("rt.record")
  require("rt.usage").configure(app)
  require("rt.metrics").configure(app)
  require("rt.otel").configure(app)
  require("rt.reqlog").configure(app)
  require("rt.access_log").configure(app)
  local banner = require("rt.banner")
  local doctor = require("rt.doctor")
  return { config = cfg, handle = server.handle,
           lane_records = function(list) record.lane(app, list) end,
           init_worker = function() return _M.init_worker(app) end,
           banner = function(base_url) return banner.lines(app, base_url) end,
           doctor = function() return doctor.report(app, cpx.store.list(), cpx.now()) end }
end

return _M
