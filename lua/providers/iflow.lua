-- providers/iflow: iFlow's OpenAI-compatible chat API with an `iflow`
-- credential file (entry.oauth). What goes upstream is the file's
-- api_key (the OAuth token only serves to look it up, rt.login_iflow).
--
-- Fact sheet §3.7: POST https://apis.iflow.cn/v1/chat/completions with
-- User-Agent iFlow-Cli, a session-id, the time in ms and
-- x-iflow-signature = hex(HMAC-SHA256(api_key, "iFlow-Cli:<session-id>:<ms>")).
-- Thinking for GLM and MiniMax models is chat_template_kwargs.
local cpx = require("cpx")
local openai_compat = require("providers.openai_compat")
local json = require("lib.json")
local oauth = require("rt.oauth")
local util = require("lib.provider_util")

local type = type
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local format = string.format
local floor = math.floor
local lower = string.lower

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

local _M = {
  name = "iflow",
  format = "openai_chat",
  base_url = "https://apis.iflow.cn/v1",
  user_agent = "iFlow-Cli",
  oauth = {
    type = "iflow",
    title = "iFlow",
    client_id = "10009311001",
    -- iFlow CLI's client secret, public in its client
    client_secret = "4Z3YjXycVsQvyGF1etiNlIBB4RsqSDtW",
    auth_url = "https://iflow.cn/oauth",
    token_url = "https://iflow.cn/oauth/token",
    userinfo_url = "https://iflow.cn/api/oauth/getUserInfo",
    -- the cookie login's key endpoint (oauth-endpoints.iflow.api-key-url)
    api_key_url = "https://platform.iflow.cn/api/openapi/apikey",
    redirect_port = 11451,
    redirect_path = "/oauth2callback",
    scopes = "",
    pkce = false,
    token_body = "form",
    exchange_order = { "grant_type", "code", "redirect_uri", "client_id", "client_secret" },
    refresh_order = { "grant_type", "refresh_token", "client_id", "client_secret" },
    lead = 24 * 3600,
    -- the key the upstream takes (rt.refresh, rt.registry)
    upstream_token = "api_key",
  },
}

local f = _M.oauth
f.token_headers = { Authorization = "Basic " .. cpx.base64.encode(f.client_id .. ":" .. f.client_secret) }

-- iFlow's authorize page is not RFC 6749's: its own parameter names.
function f.build_authorize(facts, o)
  return facts.auth_url .. "?" .. oauth.form({ { "loginMethod", "phone" }, { "type", "phone" },
    { "redirect", o.redirect_uri }, { "state", o.state }, { "client_id", facts.client_id } })
end

function f.credential_fields(_, doc, tokens, old)
  doc.id_token = nil
  for _, k in ipairs({ "api_key", "token_type", "scope", "cookie" }) do
    if tokens[k] ~= nil then doc[k] = tokens[k] end
    if doc[k] == nil then doc[k] = type(old) == "table" and old[k] or "" end
  end
end

-- iflow-<email>-<unix>.json (the CLI login); the cookie login names its own
function f.file_name(_, doc, tokens)
  if tokens and tokens.file_name then return tokens.file_name end
  return format("iflow-%s-%d.json", oauth.safe_name(nonempty(doc.email) or "account"), floor(cpx.now()))
end

-- GET <userinfo_url>?accessToken=... -> {api_key, email} | nil, err
function _M.user_info(facts, request, token)
  local status, h, body = request({ method = "GET", url = facts.userinfo_url .. "?accessToken=" .. oauth.pct(token),
                                     headers = { Accept = "application/json" } })
  if not status then return nil, format("network error: %s: %s", facts.userinfo_url, tostring(h)) end
  local ok, d = pcall(json.decode, body or "")
  local data = ok and type(d) == "table" and type(d.data) == "table" and d.data or nil
  if status ~= 200 or not data then
    return nil, format("the API-key lookup failed: %s answered %d", facts.userinfo_url, status)
  end
  local key = nonempty(data.apiKey)
  if not key then return nil, facts.userinfo_url .. " answered without an apiKey" end
  return { api_key = key, email = nonempty(data.email) or nonempty(data.phone) }
end

-- After each token refresh the key is looked up again (iFlow may rotate it).
function f.after_refresh(facts, doc, opts)
  local info, err = _M.user_info(facts, function(req) return oauth.request(req, opts) end, doc.access_token)
  if not info then return nil, { kind = "http", message = err } end
  doc.api_key = info.api_key
  if info.email then doc.email = info.email end
  return doc
end

-- The signature headers (fact sheet §3.7); pure, for the specs.
function _M.sign(api_key, session_id, ms)
  return cpx.hmac_sha256_hex(api_key, format("%s:%s:%s", _M.user_agent, session_id, tostring(ms)))
end

-- GLM and MiniMax think through chat_template_kwargs (fact sheet §3.7).
function _M.fixup(body)
  local m = type(body.model) == "string" and lower(body.model) or ""
  if body.reasoning_effort ~= nil and (m:find("^glm") or m:find("^minimax")) then
    local on = body.reasoning_effort ~= "none"
    local kw = type(body.chat_template_kwargs) == "table" and json.shallow_copy(body.chat_template_kwargs) or {}
    kw.enable_thinking = on
    if m:find("^glm") then kw.clear_thinking = false end
    body.chat_template_kwargs = kw
    if m:find("^minimax") then body.reasoning_split = on end
    body.reasoning_effort = nil
  end
  if body.stream then
    local so = type(body.stream_options) == "table" and json.shallow_copy(body.stream_options) or {}
    so.include_usage = true
    body.stream_options = so
  end
  return body
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local api_key = tostring(key and key["api-key"] or "")
  local session = "session-" .. cpx.uuid()
  local ms = floor(cpx.now() * 1000)
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. api_key,
    ["User-Agent"] = _M.user_agent,
    ["session-id"] = session,
    ["x-iflow-timestamp"] = tostring(ms),
    ["x-iflow-signature"] = _M.sign(api_key, session, ms),
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }
  util.add_entry_headers(headers, entry)
  return { method = "POST", url = util.base(entry, _M.base_url) .. "/chat/completions", headers = headers,
           body = body, proxy = util.proxy(entry, key) }
end

-- OpenAI-style limits (Retry-After, x-ratelimit-reset-*), as openai_compat reads them.
_M.classify = openai_compat.classify

return _M
