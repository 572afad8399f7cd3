-- providers/gemini: the Gemini API with an AI Studio key (`gemini-api-key`).
local cooldown = require("lib.cooldown")

local util = require("lib.provider_util")

local _M = {
  name = "gemini-api-key",
  format = "gemini",
  base_url = "https://generativelanguage.googleapis.com",
  model_path = "/v1beta/models/",
  -- prepare() depends only on the account (the model is in the path) and
  -- the body goes as written: plain-http keys are served by the C relay.
  relay = {},
}

-- The request for provider p (gemini or one that reuses it, like vertex):
-- {base}{p.model_path}{model}{action}, key in x-goog-api-key.
function _M.build(p, ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local headers = util.add_entry_headers({
    ["Content-Type"] = "application/json",
    ["X-Goog-Api-Key"] = key and key["api-key"] or entry["api-key"],
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }, entry)
  local url = util.base(entry, p.base_url) .. p.model_path .. target.upstream_model
    .. util.gemini_action(ctx, stream)
  return { method = "POST", url = url, headers = headers, body = body, proxy = util.proxy(entry, key) }
end

function _M.prepare(ctx, target, body, stream)
  return _M.build(_M, ctx, target, body, stream)
end

-- Gemini puts its reset in the body: RetryInfo.retryDelay, and a PerDay
-- QuotaFailure means the daily quota (cool until the daily reset).
function _M.classify(status, headers, body)
  local hint
  if status == 429 then hint = cooldown.gemini_reset(body) or cooldown.retry_after(headers) end
  return cooldown.classify(status, headers, body, hint)
end

return _M
