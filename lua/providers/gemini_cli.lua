-- providers/gemini_cli: Gemini through Google's Code Assist API (the
-- Gemini CLI login: a `gemini` credential file, entry.oauth).
--
-- Fact sheet §3.3: the Gemini request goes to cloudcode-pa's v1internal
-- methods wrapped as {model, project, request}; the answers come back as
-- {"response": {...}} (non-stream, each SSE event, countTokens), which
-- response_fixup / stream_fixup unwrap before anything else reads them.
-- Function-call parts of model turns carry the thoughtSignature that
-- tells the backend to skip signature validation (a client's history from
-- another upstream has no valid signature). The project is the account's
-- (the file's project_id, chosen at login).
--
-- The envelope helpers are shared with providers/antigravity.lua.
local json = require("lib.json")
local oauth = require("rt.oauth")
local util = require("lib.provider_util")
local gemini = require("providers.gemini")

local type = type
local pairs = pairs
local pcall = pcall
local ipairs = ipairs
local format = string.format
local encode = json.encode

local SKIP_SIGNATURE = "skip_thought_signature_validator"

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

-- The Google OAuth token file as Go's oauth2 writes it (`token`), with the
-- plugin's top-level copy (rt.oauth reads those).
local function google_credential(f, doc, tokens, old, now)
  if tokens.expires_in then doc.expiry = oauth.format_time(now + tokens.expires_in) end
  -- Gemini files say `expiry`; `expired` stays only where a file had it
  if not (type(old) == "table" and old.expired ~= nil) then doc.expired = nil end
  if not (type(old) == "table" and nonempty(old.id_token)) then doc.id_token = nil end
  doc.token_type = tokens.token_type or doc.token_type or "Bearer"
  if type(old) == "table" and nonempty(old.type) then doc.type = old.type end
  local t = type(old) == "table" and type(old.token) == "table" and json.shallow_copy(old.token)
    or json.object({ { "access_token", "" }, { "token_type", "" }, { "refresh_token", "" }, { "expiry", "" },
                     { "token_uri", "" }, { "client_id", "" }, { "client_secret", "" }, { "scopes", "" },
                     { "universe_domain", "" } })
  t.access_token = doc.access_token
  t.token_type = doc.token_type
  t.refresh_token = doc.refresh_token
  t.expiry = doc.expiry
  t.token_uri = f.token_url
  t.client_id = f.client_id
  t.client_secret = f.client_secret
  if type(t.scopes) ~= "table" then
    local list = json.array({})
    for s in f.scopes:gmatch("%S+") do list[#list + 1] = s end
    t.scopes = list
  end
  t.universe_domain = "googleapis.com"
  doc.token = t
end

local _M = {
  name = "gemini-cli",
  format = "gemini",
  base_url = "https://cloudcode-pa.googleapis.com",
  path = "/v1internal",
  -- Gemini CLI's own headers (fact sheet §3.3; internal/misc/header_utils.go)
  user_agent = "GeminiCLI/0.31.0/%s (%s)",
  platform = "darwin; arm64",
  api_client = "google-genai-sdk/1.41.0 gl-node/v22.19.0",
  classify = gemini.classify,
  -- The Gemini CLI login (cliproxyapi.md §3.3, the plugin's PKCE from
  -- cliproxyapi-oauth-updates.md); rt.oauth and rt.login_gemini read it.
  -- oauth-endpoints.gemini overrides the URLs.
  oauth = {
    type = "gemini",
    title = "Google (Gemini CLI)",
    client_id = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
    -- Google's installed-app secret, public in Gemini CLI's source (RFC 8252 §8.5)
    client_secret = "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",
    auth_url = "https://accounts.google.com/o/oauth2/v2/auth",
    token_url = "https://oauth2.googleapis.com/token",
    userinfo_url = "https://www.googleapis.com/oauth2/v1/userinfo?alt=json",
    projects_url = "https://cloudresourcemanager.googleapis.com/v1/projects",
    -- a project chosen by the user must have this API on (checked, else enabled)
    service_usage_url = "https://serviceusage.googleapis.com",
    service = "cloudaicompanion.googleapis.com",
    api_base_url = "https://cloudcode-pa.googleapis.com",
    redirect_port = 8085,
    redirect_path = "/oauth2callback",
    scopes = "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email "
      .. "https://www.googleapis.com/auth/userinfo.profile",
    authorize_extra = { { "access_type", "offline" }, { "prompt", "consent" } },
    token_body = "form",
    exchange_order = { "code", "client_id", "client_secret", "redirect_uri", "grant_type", "code_verifier" },
    refresh_order = { "client_id", "client_secret", "grant_type", "refresh_token" },
    -- none in CLIProxyAPI (oauth2 refreshes when a request finds the token
    -- expired): rt.refresh does the same on demand; the scheduler acts at expiry
    lead = 0,
    -- onboardUser is asked again every this many seconds until done, this often
    onboard_interval = 2,
    onboard_tries = 30,
    credential_fields = google_credential,
    -- gemini-<email>-<project>.json (CLIProxyAPI's CredentialFileName)
    file_name = function(_, doc)
      return format("gemini-%s-%s.json", oauth.safe_name(nonempty(doc.email) or "account"),
                    oauth.safe_name(nonempty(doc.project_id) or "default"))
    end,
  },
}
_M.google_credential = google_credential
_M.SKIP_SIGNATURE = SKIP_SIGNATURE

-- contents with every function-call part of a model turn carrying
-- thoughtSignature = sig (all = false: only parts without one). Copies
-- what it changes: the nested tables belong to the client's body.
function _M.sign_function_calls(contents, sig, all)
  if type(contents) ~= "table" then return contents end
  local out, changed = json.array({}), false
  for i, c in ipairs(contents) do
    out[i] = c
    if type(c) == "table" and c.role == "model" and type(c.parts) == "table" then
      local parts, pc = json.array({}), false
      for j, p in ipairs(c.parts) do
        parts[j] = p
        if type(p) == "table" and p.functionCall ~= nil and (all or not nonempty(p.thoughtSignature)) then
          local q = json.shallow_copy(p)
          q.thoughtSignature = sig
          parts[j] = q
          pc = true
        end
      end
      if pc then
        local nc = json.shallow_copy(c)
        nc.parts = parts
        out[i] = nc
        changed = true
      end
    end
  end
  return changed and out or contents
end

function _M.fixup(body)
  body.contents = _M.sign_function_calls(body.contents, SKIP_SIGNATURE, true)
  return body
end

-- The v1internal envelope around an encoded Gemini request. fields:
-- {{k, v}, ...} before `request` (values JSON-encoded here, nil left out).
function _M.envelope(fields, body)
  local out = { "{" }
  for _, kv in ipairs(fields) do
    if kv[2] ~= nil then
      out[#out + 1] = encode(kv[1]) .. ":" .. encode(kv[2]) .. ","
    end
  end
  out[#out + 1] = '"request":'
  out[#out + 1] = body
  out[#out + 1] = "}"
  return table.concat(out)
end

-- countTokens takes {request: {model: "models/<m>", contents}} (no project).
function _M.count_body(body, model)
  local b = json.decode(body)
  if type(b) ~= "table" then return body end
  local inner = type(b.generateContentRequest) == "table" and json.shallow_copy(b.generateContentRequest) or b
  inner.model = "models/" .. model
  return encode(json.object({ { "request", inner } }))
end

-- The account's project: the file's project_id (the first of a list).
function _M.project(entry)
  local p = nonempty(entry.project_id)
  return p and p:match("^%s*([^,%s]+)") or nil
end

function _M.action(ctx, stream)
  return util.gemini_action(ctx, stream)
end

-- {"response": {...}} -> {...}
function _M.response_fixup(doc)
  if type(doc) == "table" and type(doc.response) == "table" then return doc.response end
  return doc
end

-- Each SSE event's {"response": {...}} -> {...}, framing kept.
function _M.stream_fixup(ev)
  local data = ev and ev.data
  if type(data) ~= "string" or data:byte(1) ~= 123 then return ev end
  local ok, d = pcall(json.decode, data)
  if not ok or type(d) ~= "table" or type(d.response) ~= "table" then return ev end
  local e = {}
  for k, v in pairs(ev) do e[k] = v end
  e.data = encode(d.response)
  return e
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local model = target.upstream_model
  -- the answer comes wrapped: rt.pipeline (and the count route) unwrap it
  ctx.fixup_response = true
  local headers = util.add_entry_headers({
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. (key and key["api-key"] or ""),
    ["User-Agent"] = format(_M.user_agent, model, _M.platform),
    ["X-Goog-Api-Client"] = _M.api_client,
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }, entry)
  if ctx.endpoint == "count_tokens" then
    body = _M.count_body(body, model)
  else
    body = _M.envelope({ { "model", model }, { "project", _M.project(entry) } }, body)
  end
  local url = util.base(entry, _M.base_url) .. _M.path .. _M.action(ctx, stream)
  return { method = "POST", url = url, headers = headers, body = body, proxy = util.proxy(entry, key) }
end

return _M
