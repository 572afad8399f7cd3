-- providers/codex: the OpenAI Responses API, by default the ChatGPT Codex
-- backend, with a key (`codex-api-key`) or a ChatGPT login (a `codex`
-- credential file: entry.oauth). That backend only streams, so the request
-- always asks for a stream and a non-stream client gets the collected
-- response.completed object (rt.pipeline).
--
-- Fact sheet §3.1: the body fix-ups below, prompt_cache_key (also sent as
-- Session_id) derived so that one conversation keeps one cache key,
-- Originator and Chatgpt-Account-Id for logins, the client's Version /
-- X-Codex-Turn-Metadata / X-Client-Request-Id passed on, and the plan
-- limit (resets_in_seconds / resets_at) as the account's cooldown.
local cpx = require("cpx")
local cooldown = require("lib.cooldown")
local json = require("lib.json")
local util = require("lib.provider_util")

local type = type
local ipairs = ipairs
local pairs = pairs
local concat = table.concat
local lower = string.lower

local _M = {
  name = "codex-api-key",
  format = "openai_responses",
  base_url = "https://chatgpt.com/backend-api/codex",
  force_stream = true,
  -- Impersonation strings (data): the user-agent when neither the client
  -- nor codex-header-defaults gives one, the Originator of logins.
  user_agent = "codex-tui/0.146.0 (Mac OS 26.3.1; arm64) iTerm.app/3.6.9 (codex-tui; 0.146.0)",
  originator = "codex-tui",
  -- Client headers passed on as they are.
  pass_headers = { { "version", "Version" }, { "x-codex-turn-metadata", "X-Codex-Turn-Metadata" },
                   { "x-client-request-id", "X-Client-Request-Id" } },
  -- prompt_cache_key of a chat/Gemini client: a UUIDv5 (OID name space) of
  -- this prefix and the client's key, as CLIProxyAPI derives it.
  cache_key_prefix = "cli-proxy-api:codex:prompt-cache:",
  -- An answer in these words is the model's capacity, not the request: 429.
  capacity_words = { "model is at capacity", "selected model is at capacity", "model_at_capacity" },
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

local ENCRYPTED = "reasoning.encrypted_content"

-- instructions must be a string: absent or null becomes "", a list of
-- content parts becomes their text.
local function instructions(v)
  if type(v) == "string" then return v end
  if type(v) == "table" then
    local out = {}
    for _, p in ipairs(v) do
      if type(p) == "string" then
        out[#out + 1] = p
      elseif type(p) == "table" and type(p.text) == "string" then
        out[#out + 1] = p.text
      end
    end
    return concat(out, "\n")
  end
  return ""
end
_M.instructions = instructions

-- The conversation's cache key (also the Session_id header), or nil:
-- the Responses body's own prompt_cache_key; for a Claude client a UUIDv5
-- of its metadata.user_id (user: the translated body's `user`, which
-- carries it); else a UUIDv5 of the client's key (CLIProxyAPI does this
-- for chat clients; a Responses client without a key of its own gets it
-- too, so its turns share a cache).
function _M.cache_key(body, ctx, user)
  if type(body.prompt_cache_key) == "string" and body.prompt_cache_key ~= "" then
    return body.prompt_cache_key
  end
  local cb = ctx.body
  if ctx.client_format == "claude" then
    if type(cb) == "table" and type(cb.metadata) == "table" then user = cb.metadata.user_id end
    if type(user) == "string" and user ~= "" then
      return util.uuid5(util.NS_OID, _M.cache_key_prefix .. "claude:" .. user)
    end
  end
  local k = util.client_key(ctx.info)
  if not k then return nil end
  return util.uuid5(util.NS_OID, _M.cache_key_prefix .. k)
end

-- Applied to the upstream body table before it is encoded (the top level
-- is the pipeline's copy; nested tables are replaced, not edited).
function _M.fixup(body, ctx)
  local user = body.user
  for _, k in ipairs(DROP) do body[k] = nil end
  if body.service_tier ~= "priority" then body.service_tier = nil end
  body.stream = true
  body.store = false
  body.instructions = instructions(body.instructions)
  local inc = json.array({})
  local has = false
  for i, v in ipairs(type(body.include) == "table" and body.include or {}) do
    inc[i] = v
    if v == ENCRYPTED then has = true end
  end
  if not has then
    inc[#inc + 1] = ENCRYPTED
    body.include = inc
  end
  if body.parallel_tool_calls == nil then body.parallel_tool_calls = true end
  local r = type(body.reasoning) == "table" and json.shallow_copy(body.reasoning) or {}
  if r.summary == nil then
    r.summary = "auto"
    body.reasoning = r
  end
  if ctx then
    local key = _M.cache_key(body, ctx, user)
    if key then
      body.prompt_cache_key = key
      ctx.codex_session = key
    end
  end
  return body
end

-- The top-level members fixup reads or writes: what raw_fixup hands it.
local FIX_KEYS = { "model", "stream", "user", "service_tier", "store", "instructions", "include",
                   "parallel_tool_calls", "reasoning", "prompt_cache_key" }
for _, k in ipairs(DROP) do
  local seen = false
  for _, f in ipairs(FIX_KEYS) do if f == k then seen = true end end
  if not seen then FIX_KEYS[#FIX_KEYS + 1] = k end
end

-- fixup on the client's own bytes (a Responses client): the members
-- fixup looks at are decoded alone (json.top), fixup runs on them, and the
-- result is written back with json.edit, so the rest of a 78 KB body
-- (input, tools) is copied, never decoded. Returns the upstream bytes, or
-- nil (and the reason) when the table path must do it (an escaped key).
-- `set` are the members the pipeline sets on any body (model, stream).
function _M.raw_fixup(raw, ctx, set)
  local view, err = json.top(raw, FIX_KEYS)
  if not view then return nil, err end
  local orig = {}
  for k, v in pairs(view) do orig[k] = v end
  for k, v in pairs(set or {}) do view[k] = v end
  view = _M.fixup(view, ctx) or view
  -- only what changed is written (fixup replaces tables, never edits
  -- them), so an unchanged member keeps its bytes, escapes included
  local put, drop = {}, {}
  for k, v in pairs(view) do
    if v ~= orig[k] then put[k] = v end
  end
  for k in pairs(orig) do
    if view[k] == nil then drop[#drop + 1] = k end
  end
  return json.edit(raw, put, drop)
end

local function header_default(ctx, name)
  local d = ctx.config and ctx.config["codex-header-defaults"]
  local v = type(d) == "table" and d[name]
  if type(v) == "string" and v ~= "" then return v end
  return nil
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local base = util.base(entry, _M.base_url)
  local client = ctx.info and ctx.info.headers or {}
  local ua = client["user-agent"] or header_default(ctx, "user-agent") or _M.user_agent
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. (key and key["api-key"] or entry["api-key"]),
    ["Accept"] = "text/event-stream",
    ["Connection"] = "Keep-Alive",
    ["User-Agent"] = ua,
  }
  for _, h in ipairs(_M.pass_headers) do
    local v = client[h[1]]
    if v ~= nil and v ~= "" then headers[h[2]] = v end
  end
  if entry.oauth then
    headers["Originator"] = client.originator or _M.originator
    if entry.account_id then headers["Chatgpt-Account-Id"] = entry.account_id end
  end
  local session = ctx.codex_session
  if not session and ua:find("Mac OS", 1, true) then session = cpx.uuid() end
  if session then headers["Session_id"] = session end
  util.add_entry_headers(headers, entry)
  local path = ctx.endpoint == "compact" and "/responses/compact" or "/responses"
  return { method = "POST", url = base .. path, headers = headers, body = body,
           proxy = util.proxy(entry, key) }
end

-- "The selected model is at capacity" is a 429 (another account or a
-- later try may get through), whatever status it came with.
function _M.error_status(status, headers, body)
  if status == 429 or type(body) ~= "string" then return status end
  local b = lower(body:sub(1, 4096))
  for _, w in ipairs(_M.capacity_words) do
    if b:find(w, 1, true) then return 429 end
  end
  return status
end

-- The ChatGPT backend's plan limit: 429 usage_limit_reached with
-- resets_at (epoch s) or resets_in_seconds, and x-codex-primary-* headers.
function _M.classify(status, headers, body)
  status = _M.error_status(status, headers, body)
  local hint
  if status == 429 then hint = cooldown.codex_reset(headers, body) or cooldown.retry_after(headers) end
  return cooldown.classify(status, headers, body, hint)
end

return _M
