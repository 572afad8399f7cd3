-- providers/qwen: Qwen Code's OpenAI-compatible chat API with a
-- `qwen` credential file (entry.oauth).
--
-- Fact sheet §3.6: POST <base>/chat/completions where the base is
-- https://<resource_url>/v1 from the file (the token endpoint names it),
-- else portal.qwen.ai; QwenCode's own headers; stream_options.include_usage
-- forced on streams; at most 60 requests a minute per account (rt.ratelimit
-- below: the 61st is a 429 with Retry-After, so the pool tries another
-- account, or answers model_cooldown when every one is spent).
local openai_compat = require("providers.openai_compat")
local json = require("lib.json")
local ratelimit = require("rt.ratelimit")
local util = require("lib.provider_util")

local type = type
local pairs = pairs
local tostring = tostring

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

local _M = {
  name = "qwen",
  format = "openai_chat",
  base_url = "https://portal.qwen.ai/v1",
  user_agent = "QwenCode/0.14.2 (darwin; arm64)",
  -- requests per window per account (CLIProxyAPI's qwen limiter)
  limit = 60,
  window = 60,
  -- QwenCode's headers besides User-Agent (fact sheet §3.6)
  headers = {
    ["X-Dashscope-Authtype"] = "qwen-oauth",
    ["X-Dashscope-Cachecontrol"] = "enable",
    ["X-Stainless-Lang"] = "js",
    ["X-Stainless-Package-Version"] = "5.11.0",
    ["X-Stainless-Runtime"] = "node",
    ["X-Stainless-Runtime-Version"] = "v22.17.0",
    ["X-Stainless-Os"] = "MacOS",
    ["X-Stainless-Arch"] = "arm64",
    ["X-Stainless-Retry-Count"] = "0",
  },
  oauth = {
    type = "qwen",
    title = "Qwen Code",
    client_id = "f0304373b74a44d2b584a3fb70ca9e56",
    auth_url = "https://chat.qwen.ai/authorize",
    device_url = "https://chat.qwen.ai/api/v1/oauth2/device/code",
    device_token_url = "https://chat.qwen.ai/api/v1/oauth2/token",
    token_url = "https://chat.qwen.ai/api/v1/oauth2/token",
    device_timeout = 15 * 60,
    -- a device flow: no callback server; the fields are required by rt.oauth
    redirect_port = 0,
    redirect_path = "/",
    scopes = "openid profile email model.completion",
    token_body = "form",
    refresh_order = { "grant_type", "refresh_token", "client_id" },
    lead = 20 * 60,
    -- the token endpoint's resource_url (the account's API host) is kept
    credential_fields = function(_, doc, tokens)
      doc.id_token = nil
      if tokens.resource_url then doc.resource_url = tokens.resource_url end
      if doc.resource_url == nil then doc.resource_url = "" end
    end,
  },
}

-- https://<resource_url>/v1; a resource_url with a scheme is used as it is
-- (a mirror or a test server), "/v1" added when missing.
function _M.base_of(entry)
  local r = nonempty(entry.resource_url)
  if not r then return util.base(entry, _M.base_url) end
  if not r:find("^https?://") then r = "https://" .. r end
  r = r:gsub("/+$", "")
  if not r:find("/v1$") then r = r .. "/v1" end
  return r
end

function _M.fixup(body, ctx)
  if body.stream then
    local so = type(body.stream_options) == "table" and json.shallow_copy(body.stream_options) or {}
    so.include_usage = true
    body.stream_options = so
  end
  return body
end

-- The 60-a-minute limiter: a refused request never reaches Qwen.
function _M.admit(ctx, target)
  local id = target.account or (target.entry and target.entry.file) or "?"
  local ok, wait = ratelimit.take("qwen:" .. tostring(id), _M.limit, _M.window)
  if ok then return nil end
  local body = json.encode(json.object({ { "error", json.object({
    { "message", "Qwen rate limit: " .. _M.limit .. " requests per minute per account" },
    { "type", "rate_limit_exceeded" }, { "code", "rate_limit_exceeded" } }) } }))
  return { status = 429, headers = { ["retry-after"] = tostring(wait) }, body = body }
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tostring(key and key["api-key"] or ""),
    ["User-Agent"] = _M.user_agent,
    ["X-Dashscope-Useragent"] = _M.user_agent,
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }
  for k, v in pairs(_M.headers) do headers[k] = v end
  util.add_entry_headers(headers, entry)
  return { method = "POST", url = _M.base_of(entry) .. "/chat/completions", headers = headers, body = body,
           proxy = util.proxy(entry, key) }
end

-- OpenAI-style limits (Retry-After, x-ratelimit-reset-*), as openai_compat reads them.
_M.classify = openai_compat.classify

return _M
