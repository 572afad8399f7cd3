-- rt.oauth: the OAuth pieces shared by `cliproxy login` and the refresh
-- engine: PKCE, authorize URLs, token requests and their answers, and the
-- credential files in CLIProxyAPI's names and fields.
--
-- The facts of each provider (URLs, client id, scopes, port, lead time)
-- are data in its module (`oauth = {...}` in lua/providers/<name>.lua), so
-- following a provider's change means editing Lua; `oauth-endpoints` in the
-- config overrides the URLs (mirrors, tests). Everything here is pure
-- except `request` and `refresh`, which yield on cpx.fetch.
local cpx = require("cpx")
local json = require("lib.json")
local cooldown = require("lib.cooldown")

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local format = string.format
local byte = string.byte
local gsub = string.gsub
local setmetatable = setmetatable

local _M = {}

local PROVIDERS = { claude = "providers.claude", codex = "providers.codex",
                    gemini = "providers.gemini_cli", ["gemini-cli"] = "providers.gemini_cli",
                    antigravity = "providers.antigravity", qwen = "providers.qwen",
                    iflow = "providers.iflow", vertex = "providers.vertex_sa" }
_M.PROVIDERS = PROVIDERS

-- oauth-endpoints.<name> keys -> facts fields
local OVERRIDES = {
  ["auth-url"] = "auth_url",
  ["token-url"] = "token_url",
  ["device-url"] = "device_url",
  ["device-token-url"] = "device_token_url",
  ["device-verify-url"] = "device_verify_url",
  ["api-base-url"] = "api_base_url",
  ["userinfo-url"] = "userinfo_url",
  ["projects-url"] = "projects_url",
  ["service-usage-url"] = "service_usage_url",
  ["api-key-url"] = "api_key_url",
}
_M.OVERRIDES = OVERRIDES

local FIELDS = {
  "client_id", "auth_url", "token_url", "redirect_port", "redirect_path", "scopes", "lead",
  "token_body", "type",
}

-- ---- small pure helpers ---------------------------------------------------

