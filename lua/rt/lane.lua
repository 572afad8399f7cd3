-- rt.lane: what the C relay (runtime/net/cpx_lane.c) may serve without
-- entering Lua, compiled once per generation into a route table.
--
-- One relay for every same-format route: Chat Completions, Anthropic
-- Messages, the Responses API and Gemini (generateContent, and
-- streamGenerateContent?alt=sse). A model qualifies on a route when every
-- account of it is of a provider of that route's format that declares
-- `relay` (docs/modules.md), on http or https without a proxy, with a static
-- key (an OAuth account's token is refreshed in Lua), and provided nothing
-- would look at the request on its way: no middleware hook, no payload
-- rule for that model, no session affinity, no keep-alives, and
-- `fast-path` not turned off. The relay does what rt.pipeline's passthrough
-- does (the model rewritten in the body, or named in the path, the body
-- otherwise untouched, the answer relayed), and hands every failure
-- before the first byte back to rt.server with the attempt attached
-- (info.lane), so retries, cooldowns and error answers stay Lua's.
--
-- What a provider must check per request is data the C side evaluates
-- (`relay` fields): top-level members that send a body to Lua (`unless`),
-- members it must have (`require`), text that may occur at most so often
-- (`at_most`), client headers that send it to Lua (`lua_headers`) and
-- client headers the upstream head carries as sent (`headers`). The
-- provider's prepare() is called here once per account and stream mode
-- with a placeholder body; apart from those headers, its method, URL and
-- headers must not depend on the request (a probe checks the declared
-- headers against prepare). `fast_path = true` is the older spelling of
-- `relay = {}`.
local cpx = require("cpx")
local json = require("lib.json")
local payload = require("rt.payload")

local type = type
local pcall = pcall
local unpack = unpack
local find = string.find
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

-- The client routes the relay serves, by format (the client's and the
-- upstream's: the relay never translates).
local ROUTES = {
  { format = "openai_chat", path = "/v1/chat/completions" },
  { format = "claude", path = "/v1/messages" },
  { format = "openai_responses", path = "/v1/responses" },
  { format = "gemini", path = "/v1beta/models/", model_in_path = true },
}
-- The C side reads at most this many members per route (one bit each).
local MEMBERS_MAX = 24

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

-- http(s)://host[:port]/path[?query] -> host, port, path, tls (no
-- userinfo, no fragment); https goes through cpx_h1's TLS, checked against
-- upstream-ca-file or the system store.
function _M.parse_url(u)
  if type(u) ~= "string" then return nil end
  local scheme, rest = u:match("^(https?)://(.*)$")
  if not scheme then return nil end
  local host, port, path = rest:match("^(%[[%x:%.]+%]):?(%d*)(/[^#]*)$")
  if host then
    host = host:sub(2, -2)
  else
    host, port, path = rest:match("^([%w%.%-_]+):?(%d*)(/[^#]*)$")
  end
  if not host or path:find("[%s%c]") then return nil end
  -- a query ends the URL (Gemini's ?alt=sse); a base-url with a query
  -- that a path was appended to is not sent by the relay
  local q = path:find("?", 1, true)
  if q and path:find("/", q, true) then return nil end
  local tls = scheme == "https"
  port = port ~= "" and tonumber(port) or (tls and 443 or 80)
  if port < 1 or port > 65535 then return nil end
  return host, port, path, tls
end

local function header_ok(k, v)
  return type(k) == "string" and k:match("^[%w!#$%%&'*+%-.^_`|~]+$") ~= nil
    and type(v) == "string" and not v:find("[%z\r\n]")
end

-- The request line and headers, in a stable order, without Content-Length
-- and without the slot headers (skip: lower-case names).
local function head(host, port, path, headers, skip, tls)
  local names = {}
  for k in pairs(headers) do names[#names + 1] = k end
  sort(names)
  local hosthdr = host:find(":", 1, true) and ("[" .. host .. "]") or host
  if port ~= (tls and 443 or 80) then hosthdr = hosthdr .. ":" .. port end
  local out = { "POST ", path, " HTTP/1.1\r\nHost: ", hosthdr, "\r\n" }
  for _, k in ipairs(names) do
    local v = headers[k]
    if not header_ok(k, v) then return nil end
    local lk = k:lower()
    if not OWN[lk] and not skip[lk] then
      out[#out + 1] = k .. ": " .. v .. "\r\n"
    end
  end
  return concat(out)
end

-- The relay declaration of provider p (a table), or nil.
local function declaration(p)
  if type(p) ~= "table" then return nil end
  if type(p.relay) == "table" then return p.relay end
  if p.fast_path == true then return {} end
  return nil
end
_M.declaration = declaration

-- The body rules of a declaration evaluated in Lua (rt.pipeline's raw
-- passthrough uses them through a provider's raw_ok; the C relay
-- evaluates the same data): true when the raw body may go as written.
function _M.body_ok(decl, raw)
  local names, at = {}, {}
  for _, u in ipairs(decl.unless or {}) do
    for _, n in ipairs(type(u) == "table" and u or { u }) do
      if not at[n] then names[#names + 1] = n; at[n] = #names end
    end
  end
  for _, n in ipairs(decl.require or {}) do
    if not at[n] then names[#names + 1] = n; at[n] = #names end
  end
  local has = { json.has(raw, "model", unpack(names)) }
  if has[1] == nil then return false end -- malformed
  for _, n in ipairs(decl.require or {}) do
    if not has[at[n] + 1] then return false end
  end
  for _, u in ipairs(decl.unless or {}) do
    local all = true
    for _, n in ipairs(type(u) == "table" and u or { u }) do
      if not has[at[n] + 1] then all = false break end
    end
    if all then return false end
  end
  for _, c in ipairs(decl.at_most or {}) do
    local n, i = 0, 1
    while true do
      local _, e = find(raw, c[1], i, true)
      if not e then break end
      n, i = n + 1, e + 1
      if n > c[2] then return false end
    end
  end
  return true
end

-- A header of a prepare() answer by lower-case name: name, value.
local function find_header(headers, lname)
  for k, v in pairs(headers) do
    if type(k) == "string" and k:lower() == lname then return k, v end
  end
  return nil
end

local function prepare(p, ctx, t, stream)
  ctx.stream = stream
  ctx.claude = nil -- a provider's per-attempt state: each call is its own
  local ok, u = pcall(p.prepare, ctx, { entry = t.entry, key = t.key, upstream_model = t.upstream_model },
                      "", stream)
  if not ok or type(u) ~= "table" then return nil end
  return u
end

-- The probe value of the i-th declared header: a list of two items for a
-- list header (prepare must send a plain list as it is: neither reorder
-- nor add to it).
local function probe_value(h, i)
  if h.list then return "cpx-probe-" .. i .. ",cpx-probe-" .. i .. "-b" end
  return "cpx-probe-" .. i
end

-- The declared headers (decl.headers: { client, Upstream-Name, list })
-- checked against prepare(): with a probe value in each client header,
-- prepare must send exactly that value under the declared name and change
-- nothing else. So the value the relay sends is the one Lua decided: the
-- C side sends a client value only in the form this probe checked (once,
-- and for a list plain: no blanks, spaces or repeats), anything else goes
-- to Lua; an account whose prepare adds to a list (a login's betas) stays
-- in Lua.
local function probe_slots(p, ctx, t, stream, decl, base)
  local hdrs = {}
  for i, h in ipairs(decl.headers or {}) do hdrs[h[1]] = probe_value(h, i) end
  local pctx = { model = ctx.model, client_format = ctx.client_format, config = ctx.config,
                 info = { headers = hdrs } }
  local u = prepare(p, pctx, t, stream)
  if not u or u.url ~= base.url then return false end
  local slot = {}
  for i, h in ipairs(decl.headers or {}) do
    local up = h[2]:lower()
    local _, v = find_header(u.headers or {}, up)
    if v ~= probe_value(h, i) then return false end
    slot[up] = true
  end
  for k, v in pairs(u.headers or {}) do
    if not slot[k:lower()] and (base.headers or {})[k] ~= v then return false end
  end
  for k in pairs(base.headers or {}) do
    if not slot[k:lower()] and (u.headers or {})[k] == nil then return false end
  end
  return true
end

-- One account -> { host, port, tls, head, head_stream, model, slot_lines } or
-- nil, why.
local function target_spec(app, route, alias, t)
  local fmt = route.format
  if payload.touches(app.config.payload, alias, t.upstream_model, fmt) then
    return nil, "a payload rule applies"
  end
  local p = app.providers[t.provider]
  local decl = declaration(p)
  if not decl then return nil, "provider " .. tostring(t.provider) .. " declares no relay" end
  if p.format ~= fmt then return nil, "another format" end
  if p.force_stream or p.admit then return nil, "provider needs the pipeline" end
  -- (a provider with a fixup promises with its declaration that a body
  -- passing the rules needs none of it: Claude's raw_ok as data)
  if t.credential then return nil, "an OAuth account (its token is refreshed in Lua)" end
  if decl.account then
    local ok, why = decl.account(t, app.config)
    if not ok then return nil, why or "account not relayed" end
  end
  local ctx = { model = alias, client_format = fmt, config = app.config, info = { headers = {} } }
  local spec = { model = not route.model_in_path and json.encode(t.upstream_model) or nil, slot_lines = {} }
  local skip = {}
  for _, h in ipairs(decl.headers or {}) do skip[h[2]:lower()] = true end
  for _, stream in ipairs({ false, true }) do
    local u = prepare(p, ctx, t, stream)
    if not u then return nil, "prepare failed" end
    if (u.method or "POST") ~= "POST" or u.proxy then return nil, "proxy or method" end
    if u.fallback_urls then return nil, "fallback URLs" end
    local host, port, path, tls = _M.parse_url(u.url)
    if not host then return nil, "not an http(s) URL the relay can send" end
    if not probe_slots(p, ctx, t, stream, decl, u) then
      return nil, "prepare does not carry the declared headers as they are"
    end
    local h = head(host, port, path, u.headers or {}, skip, tls)
    if not h then return nil, "a header the lane cannot send" end
    if spec.host and (spec.host ~= host or spec.port ~= port or spec.tls ~= tls) then
      return nil, "URL depends on stream"
    end
    spec.host, spec.port, spec.tls = host, port, tls
    spec[stream and "head_stream" or "head"] = h
    if not stream then
      for i, d in ipairs(decl.headers or {}) do
        local k, v = find_header(u.headers or {}, d[2]:lower())
        spec.slot_lines[i] = k and header_ok(k, v) and (d[2] .. ": " .. v .. "\r\n") or ""
      end
    end
  end
  return spec, nil, decl
end

-- The rules of one model: the union of its providers' declarations, with
-- members as indexes into the route's list (members: name -> index).
local function add_rules(rules, decl, members, list)
  local function idx(name)
    local i = members[name]
    if not i then
      if #list >= MEMBERS_MAX then return nil end
      i = #list + 1
      list[i], members[name] = name, i
    end
    return i
  end
  for _, u in ipairs(decl.unless or {}) do
    local group = {}
    for _, name in ipairs(type(u) == "table" and u or { u }) do
      local i = idx(name)
      if not i then return nil end
      group[#group + 1] = i
    end
    rules.unless[#rules.unless + 1] = group
  end
  for _, name in ipairs(decl.require or {}) do
    local i = idx(name)
    if not i then return nil end
    rules.require[#rules.require + 1] = i
  end
  for _, c in ipairs(decl.at_most or {}) do
    rules.at_most[#rules.at_most + 1] = { text = c[1], max = c[2] }
  end
  for _, h in ipairs(decl.lua_headers or {}) do rules.lua_headers[#rules.lua_headers + 1] = h:lower() end
  return true
end

-- The slots of a model: every account's provider must declare the same
-- headers (else the model stays in Lua).
local function same_slots(a, b)
  a, b = a or {}, b or {}
  if #a ~= #b then return false end
  for i = 1, #a do
    if a[i][1] ~= b[i][1] or a[i][2] ~= b[i][2] or (a[i].list == true) ~= (b[i].list == true) then
      return false
    end
  end
  return true
end

-- One route's table, or nil when no model of it qualifies.
local function build_route(app, route, why)
  local reg = app.registry
  local members, list = {}, {}
  local models = {}
  local aliases = {}
  for alias in pairs(reg.models) do aliases[#aliases + 1] = alias end
  sort(aliases) -- the table (and the C side's member order) is the same every time
  for _, alias in ipairs(aliases) do
    local tlist = reg.models[alias]
    local group = reg.groups[alias]
    local targets, slots = {}, nil
    local rules = { unless = {}, require = {}, at_most = {}, lua_headers = {} }
    for i, t in ipairs(tlist) do
      local spec, err, decl = target_spec(app, route, alias, t)
      if spec and i > 1 and not same_slots(slots, decl.headers) then
        spec, err = nil, "accounts declare different headers"
      end
      if spec and not add_rules(rules, decl, members, list) then
        spec, err = nil, "more than " .. MEMBERS_MAX .. " members in the rules"
      end
      if not spec then
        why[#why + 1] = alias .. ": " .. tostring(err)
        targets = nil
        break
      end
      slots = decl.headers or {}
      targets[i] = spec
    end
    if group and targets and #targets > 0 then
      local sl = {}
      for i, h in ipairs(slots) do sl[i] = { client = h[1]:lower(), prefix = h[2] .. ": ", list = h.list == true } end
      rules.name, rules.group, rules.targets, rules.slots = alias, group, targets, sl
      models[#models + 1] = rules
    end
  end
  if #models == 0 then return nil end
  return { format = route.format, path = route.path, model_in_path = route.model_in_path or false,
           members = list, models = models }
end

-- The route table for cpx.lane.configure, or nil, why.
function _M.build(app)
  local why = _M.blocked(app)
  if why then return nil, why end
  local reg = app.registry
  local routes = {}
  for _, route in ipairs(ROUTES) do
    local rt = build_route(app, route, {})
    if rt then routes[#routes + 1] = rt end
  end
  if #routes == 0 then return nil, "no model is served by relay accounts only" end
  local keys = {}
  for i, k in ipairs(app.config["api-keys"] or {}) do keys[i] = k end
  return { keys = keys, routes = routes,
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
  local msg
  if t then
    local parts, n = {}, 0
    for _, rt in ipairs(t.routes) do
      parts[#parts + 1] = rt.path .. ": " .. #rt.models
      n = n + #rt.models
    end
    msg = "fast path: " .. n .. " model(s) served in C (" .. concat(parts, ", ") .. ")"
  else
    msg = "fast path off: " .. why
  end
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
