-- rt.routes.models: the model lists, in the shape each client expects
-- (OpenAI, Claude, Gemini), read from the registry.
local json = require("lib.json")
local http = require("rt.http")

local ipairs = ipairs

local _M = {}

local function models_openai(app, req)
  local data = json.array()
  for _, m in ipairs(app.registry:list()) do
    data[#data + 1] = { id = m.id, object = "model", created = 1700000000, owned_by = m.owner }
  end
  return http.json(req, 200, { object = "list", data = data })
end

local function models_claude(app, req)
  local data = json.array()
  for _, m in ipairs(app.registry:list()) do
    data[#data + 1] = { id = m.id, type = "model", display_name = m.id, created_at = "2024-01-01T00:00:00Z" }
  end
  return http.json(req, 200, { data = data, has_more = false,
                               first_id = data[1] and data[1].id or json.null,
                               last_id = data[#data] and data[#data].id or json.null })
end

-- GET /v1/models answers Claude's shape to Claude Code, OpenAI's to others.
local function models(app, req, info)
  local ua = info.headers["user-agent"] or ""
  if ua:sub(1, 10) == "claude-cli" or info.headers["anthropic-version"] then
    return models_claude(app, req)
  end
  return models_openai(app, req)
end

local function gemini_model(m)
  return { name = "models/" .. m.id, version = "001", displayName = m.id, description = m.id,
           inputTokenLimit = 1048576, outputTokenLimit = 65536,
           supportedGenerationMethods = json.array({ "generateContent", "streamGenerateContent", "countTokens" }) }
end

-- GET /v1beta/models (rt.routes.gemini)
function _M.gemini_list(app, req)
  local out = json.array()
  for _, m in ipairs(app.registry:list()) do out[#out + 1] = gemini_model(m) end
  return http.json(req, 200, { models = out })
end

-- GET /v1beta/models/<id> (rt.routes.gemini)
function _M.gemini_one(app, req, id)
  if not app.registry:lookup(id) then return http.error(req, "gemini", 404, "model " .. id .. " not found") end
  return http.json(req, 200, gemini_model({ id = id }))
end

_M.routes = {
  ["GET /v1/models"] = { models, fmt = "openai_chat" },
}

return _M
