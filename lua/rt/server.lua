-- rt.server: the request entry point. C calls handle(req, info) in a fresh
-- coroutine for every request; it finds the route, runs the access checks
-- and calls the route's handler. The handlers live in lua/rt/routes/, one
-- file per area; this file keeps only the dispatch table and the entry.
local cpx = require("cpx")
local http = require("rt.http")
local access = require("rt.access")
local mw = require("rt.middleware")
local lane = require("rt.lane")
local management = require("rt.management")
local record = require("rt.record")

local log = cpx.log
local xpcall = xpcall
local tostring = tostring
local ipairs = ipairs
local pairs = pairs
local error = error
local traceback = cpx.traceback

local _M = {}
local app -- set by init

function _M.init(a)
  app = a
end

-- ---- routing --------------------------------------------------------------

-- The route modules: each has `routes` ("METHOD path" -> { handler(app,
-- req, info), fmt = client format, public = no key needed }) and may have
-- `prefixes` (a list of { pattern, route } tried in order when no exact
-- route matches).
local MODULES = { "health", "models", "inference", "count", "gemini", "panel" }

local routes, prefixes = {}, {}
for _, name in ipairs(MODULES) do
  local m = require("rt.routes." .. name)
  for k, r in pairs(m.routes or {}) do
    if routes[k] then error("rt.routes." .. name .. ": route '" .. k .. "' is already taken") end
    routes[k] = r
  end
  for _, p in ipairs(m.prefixes or {}) do prefixes[#prefixes + 1] = p end
end
_M.routes = routes

-- cpx_errbody_format (runtime/core/cpx_errbody.c) makes this decision for the
-- answers built in C; test_errbody pins its table, keep the two in step.
local function format_for_path(path)
  if path:find("^/v1/messages") then return "claude" end
  if path:find("^/v1/responses") then return "openai_responses" end
  if path:find("^/v1beta/") then return "gemini" end
  return "openai_chat"
end

local function find_route(info)
  local route = routes[info.method .. " " .. info.path]
  if route then return route end
  for _, p in ipairs(prefixes) do
    if info.path:find(p[1]) then return p[2] end
  end
  return nil
end

local function dispatch(req, info)
  if info.method == "OPTIONS" then
    return req:respond(204, http.headers(nil), "")
  end
  local path = info.path
  -- The management API has its own keys and errors (rt.management).
  if path:sub(1, 14) == "/v0/management" and (#path == 14 or path:sub(15, 15) == "/") then
    return management.handle(req, info)
  end
  local route = find_route(info)
  local fmt = route and route.fmt or format_for_path(info.path)
  -- [record] what kind of request this is; the usage store keeps
  -- inference and counting, metrics count everything.
  local rec = record.of(info)
  if rec then
    rec.client_format = fmt
    if route and not route.public then
      rec.kind = (info.path:find("count_tokens", 1, true) or info.path:find(":countTokens", 1, true))
        and "count" or "inference"
    end
  end
  if not route then
    return http.error(req, fmt, 404, "not found: " .. info.method .. " " .. info.path, nil, "not_found")
  end
  if not route.public then
    local ok, why = access.check(app.config["api-keys"], info)
    if not ok then return http.error(req, fmt, 401, why) end
    if rec and why then rec.client_key = record.key_label(why) end -- [record] label, never the key
    local allowed, status, msg = mw.run(app.middleware, "access", { info = info, client_format = fmt })
    if allowed == false then return http.error(req, fmt, status or 403, msg or "forbidden") end
  end
  return route[1](app, req, info)
end

local function on_error(e)
  -- at the memory cap a traceback would need memory too (and fail as
  -- "error in error handling", hiding the cause)
  if type(e) == "string" and e:find("not enough memory", 1, true) then return e end
  return traceback and traceback(tostring(e), 2) or tostring(e)
end

-- Entry from C. Any script error becomes a clean 500 in the client's
-- format naming the script and line; the traceback goes to the log.
function _M.handle(req, info)
  local rec = record.begin(info, format_for_path(info.path), nil) -- [record]
  record.bind(req, rec)
  local ok, err = xpcall(dispatch, on_error, req, info)
  lane.refresh(app)
  -- [record] a stream finishes its record when it ends (rt.pipeline)
  if not rec.deferred then record.finish(rec, req:status(), not ok and "script error" or nil) end
  if ok then return mw.done(app.middleware, info, nil, req:status()) end
  log("error", "script error:", err)
  if not req:sent() and not req:closed() then
    local msg = tostring(err):match("^[^\n]*") or "script error"
    if msg:find("not enough memory", 1, true) then
      -- the VM's cap, not the host's memory: say which setting it is
      msg = msg .. " (the Lua memory cap is reached: lua.memory-limit-mb)"
    end
    http.error(req, format_for_path(info.path), 500, "script error: " .. msg, "server_error", "script_error")
  end
  mw.done(app.middleware, info, err, req:status())
end

return _M
