-- rt.management: the management API, /v0/management/*, with CLIProxyAPI's
-- access rules, then the routes of the modules listed in MODULES.
--
-- Access (CLIProxyAPI internal/api/handlers/management/handler.go):
--   * no remote-management.secret-key and no MANAGEMENT_PASSWORD: 404 for
--     every path, as if the API did not exist;
--   * an address with 5 failures is banned for 30 minutes (403); the table
--     lives in C (cpx.mgmt), so another worker or a reload does not forget;
--   * other than loopback: 403 "remote management disabled" unless
--     remote-management.allow-remote (MANAGEMENT_PASSWORD forces it);
--   * the key comes in "Authorization: Bearer <key>" (or the whole
--     Authorization value) or X-Management-Key; missing or wrong: 401, and
--     one failure counted;
--   * MANAGEMENT_PASSWORD is compared in constant time; the secret-key is
--     a bcrypt hash (a plaintext one is hashed at load by worker 0 and
--     written back to config.yaml). bcrypt runs in the threadpool
--     (cpx.mgmt.verify yields); a verified key is cached by its SHA-256, so
--     only its first request pays for bcrypt.
--
-- A route module lua/rt/mgmt/<area>.lua returns
--   { name = "<area>", routes = { { method = "GET", path = "/usage", handler = fn }, ... } }
-- path is relative to /v0/management and may hold ":name" segments (in
-- req.params). handler(req, ctx) runs in the request's coroutine, may
-- yield, and returns status, body (a table, encoded as JSON, or a string),
-- headers. req is the request info table {method, path, query, headers,
-- body, remote, id} plus params; ctx is { app, config, mgmt = this module }.
local cpx = require("cpx")
local json = require("lib.json")
local http = require("rt.http")
local config = require("rt.config")
local yaml_edit = require("rt.mgmt.yaml_edit")

local type = type
local ipairs = ipairs
local pairs = pairs
local tostring = tostring
local xpcall = xpcall
local format = string.format
local concat = table.concat

local mgmt = cpx.mgmt
local secure_compare = cpx.secure_compare
local log = cpx.log

local PREFIX = "/v0/management"

local _M = {}

-- Route modules mounted under /v0/management, in this order; append a
-- name to add lua/rt/mgmt/<name>.lua.
local MODULES = { "config", "keys", "auth_files", "api_call", "logs", "reqlogs", "oauth", "system", "usage", "refresh",
                  "ampcode", "vertex" }
_M.MODULES = MODULES

local state = {
  app = nil,
  hash = nil,  -- the bcrypt hash of the secret-key, or nil
  plain = nil, -- a plaintext secret-key this worker has not seen hashed
  exact = {},  -- "METHOD /path" -> handler
  patterns = {}, -- { method, pattern, names, handler }
}

local function is_bcrypt(s)
  return type(s) == "string" and s:match("^%$2[aby]%$%d%d%$") ~= nil
end
_M.is_bcrypt = is_bcrypt

-- ---- responses ---------------------------------------------------------

local BASE_HEADERS = {
  ["X-CPA-VERSION"] = mgmt.version,
  ["X-CPA-COMMIT"] = "none",
  ["X-CPA-BUILD-DATE"] = "unknown",
  ["Cache-Control"] = "no-store",
}

local function respond(req, status, body, extra)
  local h = {}
  for k, v in pairs(BASE_HEADERS) do h[k] = v end
  if extra then
    for k, v in pairs(extra) do h[k] = v end
  end
  local ctype
  if type(body) == "table" then
    body = json.encode(body)
    ctype = "application/json; charset=utf-8"
  else
    body = body and tostring(body) or ""
  end
  local has_ct = false
  for k in pairs(h) do
    if k:lower() == "content-type" then has_ct = true end
  end
  if not has_ct then h["Content-Type"] = ctype or "text/plain; charset=utf-8" end
  return req:respond(status, http.headers(nil, h), body)
end

local function err_body(msg, detail)
  if detail then return { error = msg, message = detail } end
  return { error = msg }
end
_M.err = err_body

local go_duration = require("lib.cooldown").go_duration

-- ---- access ------------------------------------------------------------

local function is_loopback(addr)
  if not addr then return false end
  addr = addr:gsub("^%[", ""):gsub("%]:?%d*$", "")
  if addr == "::1" then return true end
  addr = addr:gsub("^::ffff:", "")
  addr = addr:gsub(":%d+$", "")
  return addr:match("^127%.%d+%.%d+%.%d+$") ~= nil
end
_M.is_loopback = is_loopback

local function client_addr(info)
  local a = info.remote or ""
  -- the runtime gives the address alone; be lenient with "ip:port"
  if a:match("^%d+%.%d+%.%d+%.%d+:%d+$") then a = a:gsub(":%d+$", "") end
  return a
end

local function presented(info)
  local auth = info.headers["authorization"]
  if auth and auth ~= "" then
    local scheme, rest = auth:match("^(%S+)%s+(.*)$")
    if scheme and scheme:lower() == "bearer" then return rest end
    return auth
  end
  local k = info.headers["x-management-key"]
  if k and k ~= "" then return k end
  return nil
end

local function enabled()
  return state.hash ~= nil or state.plain ~= nil or mgmt.env_secret() ~= nil
end
_M.enabled = enabled

-- Returns true, or status, message.
local function authenticate(info)
  local addr = client_addr(info)
  local left = mgmt.banned(addr)
  if left then
    return 403, "IP banned due to too many failed attempts. Try again in " .. go_duration(left)
  end
  local env = mgmt.env_secret()
  local rm = state.app.config["remote-management"]
  local allow_remote = rm["allow-remote"] == true or env ~= nil
  if not is_loopback(addr) and not allow_remote then
    return 403, "remote management disabled"
  end
  local key = presented(info)
  if not key then
    mgmt.fail(addr)
    return 401, "missing management key"
  end
  if env and secure_compare(key, env) then
    mgmt.reset(addr)
    return true
  end
  local ok = false
  if state.hash then
    local res, why = mgmt.verify(key, state.hash)
    if res == nil then
      -- too many bcrypt checks at once: not the client's failure
      return 429, "too many management key checks at once, try again (" .. tostring(why) .. ")"
    end
    ok = res
  elseif state.plain then
    ok = secure_compare(key, state.plain)
  end
  if not ok then
    mgmt.fail(addr)
    return 401, "invalid management key"
  end
  mgmt.reset(addr)
  return true
end

-- ---- config.yaml edits (shared by the route modules) -------------------

local function config_path()
  return state.app.config._file
end
_M.config_path = config_path

-- Parses and validates YAML text exactly as a file load does. Returns the
-- normalized config, or nil, kind ("invalid_yaml" | "invalid_config"), msg.
local function validate_text(text)
  local file = config_path() or "config.yaml"
  local doc, lines = cpx.yaml.decode(text, file)
  if not doc then return nil, "invalid_yaml", lines end
  local cfg, err = config.validate(doc, lines, file)
  if not cfg then return nil, "invalid_config", err end
  return cfg
end
_M.validate_text = validate_text

-- The config as it is in the file now (normalized), for reads that must
-- see the last write before the reload has applied it.
function _M.current()
  local text = mgmt.read_file(config_path())
  if text then
    local cfg = validate_text(text)
    if cfg then return cfg, text end
  end
  return state.app.config
end

-- Runs fn(text, doc) -> new_text | nil, status, body over config.yaml and
-- writes the result atomically when it changed and validates. Another
-- writer in between (another worker, an editor) makes it start over.
-- Returns true, or nil, status, body. The file watcher then reloads it
-- (the same path as an edit by hand).
function _M.edit_config(fn)
  local path = config_path()
  for _ = 1, 5 do
    local text, sha = mgmt.read_file(path)
    if not text then return nil, 500, err_body("read_failed", sha) end
    local doc = cpx.yaml.decode(text, path)
    if not doc then doc = {} end
    local new, status, body = fn(text, doc)
    if not new then return nil, status or 400, body end
    local cfg, kind, msg = validate_text(new)
    if not cfg then return nil, kind == "invalid_yaml" and 400 or 422, err_body(kind, msg) end
    if new == text then return true end
    local ok, werr, why = mgmt.write_file(path, new, sha)
    if ok then return true end
    if why ~= "conflict" then return nil, 500, err_body("write_failed", werr) end
  end
  return nil, 409, err_body("conflict", "config.yaml kept changing; try again")
end

-- Sets (value ~= nil) or deletes (value == nil) the key at path.
function _M.set_key(path, value)
  return _M.edit_config(function(text)
    local new, err
    if value == nil then
      new, err = yaml_edit.delete(text, path)
    else
      new, err = yaml_edit.set(text, path, value)
    end
    if not new then return nil, 500, err_body("edit_failed", err) end
    return new
  end)
end

-- A mutation's answer: {"status":"ok"}, or the error.
function _M.saved(ok, status, body)
  if ok then return 200, { status = "ok" } end
  return status, body
end

-- The request body as a JSON value, or nil, 400, body.
function _M.json_body(req)
  local v, err = json.decode(req.body or "")
  if v == nil then return nil, 400, err_body("invalid body", err) end
  return v
end

-- ---- load --------------------------------------------------------------

local function compile(path)
  local names = {}
  local pat = "^" .. path:gsub("[%.%-%+%*%?%[%]%^%$%%]", "%%%0"):gsub(":([%w_]+)", function(n)
    names[#names + 1] = n
    return "([^/]+)"
  end) .. "$"
  return pat, names
end

local function mount(name)
  local file = "rt/mgmt/" .. name .. ".lua"
  local ok, m = pcall(require, "rt.mgmt." .. name)
  if not ok then return nil, tostring(m) end
  if type(m) ~= "table" then return nil, file .. ": module must return a table" end
  if type(m.name) ~= "string" then return nil, file .. ": field 'name' must be a string" end
  if type(m.routes) ~= "table" then return nil, file .. ": field 'routes' must be a list" end
  for i, r in ipairs(m.routes) do
    local where = format("%s: routes[%d]", file, i)
    if type(r) ~= "table" then return nil, where .. " must be a table" end
    if type(r.method) ~= "string" or not r.method:match("^%u+$") then
      return nil, where .. ": field 'method' must be an upper-case HTTP method"
    end
    if type(r.path) ~= "string" or r.path:sub(1, 1) ~= "/" then
      return nil, where .. ": field 'path' must start with '/'"
    end
    if type(r.handler) ~= "function" then return nil, where .. ": field 'handler' must be a function" end
    local key = r.method .. " " .. r.path
    if r.path:find(":", 1, true) then
      local pat, names = compile(r.path)
      state.patterns[#state.patterns + 1] = { method = r.method, pattern = pat, names = names,
                                              handler = r.handler, key = key }
    else
      if state.exact[key] then return nil, where .. ": " .. key .. " is already mounted" end
      state.exact[key] = r.handler
    end
  end
  return true
end

-- Hashes a plaintext secret-key and writes the hash back to config.yaml
-- (CLIProxyAPI does this on load). Only worker 0 of a running server
-- writes; the write is a config change, so the next generation reads the
-- hash. Others (and `cliproxy check`) compare the plaintext meanwhile.
local function hash_secret(secret)
  if not mgmt.primary() then return nil end
  -- At load there is no request to wait in: this runs synchronously, once
  -- (~50 ms), when a plaintext key appears.
  local hash, herr = mgmt.hash(secret, 10)
  if not hash then
    log("error", "management: cannot hash remote-management.secret-key:", herr)
    return nil
  end
  local path = config_path()
  local text, sha = mgmt.read_file(path)
  if not text then
    log("error", "management: cannot read", path, sha)
    return nil
  end
  local new, eerr = yaml_edit.set(text, { "remote-management", "secret-key" }, hash)
  if not new then
    log("error", "management: cannot write the secret-key hash into", path, eerr)
    return nil
  end
  local ok, werr = mgmt.write_file(path, new, sha)
  if not ok then
    log("error", "management: cannot write", path, werr)
    return nil
  end
  log("info", "management: remote-management.secret-key hashed with bcrypt and written back to " .. path)
  return hash
end

-- Called by rt.boot for every generation. Returns true or nil, err.
function _M.init(app)
  state.app = app
  state.exact, state.patterns = {}, {}
  state.hash, state.plain = nil, nil
  local secret = app.config["remote-management"]["secret-key"] or ""
  if secret ~= "" then
    if is_bcrypt(secret) then
      state.hash = secret
    else
      state.hash = hash_secret(secret)
      if not state.hash then state.plain = secret end
    end
  end
  for _, name in ipairs(MODULES) do
    local ok, err = mount(name)
    if not ok then return nil, err end
  end
  -- The only places the management file calls may touch: config.yaml, the
  -- credential directory and the logs directory (checked in C, resolved
  -- with realpath, so ../ and symlinks out of them are refused).
  if mgmt.allow then
    local file = app.config._file or "config.yaml"
    local auth = cpx.store and cpx.store.dir and cpx.store.dir() or app.config["auth-dir"]
    mgmt.allow({ file, (file:match("^(.*)/[^/]*$") or ".") .. "/logs", auth })
  end
  return true
end

-- ---- dispatch ----------------------------------------------------------

local function find_route(method, sub)
  local h = state.exact[method .. " " .. sub]
  if h then return h, {} end
  for _, r in ipairs(state.patterns) do
    if r.method == method then
      local caps = { sub:match(r.pattern) }
      if caps[1] then
        local params = {}
        for i, n in ipairs(r.names) do params[n] = caps[i] end
        return r.handler, params
      end
    end
  end
  return nil
end

local function on_error(e)
  return cpx.traceback and cpx.traceback(tostring(e), 2) or tostring(e)
end

-- Entry from rt.server for every path under /v0/management.
function _M.handle(req, info)
  if not state.app or not enabled() then
    return respond(req, 404, err_body("not found"))
  end
  local ok, msg = authenticate(info)
  if ok ~= true then return respond(req, ok, err_body(msg)) end
  local sub = info.path:sub(#PREFIX + 1)
  if sub == "" then sub = "/" end
  local handler, params = find_route(info.method, sub)
  if not handler then
    return respond(req, 404, err_body("not found", info.method .. " " .. info.path))
  end
  info.params = params
  local ctx = { app = state.app, config = state.app.config, mgmt = _M }
  local res = { xpcall(handler, on_error, info, ctx) }
  if not res[1] then
    log("error", "management handler failed:", res[2])
    if not req:sent() and not req:closed() then
      local first = tostring(res[2]):match("^[^\n]*")
      return respond(req, 500, err_body("internal_error", first))
    end
    return
  end
  if req:sent() or req:closed() then return end
  local status, body, headers = res[2], res[3], res[4]
  if type(status) ~= "number" then
    return respond(req, 500, err_body("internal_error", "handler returned no status"))
  end
  return respond(req, status, body, headers)
end

-- For the specs.
function _M._routes()
  local out = {}
  for k in pairs(state.exact) do out[#out + 1] = k end
  for _, r in ipairs(state.patterns) do out[#out + 1] = r.key end
  table.sort(out)
  return concat(out, "\n")
end

return _M