-- RFC 3986 unreserved characters stay; everything else is %XX.
local function pct(s)
  return (gsub(tostring(s), "[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end
_M.pct = pct

local function unpct(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
_M.unpct = unpct

-- pairs: { {k, v}, ... } in order -> "k=v&k=v"
local function form(list)
  local out = {}
  for i, kv in ipairs(list) do out[i] = pct(kv[1]) .. "=" .. pct(kv[2]) end
  return concat(out, "&")
end
_M.form = form

-- "a=1&b=2" -> { a = "1", b = "2" } (first value wins)
function _M.parse_query(q)
  local t = {}
  for part in tostring(q or ""):gmatch("[^&]+") do
    local k, v = part:match("^([^=]*)=?(.*)$")
    k = unpct(k)
    if k ~= "" and t[k] == nil then t[k] = unpct(v) end
  end
  return t
end

local ordered = json.object
_M.ordered = ordered

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

-- ---- facts ----------------------------------------------------------------

-- The provider's `oauth` data merged with cfg["oauth-endpoints"][name].
function _M.facts(name, cfg)
  local modname = PROVIDERS[name]
  if not modname then return nil, "no OAuth login for '" .. tostring(name) .. "'" end
  local ok, p = pcall(require, modname)
  if not ok then return nil, tostring(p) end
  local base = type(p) == "table" and p.oauth
  if type(base) ~= "table" then return nil, modname .. ": no 'oauth' table" end
  local f = { provider = name }
  for k, v in pairs(base) do f[k] = v end
  for _, k in ipairs(FIELDS) do
    if f[k] == nil then return nil, format("providers/%s.lua: oauth.%s is missing", name, k) end
  end
  local over = cfg and cfg["oauth-endpoints"] and cfg["oauth-endpoints"][name]
  if type(over) == "table" then
    for ck, fk in pairs(OVERRIDES) do
      if nonempty(over[ck]) then f[fk] = over[ck] end
    end
    -- A mirror of the device endpoints usually moves both: derive the poll
    -- URL from the user-code URL unless it is given too.
    if nonempty(over["device-url"]) and not nonempty(over["device-token-url"])
        and over["device-url"]:find("/usercode$") then
      f.device_token_url = (over["device-url"]:gsub("/usercode$", "/token"))
    end
    -- The fixed callback port (the login's listener and the is_webui
    -- forwarder), for a machine where it is taken, and for tests.
    if type(over["callback-port"]) == "number" then f.redirect_port = over["callback-port"] end
    -- A provider that polls its token endpoint (Qwen) follows token-url.
    if base.device_token_url and base.device_token_url == base.token_url
        and not nonempty(over["device-token-url"]) then
      f.device_token_url = f.token_url
    end
  end
  return f
end

-- ---- PKCE and the authorize URL -------------------------------------------

-- RFC 7636: a 43-character verifier from 32 random bytes, S256 challenge.
function _M.pkce()
  local verifier = cpx.base64.encode(cpx.random_bytes(32), true)
  local challenge = cpx.base64.encode(cpx.sha256(verifier), true)
  return verifier, challenge
end

function _M.new_state()
  return cpx.base64.encode(cpx.random_bytes(24), true)
end

function _M.redirect_uri(f, port)
  return format("http://localhost:%d%s", tonumber(port) or f.redirect_port, f.redirect_path)
end

function _M.authorize_url(f, o)
  if type(o) ~= "table" or not o.state or not o.challenge or not o.redirect_uri then
    error("oauth.authorize_url: state, challenge and redirect_uri are required", 2)
  end
  -- a provider whose authorize page takes its own parameters (iFlow)
  if f.build_authorize then return f.build_authorize(f, o) end
  local q = {}
  for _, kv in ipairs(f.authorize_params or {}) do q[#q + 1] = kv end
  q[#q + 1] = { "client_id", f.client_id }
  q[#q + 1] = { "response_type", "code" }
  q[#q + 1] = { "redirect_uri", o.redirect_uri }
  q[#q + 1] = { "scope", f.scopes }
  -- pkce = false: a plain code exchange with the client secret (Antigravity)
  if f.pkce ~= false then
    q[#q + 1] = { "code_challenge", o.challenge }
    q[#q + 1] = { "code_challenge_method", "S256" }
  end
  for _, kv in ipairs(f.authorize_extra or {}) do q[#q + 1] = kv end
  q[#q + 1] = { "state", o.state }
  return f.auth_url .. (f.auth_url:find("?", 1, true) and "&" or "?") .. form(q)
end

-- ---- token requests (pure) ------------------------------------------------

local function token_req(f, list)
  local headers = {}
  for k, v in pairs(f.token_headers or {}) do headers[k] = v end
  local body
  if f.token_body == "json" then
    headers["Content-Type"] = "application/json"
    body = json.encode(ordered(list))
  else
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    body = form(list)
  end
  headers["Accept"] = headers["Accept"] or "application/json"
  return { method = "POST", url = f.token_url, headers = headers, body = body }
end

-- Claude's pasted code may carry its state after '#'.
function _M.split_code(code)
  local c, s = tostring(code or ""):match("^([^#]*)#(.*)$")
  if c then return c, s end
  return code
end

function _M.exchange_request(f, o)
  if type(o) ~= "table" or not o.code or not o.verifier or not o.redirect_uri then
    error("oauth.exchange_request: code, verifier and redirect_uri are required", 2)
  end
  local list = {}
  for _, k in ipairs(f.exchange_order) do
    local v
    if k == "grant_type" then v = "authorization_code"
    elseif k == "code" then v = o.code
    elseif k == "redirect_uri" then v = o.redirect_uri
    elseif k == "client_id" then v = f.client_id
    elseif k == "client_secret" then v = f.client_secret
    elseif k == "code_verifier" then v = o.verifier
    elseif k == "state" then v = o.state
    end
    if v ~= nil then list[#list + 1] = { k, v } end
  end
  return token_req(f, list)
end

function _M.refresh_request(f, refresh_token)
  if not nonempty(refresh_token) then error("oauth.refresh_request: refresh_token is required", 2) end
  local list = {}
  for _, k in ipairs(f.refresh_order) do
    local v
    if k == "grant_type" then v = "refresh_token"
    elseif k == "client_id" then v = f.client_id
    elseif k == "client_secret" then v = f.client_secret
    elseif k == "refresh_token" then v = refresh_token
    elseif k == "scope" then v = f.refresh_scope or f.scopes
    end
    if v ~= nil then list[#list + 1] = { k, v } end
  end
  return token_req(f, list)
end

-- ---- JWT claims (no verification: the token came from the token endpoint
-- over TLS; we only read the account facts it carries) ---------------------

function _M.jwt_claims(token)
  if not nonempty(token) then return nil end
  local payload = token:match("^[^.]+%.([^.]+)")
  if not payload then return nil end
  payload = gsub(gsub(payload, "-", "+"), "_", "/")
  payload = payload .. string.rep("=", (4 - #payload % 4) % 4)
  local raw = cpx.base64.decode(payload)
  if not raw then return nil end
  local ok, t = pcall(json.decode, raw)
  if ok and type(t) == "table" then return t end
  return nil
end

-- ---- answers --------------------------------------------------------------

local function header(h, name)
  if type(h) ~= "table" then return nil end
  return h[name] or h[name:lower()]
end

local function retry_after(h)
  local v = tonumber(header(h, "retry-after"))
  if v then return v end
  local ms = tonumber(header(h, "retry-after-ms"))
  return ms and ms / 1000 or nil
end

-- status, headers, body -> tokens | nil, err
function _M.parse_token_response(f, status, headers, body)
  local doc
  if type(body) == "string" and body ~= "" then
    local ok, d = pcall(json.decode, body)
    if ok and type(d) == "table" then doc = d end
  end
  if status ~= 200 then
    local code = doc and (type(doc.error) == "string" and doc.error
                          or type(doc.error) == "table" and (doc.error.type or doc.error.code))
    local msg = doc and (doc.error_description or doc.message
                         or type(doc.error) == "table" and doc.error.message) or nil
    code = code and tostring(code) or nil
    local kind = "http"
    if code == "invalid_grant" or code == "refresh_token_reused" or code == "refresh_token_expired"
        or code == "refresh_token_invalidated" then
      kind = "invalid_grant"
    elseif status == 429 then
      kind = "rate_limited"
    end
    local text = msg and tostring(msg) or code
    if not text then text = (type(body) == "string" and body:sub(1, 200)) or "" end
    return nil, { kind = kind, status = status, code = code,
                  message = format("token endpoint answered %d%s%s", status,
                                   code and (": " .. code) or "",
                                   (msg and code) and (" (" .. tostring(msg) .. ")") or
                                     (not code and text ~= "" and (": " .. text) or "")),
                  retry_after = retry_after(headers) }
  end
  if not doc or not nonempty(doc.access_token) then
    return nil, { kind = "bad_response", status = status, message = "token endpoint answer has no access_token" }
  end
  local t = {
    access_token = doc.access_token,
    refresh_token = nonempty(doc.refresh_token),
    id_token = nonempty(doc.id_token),
    expires_in = tonumber(doc.expires_in),
    token_type = doc.token_type,
    -- Qwen's API host for this account; iFlow's granted scope
    resource_url = nonempty(doc.resource_url),
    scope = nonempty(doc.scope),
  }
  if type(doc.account) == "table" then
    t.email = nonempty(doc.account.email_address) or nonempty(doc.account.email)
    t.account_uuid = nonempty(doc.account.uuid)
  end
  if type(doc.organization) == "table" then
    t.organization_uuid = nonempty(doc.organization.uuid)
    t.organization_name = nonempty(doc.organization.name)
  end
  local claims = _M.jwt_claims(t.id_token)
  if claims then
    t.email = t.email or nonempty(claims.email)
    local auth = claims["https://api.openai.com/auth"]
    if type(auth) == "table" then
      t.account_id = nonempty(auth.chatgpt_account_id)
      t.plan = nonempty(auth.chatgpt_plan_type)
    end
  end
  return t
end

-- ---- times ----------------------------------------------------------------

-- RFC 3339 both ways lives in lib.cooldown (rate-limit resets use it too).
_M.parse_time = cooldown.parse_rfc3339
_M.format_time = cooldown.format_rfc3339

function _M.expiry(doc)
  if type(doc) ~= "table" then return nil end
  return _M.parse_time(doc.expired) or _M.parse_time(doc.expiry)
end

-- When the account should be refreshed next: expiry - lead, else
-- last_refresh + lead (or + refresh_interval_seconds), else now.
function _M.due(f, doc, now)
  now = now or cpx.now()
  local interval = tonumber(doc and doc.refresh_interval_seconds)
  local last = _M.parse_time(doc and doc.last_refresh)
  if interval and interval > 0 then
    return (last or now) + interval
  end
  local exp = _M.expiry(doc)
  if exp then return exp - f.lead end
  if last then return last + f.lead end
  return now
end

-- ---- the credential file --------------------------------------------------

-- CLIProxyAPI's fields, in the order its files have them.
local ORDER = {
  claude = { "id_token", "access_token", "refresh_token", "last_refresh", "email", "type", "expired",
             "account_uuid", "organization_uuid", "organization_name" },
  codex = { "id_token", "access_token", "refresh_token", "account_id", "last_refresh", "email", "type",
            "expired" },
  -- v6's nested oauth2 token first; the plugin's top-level copy after it
  gemini = { "token", "project_id", "email", "auto", "checked", "type", "access_token", "refresh_token",
             "token_type", "expiry", "last_refresh" },
  antigravity = { "type", "access_token", "refresh_token", "expires_in", "timestamp", "expired", "email",
                  "project_id", "last_refresh" },
  qwen = { "access_token", "refresh_token", "last_refresh", "resource_url", "email", "type", "expired" },
  iflow = { "access_token", "refresh_token", "last_refresh", "expired", "api_key", "email", "token_type", "scope",
            "cookie", "type" },
}

-- tokens + the file's previous content -> the new document. The old
-- document's keys keep their places (and unknown fields stay); new keys go
-- where CLIProxyAPI writes them.
function _M.credential(f, tokens, old, now)
  now = now or cpx.now()
  local doc
  if type(old) == "table" then
    doc = json.shallow_copy(old)
  else
    local keys = {}
    for i, k in ipairs(ORDER[f.type] or ORDER.claude) do keys[i] = k end
    doc = setmetatable({}, keys)
  end
  doc.type = f.type
  doc.access_token = tokens.access_token
  -- RFC 9700 §4.14: a server that does not rotate sends no new token; the
  -- old one stays valid and must be kept.
  doc.refresh_token = tokens.refresh_token or (type(old) == "table" and old.refresh_token) or ""
  doc.id_token = tokens.id_token or (type(old) == "table" and old.id_token) or ""
  doc.last_refresh = _M.format_time(now)
  if tokens.expires_in then doc.expired = _M.format_time(now + tokens.expires_in) end
  if tokens.email then doc.email = tokens.email end
  if f.type == "codex" and tokens.account_id then doc.account_id = tokens.account_id end
  if f.type == "claude" then
    for _, k in ipairs({ "account_uuid", "organization_uuid", "organization_name" }) do
      if tokens[k] then doc[k] = tokens[k] end
    end
  end
  if doc.email == nil then doc.email = "" end
  -- A provider whose file has more (Gemini's nested token, Antigravity's
  -- timestamp) fills it in: f.credential_fields(f, doc, tokens, old, now).
  if f.credential_fields then f.credential_fields(f, doc, tokens, old, now) end
  return doc
end

-- The document as the refresh engine and the registry read it: a file
-- that keeps its tokens in a nested object (Gemini CLI's `token`, as Go's
-- oauth2 writes it) gets them at the top level too, where the rest of
-- the fields of every other type live. Other documents come back as-is.
function _M.flat(doc)
  if type(doc) ~= "table" or nonempty(doc.access_token) or type(doc.token) ~= "table" then return doc end
  local t = doc.token
  local d = json.shallow_copy(doc)
  d.access_token = nonempty(t.access_token)
  if d.refresh_token == nil then d.refresh_token = nonempty(t.refresh_token) end
  if d.expiry == nil and d.expired == nil then d.expiry = nonempty(t.expiry) end
  if d.token_type == nil then d.token_type = nonempty(t.token_type) end
  return d
end

function _M.encode(doc)
  return json.encode(doc)
end

-- A name safe as a file name: what CLIProxyAPI keeps of an email.
local function safe(s)
  return (gsub(tostring(s or ""), "[^%w%.%-_@+]", "_"))
end
_M.safe_name = safe

-- claude-<email>.json; codex-<email>-<plan>.json, and for team plans
-- codex-<sha256(account_id)[:8]>-<email>-team.json (CLIProxyAPI v6).
function _M.file_name(f, doc, tokens)
  -- a provider with its own names (Gemini's project, Antigravity's) says so
  if f.file_name then return f.file_name(f, doc, tokens) end
  local email = nonempty(doc.email) or "account"
  if f.type == "codex" then
    local plan = (tokens and tokens.plan) or nonempty(doc.plan_type)
    if not plan then
      local claims = _M.jwt_claims(doc.id_token)
      local auth = claims and claims["https://api.openai.com/auth"]
      plan = type(auth) == "table" and nonempty(auth.chatgpt_plan_type) or nil
    end
    if plan == "team" and nonempty(doc.account_id) then
      return format("codex-%s-%s-team.json", cpx.sha256_hex(doc.account_id):sub(1, 8), safe(email))
    end
    return plan and format("codex-%s-%s.json", safe(email), safe(plan)) or format("codex-%s.json", safe(email))
  end
  return format("%s-%s.json", f.type, safe(email))
end

-- ---- I/O (yields) ---------------------------------------------------------

-- Sends req; returns status, headers, body or nil, err (a string).
function _M.request(req, opts)
  local timeout = opts and opts.timeout or 30
  local fetch, err = cpx.fetch({ method = req.method, url = req.url, headers = req.headers, body = req.body,
                                 connect_timeout = 10, first_byte_timeout = timeout, idle_timeout = timeout,
                                 proxy = opts and opts.proxy })
  if not fetch then return nil, tostring(err) end
  local body, berr = fetch:body()
  local status, headers = fetch:status(), fetch:headers()
  fetch:close()
  if not body then return nil, tostring(berr) end
  return status, headers, body
end

-- One refresh-token grant; returns the new document or nil, err (a table
-- as parse_token_response gives). No lock, no write: the caller does both.
function _M.refresh(f, doc, opts)
  -- A provider whose new token comes another way (a service account's
  -- signed assertion, Vertex) says so: f.refresh_grant(f, doc, opts).
  if f.refresh_grant then return f.refresh_grant(f, doc, opts) end
  if type(doc) ~= "table" or not nonempty(doc.refresh_token) then
    return nil, { kind = "invalid_grant", message = "the credential has no refresh_token" }
  end
  local status, headers, body = _M.request(_M.refresh_request(f, doc.refresh_token), opts)
  if not status then
    return nil, { kind = "network", message = f.token_url .. ": " .. tostring(headers) }
  end
  local tokens, err = _M.parse_token_response(f, status, headers, body)
  if not tokens then return nil, err end
  local new = _M.credential(f, tokens, doc, cpx.now())
  -- A provider with more to fetch on the new token (iFlow's API key). Its
  -- failure keeps the new tokens (the old refresh token may be spent).
  if f.after_refresh then
    local d, aerr = f.after_refresh(f, new, opts)
    if d then
      new = d
    elseif cpx.log then
      cpx.log("warn", "refresh: " .. tostring(type(aerr) == "table" and aerr.message or aerr))
    end
  end
  return new, nil, tokens
end

return _M
