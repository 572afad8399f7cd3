-- providers/vertex: Vertex AI's Gemini models with an API key
-- (`vertex-api-key`). Same wire format and errors as the Gemini API; the
-- path is Vertex's publisher path and the key goes in x-goog-api-key.
-- A base-url (e.g. a Vertex-compatible gateway) replaces the Google host.
local gemini = require("providers.gemini")

local _M = {
  name = "vertex-api-key",
  format = "gemini",
  base_url = "https://aiplatform.googleapis.com",
  model_path = "/v1/publishers/google/models/",
  classify = gemini.classify,
}

function _M.prepare(ctx, target, body, stream)
  return gemini.build(_M, ctx, target, body, stream)
end

return _M
