-- providers/gemini: the Gemini API with an AI Studio key (`gemini-api-key`).
local cooldown = require("rt.cooldown")

local pairs = pairs

local _M = {
  name = "gemini-api-key",
  format = "gemini",
  base_url = "https://generativelanguage.googleapis.com",
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
  return { method = "POST", url = join(base, "/v1beta/models/" .. target.upstream_model .. action),
           headers = headers, body = body,
           proxy = entry["proxy-url"] ~= "" and entry["proxy-url"] or nil }
end

-- Gemini puts its reset in the body: RetryInfo.retryDelay, and a PerDay
-- QuotaFailure means the daily quota (cool until the daily reset).
function _M.classify(status, headers, body)
  local hint
  if status == 429 then hint = cooldown.gemini_reset(body) or cooldown.retry_after(headers) end
  return cooldown.classify(status, headers, body, hint)
end

return _M
