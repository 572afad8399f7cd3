-- rt.lane: what the C fast path (runtime/net/cpx_lane.c) may serve without
-- entering Lua, compiled once per generation into a route table.
--
-- The fast path takes POST /v1/chat/completions (no query string) for a
-- model name whose every account is an OpenAI-compatible upstream on http
-- or https without a proxy (https through cpx_h1's TLS, checked against
-- upstream-ca-file or the system store), provided nothing would look at the request on its
-- way: no middleware hook, no payload rule for that model, no session
-- affinity, no stream or non-stream keep-alives, and `fast-path` not turned
-- off. It does what
-- rt.pipeline's passthrough does (the model rewritten, the body otherwise
-- untouched, the answer relayed), and hands every failure before the first
-- byte back to rt.server with the attempt attached (info.lane), so retries,
-- cooldowns and error answers stay Lua's.
--
-- A provider opts in with `fast_path = true`; its prepare() is then called
-- here once per account with a placeholder body, and the method, URL and
-- headers it returns must not depend on the request. An overriding
-- provider module without that field keeps its requests in Lua.
local cpx = require("cpx")
local json = require("lib.json")
local payload = require("rt.payload")

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local tonumber = tonumber
local tostring = tostring
local sort = table.sort
local concat = table.concat
local log = cpx.log or function() end -- absent in the busted module
local lane_api = cpx.lane

local _M = {}

local PATH = "/v1/chat/completions"
local FORMAT = "openai_chat"

-- Headers the head must not carry twice (the lane adds Host and
-- Content-Length itself).
local OWN = { host = true, ["content-length"] = true, ["transfer-encoding"] = true,
              connection = true, expect = true }

-- Why the whole generation stays in Lua, or nil.
function _M.blocked(app)
  local cfg = app.config
  if cfg["fast-path"] == false then return "fast-path is off" end
  if cfg["request-log"] == true then return "request-log is on" end
  local hooks = app.middleware and app.middleware.hooks
  if hooks and next(hooks) ~= nil then return "middleware hooks are configured" end
  if cfg.routing and cfg.routing["session-affinity"] == true then return "session affinity is on" end
  local s = cfg.streaming
  if s and (s["keepalive-seconds"] or 0) > 0 then return "streaming.keepalive-seconds is set" end
  if (cfg["nonstream-keepalive-interval"] or 0) > 0 then return "nonstream-keepalive-interval is set" end
  local p = cfg["proxy-url"]
  if type(p) == "string" and p ~= "" then return "a global proxy-url is set" end
  return nil
end

-- http(s)://host[:port]/path -> host, port, path, tls (no query, no
-- userinfo).
function _M.parse_url(u)
  if type(u) ~= "string" then return nil end
  local scheme, rest = u:match("^(https?)://(.*)$")
  if not scheme then return nil end
  local host, port, path = rest:match("^(%[[%x:%.]+%]):?(%d*)(/[^?#]*)$")
  if host then
    host = host:sub(2, -2)
  else
    host, port, path = rest:match("^([%w%.%-_]+):?(%d*)(/[^?#]*)$")
  end
  if not host then return nil end
  local tls = scheme == "https"
  port = port ~= "" and tonumber(port) or (tls and 443 or 80)
  if port < 1 or port > 65535 then return nil end
  return host, port, path, tls
end

local function header_ok(k, v)
  return type(k) == "string" and k:match("^[%w!#$%%&'*+%-.^_`|~]+$") ~= nil
    and type(v) == "string" and not v:find("[%z\r\n]")
end

-- The request line and headers, in a stable order, without Content-Length.
local function head(host, port, path, headers, tls)
  local names = {}
  for k in pairs(headers) do names[#names + 1] = k end
  sort(names)
  local hosthdr = host:find(":", 1, true) and ("[" .. host .. "]") or host
  if port ~= (tls and 443 or 80) then hosthdr = hosthdr .. ":" .. port end
  local out = { "POST ", path, " HTTP/1.1\r\nHost: ", hosthdr, "\r\n" }
  for _, k in ipairs(names) do
    local v = headers[k]
    if not header_ok(k, v) then return nil end
    if not OWN[k:lower()] then
      out[#out + 1] = k .. ": " .. v .. "\r\n"
    end
  end
  return concat(out)
end

-- One account -> { host, port, tls, head, head_stream, model } or nil, why.
local function target_spec(app, alias, t)
  if payload.touches(app.config.payload, alias, t.upstream_model, FORMAT) then
    return nil, "a payload rule applies"
  end
  local p = app.providers[t.provider]
  if not p or p.fast_path ~= true then return nil, "provider " .. tostring(t.provider) .. " is not fast_path" end
  if p.format ~= FORMAT or p.fixup or p.force_stream then return nil, "provider needs the pipeline" end
  local ctx = { model = alias, client_format = FORMAT, info = { headers = {} } }
  local spec = { model = json.encode(t.upstream_model) }
  for _, stream in ipairs({ false, true }) do
    ctx.stream = stream
    local ok, u = pcall(p.prepare, ctx, { entry = t.entry, key = t.key, upstream_model = t.upstream_model },
                        "", stream)
    if not ok or type(u) ~= "table" then return nil, "prepare failed" end
    if (u.method or "POST") ~= "POST" or u.proxy then return nil, "proxy or method" end
    local host, port, path, tls = _M.parse_url(u.url)
    if not host then return nil, "not an http(s) URL the lane can send" end
    local h = head(host, port, path, u.headers or {}, tls)
    if not h then return nil, "a header the lane cannot send" end
    if spec.host and (spec.host ~= host or spec.port ~= port or spec.tls ~= tls) then
      return nil, "URL depends on stream"
    end
    spec.host, spec.port, spec.tls = host, port, tls
    spec[stream and "head_stream" or "head"] = h
  end
  return spec
end

-- The route table for cpx.lane.configure, or nil, why.
function _M.build(app)
  local why = _M.blocked(app)
  if why then return nil, why end
  local reg = app.registry
  local models = {}
  for alias, list in pairs(reg.models) do
    local group = reg.groups[alias]
    local targets = {}
    for i, t in ipairs(list) do
      local spec = target_spec(app, alias, t)
      if not spec then
        targets = nil
        break
      end
      targets[i] = spec
    end
    if group and targets and #targets > 0 then
      models[#models + 1] = { name = alias, group = group, targets = targets }
    end
  end
  if #models == 0 then return nil, "no model is served by OpenAI-compatible upstreams only" end
  local keys = {}
  for i, k in ipairs(app.config["api-keys"] or {}) do keys[i] = k end
  return { path = PATH, keys = keys, models = models,
           store_version = reg.auto_store and reg.store_version or nil }
end

-- Compiles and installs the table for app's generation; logs the outcome
-- once per change.
function _M.sync(app)
  if not lane_api then return nil, "no fast path in this runtime" end
  local t, why = _M.build(app)
  app.lane_version = app.registry.store_version
  local ok, err = lane_api.configure(t)
  if not ok then return nil, err end
  local msg = t and ("fast path: " .. #t.models .. " model(s) served in C") or ("fast path off: " .. why)
  if msg ~= app.lane_msg then
    log("info", msg)
    app.lane_msg = msg
  end
  return t ~= nil
end

-- After the registry rebuilt itself (credential files changed; its
-- lookups notice), the table follows. Meanwhile the C side sees the
-- store's new version and leaves the requests to Lua.
function _M.refresh(app)
  local reg = app.registry
  if reg.auto_store and reg.store_version ~= app.lane_version then _M.sync(app) end
end

return _M
