-- providers/claude: Anthropic Messages with an API key (`claude-api-key`).
-- The official host takes the key in x-api-key; a custom base-url gets
-- Authorization: Bearer (as CLIProxyAPI does).
local cooldown = require("rt.cooldown")

local util = require("rt.provider_util")

local _M = {
  name = "claude-api-key",
  format = "claude",
  base_url = "https://api.anthropic.com",
  anthropic_version = "2023-06-01",
  -- Impersonation strings change often: data, not code.
  user_agent = "claude-cli/2.1.63 (external, cli)",
  oauth_beta = "oauth-2025-04-20",
  -- The Claude Code login (cliproxyapi.md §3.2 and its OAuth update):
  -- URLs, client id and scopes as Claude Code sends them. oauth-endpoints
  -- in the config overrides the URLs; rt.oauth reads this table.
  oauth = {
    type = "claude",
    client_id = "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
    auth_url = "https://claude.ai/oauth/authorize",
    token_url = "https://platform.claude.com/v1/oauth/token",
    redirect_port = 54545,
    redirect_path = "/callback",
    scopes = "user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload",
    authorize_params = { { "code", "true" } },
    token_body = "json",
    -- Claude Code 2.1.220's key order; the state rides along.
    exchange_order = { "grant_type", "code", "redirect_uri", "client_id", "code_verifier", "state" },
    refresh_order = { "grant_type", "refresh_token", "client_id", "scope" },
    token_headers = { ["User-Agent"] = "axios/1.15.2", ["Accept"] = "application/json, text/plain, */*" },
    lead = 4 * 3600,
  },
}


local function official(base)
  return base:find("^https://api%.anthropic%.com") ~= nil
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local base = util.base(entry, _M.base_url)
  local client = ctx.info and ctx.info.headers or {}
  local headers = {
    ["Content-Type"] = "application/json",
    ["Anthropic-Version"] = (ctx.client_format == "claude" and client["anthropic-version"]) or _M.anthropic_version,
    ["User-Agent"] = _M.user_agent,
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }
  if ctx.client_format == "claude" and client["anthropic-beta"] then
    headers["Anthropic-Beta"] = client["anthropic-beta"]
  end
  local k = key and key["api-key"] or entry["api-key"]
  if official(base) and not entry.oauth then
    headers["X-Api-Key"] = k
  else
    headers["Authorization"] = "Bearer " .. k
  end
  if entry.oauth then
    -- A Claude Code login (auth-dir credential): its token needs the beta.
    local beta = headers["Anthropic-Beta"]
    if not beta then
      headers["Anthropic-Beta"] = _M.oauth_beta
    elseif not beta:find(_M.oauth_beta, 1, true) then
      headers["Anthropic-Beta"] = beta .. "," .. _M.oauth_beta
    end
  end
  util.add_entry_headers(headers, entry)
  local path = ctx.endpoint == "count_tokens" and "/v1/messages/count_tokens?beta=true" or "/v1/messages?beta=true"
  return { method = "POST", url = base .. path, headers = headers, body = body,
           proxy = util.proxy(entry, key) }
end

-- Anthropic sends retry-after with its 429s, and the reset of every limit
-- as anthropic-ratelimit-*-reset (RFC 3339); 529 overloaded is transient.
function _M.classify(status, headers, body)
  local hint
  if status == 429 then hint = cooldown.retry_after(headers) or cooldown.anthropic_reset(headers) end
  return cooldown.classify(status, headers, body, hint)
end

return _M
