-- rt.server: the request entry point. C calls handle(req, info) in a fresh
-- coroutine for every request; it routes, checks access, decodes the body
-- and hands inference requests to rt.pipeline.
local cpx = require("cpx")
local json = require("rt.json")
local http = require("rt.http")
local access = require("rt.access")
local pipeline = require("rt.pipeline")

local log = cpx.log
local xpcall = xpcall
local type = type
local tostring = tostring
local traceback = cpx.traceback
local ipairs = ipairs

local _M = {}
local app -- set by init

function _M.init(a)
  app = a
end

local function health(req)
  return http.json(req, 200, '{"status":"ok"}')
end

local function root(req, info)
  if info.method == "HEAD" then return req:respond(200, http.headers("application/json"), "") end
  return http.json(req, 200, {
    message = "CLI Proxy API Server",
    endpoints = json.array({ "POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models" }),
  })
end

local function models_openai(req)
  local data = json.array()
  for _, m in ipairs(app.registry:list()) do
    data[#data + 1] = { id = m.id, object = "model", created = 1700000000, owned_by = m.owner }
  end
  return http.json(req, 200, { object = "list", data = data })
end

local function models_claude(req)
  local data = json.array()
  for _, m in ipairs(app.registry:list()) do
    data[#data + 1] = { id = m.id, type = "model", display_name = m.id, created_at = "2024-01-01T00:00:00Z" }
  end
  return http.json(req, 200, { data = data, has_more = false,
                               first_id = data[1] and data[1].id or json.null,
                               last_id = data[#data] and data[#data].id or json.null })
end

local function models(req, info)
  local ua = info.headers["user-agent"] or ""
  if ua:sub(1, 10) == "claude-cli" or info.headers["anthropic-version"] then
    return models_claude(req)
  end
  return models_openai(req)
end

-- Decodes a JSON object body or answers 400 in the client's format.
local function decode_body(req, info, fmt)
  local body, err = json.decode(info.body)
  if type(body) ~= "table" or json.is_array(body) then
    http.error(req, fmt, 400, "invalid JSON body: " .. (err or "expected an object"))
    return nil
  end
  return body
end

local function chat_completions(req, info)
  local body = decode_body(req, info, "openai_chat")
  if not body then return end
  return pipeline.infer(app, req, info, "openai_chat", body,
    { model = body.model, stream = body.stream == true })
end

-- route table: "METHOD path" -> { handler, format, public }
local routes = {
  ["GET /healthz"] = { health, public = true },
  ["HEAD /healthz"] = { health, public = true },
  ["GET /"] = { root, public = true },
  ["HEAD /"] = { root, public = true },
  ["GET /v1/models"] = { models, fmt = "openai_chat" },
  ["POST /v1/chat/completions"] = { chat_completions, fmt = "openai_chat" },
}
_M.routes = routes

local function format_for_path(path)
  if path:find("^/v1/messages") then return "claude" end
  if path:find("^/v1/responses") then return "openai_responses" end
  if path:find("^/v1beta/") then return "gemini" end
  return "openai_chat"
end

local function dispatch(req, info)
  if info.method == "OPTIONS" then
    return req:respond(204, http.headers(nil), "")
  end
  local route = routes[info.method .. " " .. info.path]
  local fmt = route and route.fmt or format_for_path(info.path)
  if not route then
    return http.error(req, fmt, 404, "not found: " .. info.method .. " " .. info.path, nil, "not_found")
  end
  if not route.public then
    local ok, why = access.check(app.config["api-keys"], info)
    if not ok then return http.error(req, fmt, 401, why) end
  end
  return route[1](req, info)
end

local function on_error(e)
  return traceback and traceback(tostring(e), 2) or tostring(e)
end

-- Entry from C. Any script error becomes a clean 500 in the client's
-- format naming the script and line; the traceback goes to the log.
function _M.handle(req, info)
  local ok, err = xpcall(dispatch, on_error, req, info)
  if ok then return end
  log("error", "script error:", err)
  if not req:sent() and not req:closed() then
    local msg = tostring(err):match("^[^\n]*") or "script error"
    http.error(req, format_for_path(info.path), 500, "script error: " .. msg, "server_error", "script_error")
  end
end

return _M
