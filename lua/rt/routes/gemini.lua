-- rt.routes.gemini: everything under /v1beta/models, where the model and
-- the method are in the path (models/<id>:<method>).
local http = require("rt.http")
local models = require("rt.routes.models")
local inference = require("rt.routes.inference")
local count = require("rt.routes.count")

local _M = {}

local function gemini_action(app, req, info, model, action)
  if action == "countTokens" then return count.gemini_count(app, req, info, model) end
  if action ~= "generateContent" and action ~= "streamGenerateContent" then
    return http.error(req, "gemini", 404, "unknown method " .. action)
  end
  return inference.gemini_generate(app, req, info, model, action)
end

local function gemini_route(app, req, info)
  local path = info.path
  if info.method == "GET" then
    if path == "/v1beta/models" then return models.gemini_list(app, req) end
    local id = path:match("^/v1beta/models/([^:]+)$")
    if id then return models.gemini_one(app, req, id) end
  elseif info.method == "POST" then
    local model, action = path:match("^/v1beta/models/([^:]+):(%a+)$")
    if model then return gemini_action(app, req, info, model, action) end
  end
  return http.error(req, "gemini", 404, "not found: " .. info.method .. " " .. path)
end

-- Mounted by prefix (rt.server): any method, any path under it.
_M.prefixes = {
  { "^/v1beta/models", { gemini_route, fmt = "gemini" } },
}

return _M
