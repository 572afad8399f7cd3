-- providers/openai_compat: any OpenAI-compatible Chat Completions service
-- (OpenRouter and the like), configured by `openai-compatibility` entries.
local cooldown = require("lib.cooldown")

local util = require("lib.provider_util")

local _M = {
  name = "openai-compatibility",
  format = "openai_chat",
  user_agent = "cli-proxy-openai-compat",
  -- prepare() depends only on the account and the body goes as written:
  -- http and https entries without a proxy are served by the C relay
  -- (rt.lane).
  relay = {},
}


-- Builds the upstream request: { url, method, headers, body }.
-- target = { entry = <config entry>, key = <api-key entry>, upstream_model }
function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = _M.user_agent,
  }
  if key and key["api-key"] and key["api-key"] ~= "" then
    headers["Authorization"] = "Bearer " .. key["api-key"]
  end
  if stream then
    headers["Accept"] = "text/event-stream"
    headers["Cache-Control"] = "no-cache"
  else
    headers["Accept"] = "application/json"
  end
  util.add_entry_headers(headers, entry)
  return {
    method = "POST",
    url = util.base(entry, "") .. "/chat/completions",
    headers = headers,
    body = body,
    proxy = util.proxy(entry, key),
  }
end

-- What to do with an upstream answer before anything reached the client:
-- action, cooldown kind, reset hint (lib.cooldown). OpenAI-style services
-- give Retry-After and x-ratelimit-reset-*.
function _M.classify(status, headers, body)
  local hint
  if status == 429 then hint = cooldown.retry_after(headers) or cooldown.openai_reset(headers) end
  return cooldown.classify(status, headers, body, hint)
end

return _M
