-- rt.mgmt.oauth: CLIProxyAPI v6's OAuth starters for the management API
-- and its panel (fact sheet §1.4 "OAuth starters", §3 "OAuth login
-- plumbing"):
--   GET  /anthropic-auth-url, /codex-auth-url [?is_webui=true]
--        -> {"status":"ok","url":...,"state":...}
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
local cpx = require("cpx")
local json = require("lib.json")
local oauth = require("rt.oauth")
local access = require("rt.access")

local type = type
local ipairs = ipairs
local tostring = tostring
local pcall = pcall

local query_param = access.query_param
local shared = cpx.shared

local _M = { name = "oauth" }

-- route name (CLIProxyAPI's) -> the rt.oauth provider it logs in to
-- A login with steps after the exchange names the module whose
-- finish(facts, args, io, lib, tokens) `cliproxy login` runs too.
local STARTERS = {
  { route = "anthropic", provider = "claude" },
  { route = "codex", provider = "codex" },
  { route = "gemini-cli", provider = "gemini", finish = "rt.login_gemini" },
  { route = "antigravity", provider = "antigravity", finish = "rt.login_antigravity" },
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
    if type(s) ~= "table" or (s.started or 0) + TTL < now then
      shared.set(k, nil)
    else
      live = live + 1
    end
  end
  return live < MAX_SESSIONS
end

local function start(provider)
  return function(req, ctx)
    local f, ferr = oauth.facts(provider, ctx.config)
    if not f then return 500, { status = "error", error = ferr } end
    local now = cpx.now()
    if not sweep(now) then return 429, { status = "error", error = "too many OAuth logins in progress" } end
    local verifier, challenge = oauth.pkce()
    local state = oauth.new_state()
    local redirect_uri = oauth.redirect_uri(f)
    local url = oauth.authorize_url(f, { state = state, challenge = challenge, redirect_uri = redirect_uri })
    local ok, err = put(state, { provider = provider, verifier = verifier, redirect_uri = redirect_uri,
                                 status = "wait", started = now,
                                 project_id = query_param(req.query, "project_id"),
                                 webui = query_param(req.query, "is_webui") == "true" or nil })
    if not ok then return 500, { status = "error", error = tostring(err) } end
    return 200, json.object({ { "status", "ok" }, { "url", url }, { "state", state } })
  end
end

local function starter_of(provider)
  for _, st in ipairs(STARTERS) do
    if st.provider == provider then return st end
  end
end

-- The steps `cliproxy login` runs after the exchange, here with a
-- server-side io: its lines go to the log, its requests and writes are the
-- server's own (rt.login documents the io table).
local function finish(cfg, st, f, s, tokens)
  local okm, mod = pcall(require, st.finish)
  if not okm or type(mod) ~= "table" or type(mod.finish) ~= "function" then
    return nil, "no login steps for " .. s.provider .. ": " .. tostring(mod)
  end
  local proxy = cfg["proxy-url"] ~= "" and cfg["proxy-url"] or nil
  local io = {
    say = function(line) cpx.log("info", "oauth login (" .. s.provider .. "): " .. tostring(line)) end,
    now = cpx.now,
    sleep = cpx.sleep,
    request = function(req) return oauth.request(req, { proxy = proxy }) end,
    write = function(name, text) return cpx.store.write_async(name, text) end,
    dir = function() return cfg["auth-dir"] end,
  }
  local okc, info, err = pcall(mod.finish, f, { project_id = s.project_id }, io, require("rt.login").lib, tokens)
  if not okc then return nil, tostring(info) end
  return info, err
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
    cpx.log("info", "oauth login (" .. s.provider .. ") saved " .. info.name)
    return true, info.name
  end
  local doc = oauth.credential(f, tokens, nil, cpx.now())
  local name = oauth.file_name(f, doc, tokens)
  local wok, werr = cpx.store.write_async(name, oauth.encode(doc))
  if not wok then return fail("cannot write " .. name .. ": " .. tostring(werr)) end
  s.status, s.file, s.verifier, s.email = "ok", name, nil, doc.email
  put(state, s)
  cpx.log("info", "oauth login (" .. s.provider .. ") saved " .. name)
  return true, name
end
_M.complete = complete

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
  for i, st in ipairs(STARTERS) do o[i] = "/" .. st.route .. "/callback" end
  return o
end

_M.routes = {
  { method = "GET", path = "/get-auth-status", handler = status },
  { method = "POST", path = "/oauth-callback", handler = callback_post },
}
for _, st in ipairs(STARTERS) do
  _M.routes[#_M.routes + 1] = { method = "GET", path = "/" .. st.route .. "-auth-url", handler = start(st.provider) }
end

return _M
