-- providers/codex: the OpenAI Responses API with a key (`codex-api-key`),
-- by default the ChatGPT Codex backend. That backend only streams, so the
-- request always asks for a stream and a non-stream client gets the
-- collected response.completed object.
local cooldown = require("rt.cooldown")

local util = require("rt.provider_util")
local ipairs = ipairs

local _M = {
  name = "codex-api-key",
  format = "openai_responses",
  base_url = "https://chatgpt.com/backend-api/codex",
  force_stream = true,
  user_agent = "codex_cli_rs/0.171.0",
  -- The ChatGPT login (cliproxyapi.md §3.1): rt.oauth reads this table;
  -- oauth-endpoints in the config overrides the URLs.
  oauth = {
    type = "codex",
    client_id = "app_EMoamEEZ73f0CkXaXp7hrann",
    auth_url = "https://auth.openai.com/oauth/authorize",
    token_url = "https://auth.openai.com/oauth/token",
    device_url = "https://auth.openai.com/api/accounts/deviceauth/usercode",
    device_token_url = "https://auth.openai.com/api/accounts/deviceauth/token",
    device_verify_url = "https://auth.openai.com/codex/device",
    device_redirect_uri = "https://auth.openai.com/deviceauth/callback",
    device_timeout = 15 * 60,
    redirect_port = 1455,
    redirect_path = "/auth/callback",
    scopes = "openid email profile offline_access",
    refresh_scope = "openid profile email",
    authorize_extra = { { "prompt", "login" }, { "id_token_add_organizations", "true" },
                        { "codex_cli_simplified_flow", "true" } },
    token_body = "form",
    exchange_order = { "grant_type", "client_id", "code", "redirect_uri", "code_verifier" },
    refresh_order = { "grant_type", "client_id", "refresh_token", "scope" },
    lead = 5 * 86400,
  },
}


-- Codex rejects these (fact sheet: Codex request fix-ups).
local DROP = { "max_output_tokens", "max_completion_tokens", "temperature", "top_p",
               "truncation", "user", "context_management", "previous_response_id",
               "prompt_cache_retention", "safety_identifier", "stream_options" }

-- Applied to the upstream body table before it is encoded.
function _M.fixup(body)
  for _, k in ipairs(DROP) do body[k] = nil end
  if body.service_tier ~= "priority" then body.service_tier = nil end
  body.stream = true
  body.store = false
  return body
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local base = util.base(entry, _M.base_url)
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. (key and key["api-key"] or entry["api-key"]),
    ["Accept"] = "text/event-stream",
    ["User-Agent"] = (ctx.info and ctx.info.headers["user-agent"]) or _M.user_agent,
  }
  if entry.account_id then headers["Chatgpt-Account-Id"] = entry.account_id end
  util.add_entry_headers(headers, entry)
  local path = ctx.endpoint == "compact" and "/responses/compact" or "/responses"
  return { method = "POST", url = base .. path, headers = headers, body = body,
           proxy = util.proxy(entry, key) }
end

-- The ChatGPT backend's plan limit: 429 usage_limit_reached with
-- resets_at (epoch s) or resets_in_seconds, and x-codex-primary-* headers.
function _M.classify(status, headers, body)
  local hint
  if status == 429 then hint = cooldown.codex_reset(headers, body) or cooldown.retry_after(headers) end
  return cooldown.classify(status, headers, body, hint)
end

return _M
