-- providers/vertex: Vertex AI's Gemini models with an API key
-- (`vertex-api-key`). Same wire format and errors as the Gemini API; the
-- path is Vertex's publisher path and the key goes in x-goog-api-key.
-- A base-url (e.g. a Vertex-compatible gateway) replaces the Google host.
local gemini = require("providers.gemini")

local pairs = pairs

local _M = {
  name = "vertex-api-key",
  format = "gemini",
  base_url = "https://aiplatform.googleapis.com",
  classify = gemini.classify,
}

local function join(base, path)
  if base:sub(-1) == "/" then base = base:sub(1, -2) end
  return base .. path
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local base = (entry["base-url"] and entry["base-url"] ~= "") and entry["base-url"] or _M.base_url
  local action
  if ctx.endpoint == "count_tokens" then
    action = ":countTokens"
  elseif stream then
    action = ":streamGenerateContent?alt=sse"
  else
    action = ":generateContent"
  end
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Goog-Api-Key"] = key and key["api-key"] or entry["api-key"],
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }
  for hk, hv in pairs(entry.headers or {}) do headers[hk] = hv end
  return { method = "POST", url = join(base, "/v1/publishers/google/models/" .. target.upstream_model .. action),
           headers = headers, body = body,
           proxy = entry["proxy-url"] ~= "" and entry["proxy-url"] or nil }
end

return _M
