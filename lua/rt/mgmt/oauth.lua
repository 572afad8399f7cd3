-- rt.mgmt.oauth: CLIProxyAPI v6's OAuth starters for the management API
-- and its panel (fact sheet §1.4 "OAuth starters", §3 "OAuth login
-- plumbing"):
--   GET  /anthropic-auth-url, /codex-auth-url, /gemini-cli-auth-url,
--        /antigravity-auth-url, /iflow-auth-url [?is_webui=true]
--        -> {"status":"ok","url":...,"state":...}
--   GET  /qwen-auth-url -> the same, plus "user_code": a device flow, the
--        token endpoint polled in a background task (cpx.timer)
--   POST /iflow-auth-url {"cookie": "..."} -> {"status":"ok","file",...}
--   GET  /get-auth-status?state=  -> {"status":"wait"|"ok"|"error", "error"?, "file"?}
--   POST /oauth-callback {provider, redirect_url | code, state, error}
-- and the main-port callbacks the browser's redirect reaches
-- (GET /anthropic/callback, /codex/callback: public, they only act on a
-- state a starter handed out). The code is exchanged here (rt.oauth), the
-- credential written like `cliproxy login` writes it (its name, 0600,
-- atomic, cpx.store.write_async, which rescans so the pool serves it).
--
-- A login is a table entry: adding a provider is one line in STARTERS
-- once rt.oauth knows its facts. Sessions live in cpx.shared, so the start,
-- the callback and the polls may land on different workers.
--
-- ?is_webui=true also opens a forwarder (cpx.redirect) on the provider's
-- own callback port, 127.0.0.1 only, that sends the browser on to the main
-- port's /<route>/callback with its query; it stops after that, when the
-- login expires, or is taken over by the next login for the same port.
local cpx = require("cpx")
local json = require("lib.json")
local oauth = require("rt.oauth")
local access = require("rt.access")

local type = type
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local pcall = pcall

local query_param = access.query_param
local shared = cpx.shared

local _M = { name = "oauth" }

-- route name (CLIProxyAPI's) -> the rt.oauth provider it logs in to
-- A login with steps after the exchange names the module whose
-- finish(facts, args, io, lib, tokens) `cliproxy login` runs too.
-- A device login (no browser callback) names the module whose
-- device_start / poll_once / save the background poll runs.
local STARTERS = {
  { route = "anthropic", provider = "claude" },
  { route = "codex", provider = "codex" },
  { route = "gemini-cli", provider = "gemini", finish = "rt.login_gemini" },
  { route = "antigravity", provider = "antigravity", finish = "rt.login_antigravity" },
  { route = "iflow", provider = "iflow", finish = "rt.login_iflow" },
  { route = "qwen", provider = "qwen", device = "rt.login_qwen" },
}
_M.STARTERS = STARTERS

local PREFIX = "mgmt.oauth:"
local TTL = 600 -- seconds a started login waits for its callback
local MAX_SESSIONS = 64

local function session(state)
  if type(state) ~= "string" or state == "" or #state > 128 then return nil end
  local v = shared.get(PREFIX .. state)
  return v and json.decode(v) or nil
end

local function put(state, s)
  return shared.set(PREFIX .. state, json.encode(s))
end

-- Drops expired sessions; true when there is room for one more.
local function sweep(now)
  local keys = shared.keys(PREFIX)
  local live = 0
  for _, k in ipairs(keys) do
    local s = json.decode(shared.get(k) or "")
    if type(s) ~= "table" or (s.expires or (s.started or 0) + TTL) < now then
      shared.set(k, nil)
    else
      live = live + 1
    end
  end
  return live < MAX_SESSIONS
end

local function starter_of(provider)
  for _, st in ipairs(STARTERS) do
    if st.provider == provider then return st end
  end
end

local function module_of(name, fn)
  local okm, mod = pcall(require, name)
  if not okm or type(mod) ~= "table" or type(mod[fn]) ~= "function" then
    return nil, name .. ": no " .. fn .. ": " .. tostring(mod)
  end
  return mod
end

-- The io of rt.login's modules, server side: their lines go to the log,
-- their requests and writes are the server's own (rt.login documents the
-- io table).
local function server_io(cfg, provider)
  local proxy = cfg["proxy-url"] ~= "" and cfg["proxy-url"] or nil
  return {
    say = function(line) cpx.log("info", "oauth login (" .. provider .. "): " .. tostring(line)) end,
    now = cpx.now,
    sleep = cpx.sleep,
    request = function(req) return oauth.request(req, { proxy = proxy }) end,
    write = function(name, text) return cpx.store.write_async(name, text) end,
    dir = function() return cfg["auth-dir"] end,
  }
end

-- The main port as the browser on this machine reaches it.
local function main_origin(cfg)
  local host = cfg.host or ""
  if host == "" or host == "0.0.0.0" or host == "localhost" then
    host = "127.0.0.1"
  elseif host == "::" then
    host = "[::1]"
  elseif host:find(":", 1, true) then
    host = "[" .. host .. "]"
  end
  local tls = type(cfg.tls) == "table" and cfg.tls.enable == true
  return (tls and "https://" or "http://") .. host .. ":" .. tostring(cfg.port)
end

-- ?is_webui=true: the forwarder on the provider's callback port.
-- Returns true or nil, message (the answer's error).
local function open_forwarder(cfg, st, f)
  local port = tonumber(f.redirect_port) or 0
  if port <= 0 then return true end -- a device flow has no callback
  local ok, err, code = cpx.redirect.listen({ port = port, path = f.redirect_path, ttl = TTL,
                                              target = main_origin(cfg) .. "/" .. st.route .. "/callback" })
  if ok then return true end
  if code == "EADDRINUSE" then
    return nil, ("port %d (the %s callback) is in use by another program: stop it, or open the URL "
                 .. "without is_webui and paste the redirect to POST /v0/management/oauth-callback"):format(port,
                 st.route)
  end
  return nil, "cannot start the callback forwarder on 127.0.0.1:" .. port .. ": " .. tostring(err)
end

local function start(st)
  local provider = st.provider
  return function(req, ctx)
    local f, ferr = oauth.facts(provider, ctx.config)
    if not f then return 500, { status = "error", error = ferr } end
    local now = cpx.now()
    if not sweep(now) then return 429, { status = "error", error = "too many OAuth logins in progress" } end
    local webui = query_param(req.query, "is_webui") == "true"
    if webui then
      local ok, err = open_forwarder(ctx.config, st, f)
      if not ok then return 409, { status = "error", error = err } end
    end
    local verifier, challenge = oauth.pkce()
    local state = oauth.new_state()
    local redirect_uri = oauth.redirect_uri(f)
    local url = oauth.authorize_url(f, { state = state, challenge = challenge, redirect_uri = redirect_uri })
    local ok, err = put(state, { provider = provider, verifier = verifier, redirect_uri = redirect_uri,
                                 status = "wait", started = now,
                                 project_id = query_param(req.query, "project_id"),
                                 webui = webui or nil })
    if not ok then return 500, { status = "error", error = tostring(err) } end
    return 200, json.object({ { "status", "ok" }, { "url", url }, { "state", state } })
  end
end

-- The steps `cliproxy login` runs after the exchange, with the server-side io.
local function finish(cfg, st, f, s, tokens)
  local mod, merr = module_of(st.finish, "finish")
  if not mod then return nil, merr end
  local okc, info, err = pcall(mod.finish, f, { project_id = s.project_id, web = true },
                               server_io(cfg, s.provider), require("rt.login").lib, tokens)
  if not okc then return nil, tostring(info) end
  return info, err
end

-- A login that opened a forwarder ended (either way): the forwarder
-- closes unless another waiting login of the same provider still needs it.
local function release_forwarder(cfg, state, s)
  if not s.webui or not cpx.redirect then return end
  for _, k in ipairs(shared.keys(PREFIX)) do
    local o = json.decode(shared.get(k) or "")
    if k ~= PREFIX .. state and type(o) == "table" and o.webui and o.provider == s.provider and o.status == "wait" then
      return
    end
  end
  local f = oauth.facts(s.provider, cfg)
  if f and tonumber(f.redirect_port) and f.redirect_port > 0 then cpx.redirect.close(f.redirect_port) end
end

-- Exchanges the code of a waiting login and saves its credential.
-- Returns true, file | nil, message (the session says the same).
local function complete(cfg, state, code, oerr, oerr_desc)
  local s = session(state)
  if not s then return nil, "unknown or expired OAuth state" end
  if s.status ~= "wait" then
    if s.status == "ok" then return true, s.file end
    return nil, s.error or "this login is already being completed"
  end
  local function fail(msg)
    s.status, s.error, s.verifier = "error", msg, nil
    put(state, s)
    release_forwarder(cfg, state, s)
    return nil, msg
  end
  if oerr and oerr ~= "" then
    if oerr == "access_denied" then return fail("access denied: the authorization was declined in the browser") end
    return fail("the authorization server refused: " .. oerr .. (oerr_desc and (" (" .. oerr_desc .. ")") or ""))
  end
  if type(code) ~= "string" or code == "" then return fail("the redirect carries no code") end
  local c, cstate = oauth.split_code(code)
  if cstate and cstate ~= "" and cstate ~= state then return fail("state mismatch; refused") end
  local f, ferr = oauth.facts(s.provider, cfg)
  if not f then return fail(ferr) end
  s.status = "exchanging"
  put(state, s)
  local status, headers, body = oauth.request(oauth.exchange_request(f, { code = c, verifier = s.verifier,
                                                                           redirect_uri = s.redirect_uri,
                                                                           state = state }),
                                              { proxy = cfg["proxy-url"] ~= "" and cfg["proxy-url"] or nil })
  if not status then return fail("network error: " .. f.token_url .. ": " .. tostring(headers)) end
  local tokens, terr = oauth.parse_token_response(f, status, headers, body)
  if not tokens then return fail("the token exchange failed: " .. tostring(terr and terr.message)) end
  local st = starter_of(s.provider)
  if st and st.finish then
    local info, xerr = finish(cfg, st, f, s, tokens)
    if not info then return fail(xerr) end
    s.status, s.file, s.verifier, s.email = "ok", info.name, nil, info.email
    put(state, s)
    release_forwarder(cfg, state, s)
    cpx.log("info", "oauth login (" .. s.provider .. ") saved " .. info.name)
    return true, info.name
  end
  local doc = oauth.credential(f, tokens, nil, cpx.now())
  local name = oauth.file_name(f, doc, tokens)
  local wok, werr = cpx.store.write_async(name, oauth.encode(doc))
  if not wok then return fail("cannot write " .. name .. ": " .. tostring(werr)) end
  s.status, s.file, s.verifier, s.email = "ok", name, nil, doc.email
  put(state, s)
  release_forwarder(cfg, state, s)
  cpx.log("info", "oauth login (" .. s.provider .. ") saved " .. name)
  return true, name
end
_M.complete = complete

-- ---- device logins (Qwen): the poll runs in a background task ---------------

-- Who polls a device session: "<worker>:<generation>".
local function owner()
  return tostring(cpx.worker_id()) .. ":" .. tostring(cpx.generation())
end

local function device_fail(state, s, msg)
  s.status, s.error, s.device = "error", msg, nil
  put(state, s)
  cpx.log("warn", "oauth login (" .. s.provider .. ") failed: " .. tostring(msg))
end

-- The background poll of one device login (a cpx.timer task). It reads the
-- session again at every step and polls only while it is the owner, so a
-- login ended meanwhile (or taken over) stops it. A reload retires the task
-- (its sleep answers nil); the next generation of the same worker takes the
-- session over in init_worker, so the login goes on.
local function poll_device(premature, state, cfg)
  if premature then return end
  local me = owner()
  local lib = require("rt.login").lib
  local failures = 0
  while true do
    local s = session(state)
    if not s or s.status ~= "wait" or s.owner ~= me or type(s.device) ~= "table" then return end
    local st = starter_of(s.provider)
    local mod, merr = module_of(st and st.device or "?", "poll_once")
    if not mod then return device_fail(state, s, merr) end
    local f, ferr = oauth.facts(s.provider, cfg)
    if not f then return device_fail(state, s, ferr) end
    local dev = s.device
    if cpx.now() + dev.interval > s.expires then
      return device_fail(state, s, "the device code expired without an approval: start the login again")
    end
    if not cpx.sleep(dev.interval) then return end
    local io = server_io(cfg, s.provider)
    local r, v = mod.poll_once(f, dev, io, lib)
    s = session(state)
    if not s or s.status ~= "wait" or s.owner ~= me then return end
    if r == "retry" then
      failures = failures + 1
      if failures > lib.POLL_RETRIES then
        return device_fail(state, s, "network error: " .. tostring(f.device_token_url) .. ": " .. tostring(v))
      end
      cpx.log("warn", "oauth login (" .. s.provider .. "): polling failed (" .. tostring(v) .. "), trying again")
    elseif r == "wait" then
      failures = 0
      if v ~= dev.interval then
        s.device.interval = v
        put(state, s)
      end
    elseif r == "ok" then
      s.status = "saving"
      put(state, s)
      local info, serr = mod.save(f, io, lib, v, nil)
      if not info then return device_fail(state, s, serr) end
      s.status, s.file, s.device = "ok", info.name, nil
      put(state, s)
      cpx.log("info", "oauth login (" .. s.provider .. ") saved " .. info.name)
      return
    else
      return device_fail(state, s, v)
    end
  end
end

local function start_device(st)
  return function(_, ctx)
    local f, ferr = oauth.facts(st.provider, ctx.config)
    if not f then return 500, { status = "error", error = ferr } end
    local now = cpx.now()
    if not sweep(now) then return 429, { status = "error", error = "too many OAuth logins in progress" } end
    local mod, merr = module_of(st.device, "device_start")
    if not mod then return 500, { status = "error", error = merr } end
    local dev, err = mod.device_start(f, server_io(ctx.config, st.provider), require("rt.login").lib)
    if not dev then return 502, { status = "error", error = err } end
    local state = oauth.new_state()
    local ok, perr = put(state, { provider = st.provider, status = "wait", started = now,
                                  expires = now + dev.life, device = dev, owner = owner() })
    if not ok then return 500, { status = "error", error = tostring(perr) } end
    local tok, terr = cpx.timer.at(0, poll_device, state, ctx.config)
    if not tok then
      shared.set(PREFIX .. state, nil)
      return 503, { status = "error", error = "cannot start the background poll: " .. tostring(terr) }
    end
    return 200, json.object({ { "status", "ok" }, { "url", dev.verify }, { "state", state },
                              { "user_code", dev.user_code } })
  end
end

-- rt.boot's init_worker, per worker and generation: device logins whose
-- poll this worker's previous generation ran (a reload retired it) go on.
function _M.init_worker(app)
  local me = owner()
  local wid = tostring(cpx.worker_id())
  for _, k in ipairs(shared.keys(PREFIX)) do
    local s = json.decode(shared.get(k) or "")
    if type(s) == "table" and s.status == "wait" and type(s.device) == "table" and type(s.owner) == "string"
        and s.owner ~= me and s.owner:match("^(%d+):") == wid then
      local state = k:sub(#PREFIX + 1)
      s.owner = me
      if put(state, s) then cpx.timer.at(0, poll_device, state, app.config) end
    end
  end
end

-- POST /iflow-auth-url {"cookie": "..."}: iFlow's cookie login (the key
-- looked up with the platform session's cookie, as `cliproxy login iflow
-- --cookie` does). The cookie goes into the file (CLIProxyAPI's field),
-- never into a log.
local MAX_COOKIE = 16384

local function iflow_cookie(req, ctx)
  local b = ctx.mgmt.json_body(req)
  if type(b) ~= "table" then return 400, { status = "error", error = "invalid body" } end
  local cookie = type(b.cookie) == "string" and b.cookie:match("^%s*(.-)%s*$") or ""
  cookie = cookie:gsub("^[Cc]ookie:%s*", "")
  if not cookie:find("BXAuth=", 1, true) then
    return 400, { status = "error", error = "cookie is required: the Cookie header of a browser logged in to "
                                            .. "platform.iflow.cn (with BXAuth=...)" }
  end
  if #cookie > MAX_COOKIE or cookie:find("[%c]") then
    return 400, { status = "error", error = "cookie is not a Cookie header value" }
  end
  local f, ferr = oauth.facts("iflow", ctx.config)
  if not f then return 500, { status = "error", error = ferr } end
  local mod, merr = module_of("rt.login_iflow", "save_cookie")
  if not mod then return 500, { status = "error", error = merr } end
  local info, err = mod.save_cookie(f, cookie, server_io(ctx.config, "iflow"), require("rt.login").lib)
  if not info then return 400, { status = "error", error = err } end
  cpx.log("info", "oauth login (iflow, cookie) saved " .. info.name)
  return 200, json.object({ { "status", "ok" }, { "file", info.name }, { "email", info.email or "" },
                            { "type", "iflow" } })
end

local function status(req)
  local s = session(query_param(req.query, "state"))
  if not s then return 200, { status = "error", error = "unknown or expired OAuth state" } end
  if s.status == "ok" then return 200, json.object({ { "status", "ok" }, { "file", s.file } }) end
  if s.status == "error" then return 200, { status = "error", error = s.error } end
  return 200, { status = "wait" }
end

local function callback_post(req, ctx)
  local b = ctx.mgmt.json_body(req)
  if type(b) ~= "table" then return 400, { status = "error", error = "invalid body" } end
  local code, state, oerr, desc = b.code, b.state, b.error, nil
  if type(b.redirect_url) == "string" and b.redirect_url ~= "" then
    local q = oauth.parse_query(b.redirect_url:match("%?([^#]*)") or "")
    code, state, oerr, desc = q.code or code, q.state or state, q.error or oerr, q.error_description
  end
  if type(state) ~= "string" or state == "" then return 400, { status = "error", error = "state is required" } end
  local s = session(state)
  if s and type(b.provider) == "string" and b.provider ~= "" then
    local want
    for _, st in ipairs(STARTERS) do
      if st.route == b.provider or st.provider == b.provider then want = st.provider end
    end
    if want ~= s.provider then return 400, { status = "error", error = "provider does not match this login" } end
  end
  local ok, r = complete(ctx.config, state, code, oerr, desc)
  if not ok then return 400, { status = "error", error = r } end
  return 200, json.object({ { "status", "ok" }, { "file", r } })
end

-- The main-port callback (GET /<route>/callback), for rt.server: public,
-- answers the page the browser shows.
function _M.callback(app, req, info)
  local q = oauth.parse_query(info.query)
  local ok, r = complete(app.config, q.state, q.code, q.error, q.error_description)
  local okp, page = pcall(function() return require("rt.login").page(ok, ok and ("Saved " .. r) or r) end)
  local html = okp and page or (ok and "Login successful" or "Login failed")
  return req:respond(ok and 200 or 400, { ["Content-Type"] = "text/html; charset=utf-8",
                                          ["Cache-Control"] = "no-store" }, html)
end

function _M.callback_paths()
  local o = {}
  for _, st in ipairs(STARTERS) do
    if not st.device then o[#o + 1] = "/" .. st.route .. "/callback" end
  end
  return o
end

_M.routes = {
  { method = "GET", path = "/get-auth-status", handler = status },
  { method = "POST", path = "/oauth-callback", handler = callback_post },
  { method = "POST", path = "/iflow-auth-url", handler = iflow_cookie },
}
for _, st in ipairs(STARTERS) do
  _M.routes[#_M.routes + 1] = { method = "GET", path = "/" .. st.route .. "-auth-url",
                                handler = st.device and start_device(st) or start(st) }
end

return _M
