-- rt.doctor: what `cliproxy doctor` checks on the Lua side of a loaded
-- generation: each credential file (type, readable, disabled, token,
-- expiry) and the upstream origins that the C side then probes. The URL of
-- each upstream comes from its provider's own prepare(), so the doctor asks
-- exactly where requests would go.
-- report(app, creds, now) -> { checks = {{level, text, hint}}, upstreams = {{name, url}} }
local json = require("lib.json")
local registry = require("rt.registry")
local oauth = require("rt.oauth")
local cooldown = require("lib.cooldown")

local format = string.format

-- credential type -> the `cliproxy login` name that writes it
local LOGIN_NAMES = { ["gemini-cli"] = "gemini" }
local ipairs = ipairs
local pcall = pcall
local sort = table.sort
local type = type
local floor = math.floor

local _M = {}

local LEAD = 3600 -- an hour before expiry counts as "expires soon"

-- RFC 3339 -> epoch seconds: the one parser the cooldown rules use too.
local parse_time = cooldown.parse_rfc3339
_M.parse_time = parse_time

local function duration(s)
  s = floor(s)
  if s < 120 then return format("%d s", s) end
  if s < 7200 then return format("%d min", floor(s / 60)) end
  if s < 172800 then return format("%d h", floor(s / 3600)) end
  return format("%d days", floor(s / 86400))
end

local function check_credential(c, now)
  local name = c.name
  local kind = registry.CRED_TYPES[c.type]
  if not kind then
    return "warn", format("%s: type '%s' is not served yet; it is skipped", name, tostring(c.type)),
           "claude, codex, gemini, antigravity, qwen, iflow and vertex credential files are served today"
  end
  local ok, doc = pcall(json.decode, c.text)
  if not ok or type(doc) ~= "table" then
    return "error", format("%s: not readable JSON", name), "fix or remove the file"
  end
  doc = oauth.flat(doc) -- Gemini's tokens live in a nested `token`
  local exp_field = doc.expired ~= nil and "expired" or "expiry"
  local who = type(doc.email) == "string" and doc.email ~= "" and " (" .. doc.email .. ")" or ""
  if doc.disabled == true or c.disabled then
    return "warn", format("%s%s: disabled", name, who), "set \"disabled\": false to use it"
  end
  -- A service account (Vertex) signs for a new token whenever it needs one.
  if type(doc.service_account) == "table" then
    return "ok", format("%s%s: %s service account (project %s): tokens are minted when needed", name, who,
                        c.type, tostring(doc.project_id or doc.service_account.project_id)), nil
  end
  local token = doc.access_token or doc.api_key
  if type(token) ~= "string" or token == "" then
    return "error", format("%s%s: no access_token", name, who), "log in again to write a new file"
  end
  local exp = parse_time(doc[exp_field])
  local last = type(doc.last_refresh) == "string" and (", last refresh " .. doc.last_refresh) or ""
  if doc[exp_field] ~= nil and not exp then
    return "warn", format("%s%s: '%s' is not an RFC 3339 time: %s", name, who, exp_field,
                          tostring(doc[exp_field])), nil
  end
  if exp and exp <= now then
    local what = format("%s%s: access token expired %s ago (at %s%s)", name, who, duration(now - exp),
                        doc[exp_field], last)
    -- The proxy refreshes an OAuth account on start and before each use; only
    -- a file without a refresh token needs a new login.
    if type(doc.refresh_token) == "string" and doc.refresh_token ~= "" then
      return "warn", what, "the proxy refreshes it with its refresh token when it runs; "
             .. "if that fails, GET /v0/management/oauth-refresh says why"
    end
    return "error", what, format("no refresh token: log in again with `cliproxy login %s`",
                                 LOGIN_NAMES[c.type] or c.type)
  end
  if exp and exp - now < LEAD then
    return "warn", format("%s%s: access token expires in %s%s", name, who, duration(exp - now), last), nil
  end
  return "ok", format("%s%s: %s, %s%s", name, who, c.type,
                      exp and ("valid for " .. duration(exp - now)) or "no expiry recorded", last), nil
end

-- The scheme://host[:port] of a URL.
local function origin(url)
  return type(url) == "string" and url:match("^(https?://[^/?#]+)") or nil
end

local function upstreams(app)
  local seen, out = {}, {}
  local ctx = { info = { headers = {} }, client_format = "openai_chat", model = "doctor" }
  for _, alias in ipairs(app.registry.order) do
    for _, t in ipairs(app.registry.models[alias]) do
      local p = app.providers[t.provider]
      local ok, req = pcall(p.prepare, ctx, t, "{}", false)
      local o = ok and type(req) == "table" and origin(req.url)
      local who = t.credential and (t.provider .. " " .. t.credential) or t.provider
      local u = o and seen[o]
      if o and not u then
        u = { name = who, url = o, proxy = req.proxy, names = { [who] = true } }
        seen[o] = u
        out[#out + 1] = u
      elseif u and not u.names[who] then
        u.names[who] = true
        u.name = u.name .. ", " .. who
      end
    end
  end
  sort(out, function(a, b) return a.url < b.url end)
  for _, u in ipairs(out) do u.names = nil end
  return out
end

function _M.report(app, creds, now)
  if type(app) ~= "table" or type(creds) ~= "table" then
    error("rt.doctor.report(app, creds, now): bad arguments", 2)
  end
  now = now or 0
  local checks = {}
  local n = #app.registry.order
  if n == 0 then
    checks[#checks + 1] = { "error", "no models are served",
                            "add an upstream (openai-compatibility, claude-api-key, ...) or credential files" }
  else
    checks[#checks + 1] = { "ok", format("%d model(s) served", n) }
  end
  local keys = app.config["api-keys"]
  if type(keys) ~= "table" or #keys == 0 then
    checks[#checks + 1] = { "warn", "api-keys is empty: every client is accepted",
                            "set api-keys before exposing the port beyond this machine" }
  end
  local sorted = {}
  for i, c in ipairs(creds) do sorted[i] = c end
  sort(sorted, function(a, b) return a.name < b.name end)
  for _, c in ipairs(sorted) do
    local level, text, hint = check_credential(c, now)
    checks[#checks + 1] = { level, text, hint }
  end
  return { checks = checks, upstreams = upstreams(app) }
end

return _M
