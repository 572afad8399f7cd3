-- providers/antigravity: Gemini through Google's Antigravity agent API
-- (an `antigravity` credential file, entry.oauth).
--
-- Fact sheet §3.4: the same v1internal methods as the Gemini CLI, the
-- request wrapped as {model, userAgent, requestType, project, requestId,
-- request: {..., sessionId}} without safetySettings; the answers wrapped
-- in {"response": ...} (unwrapped by gemini_cli's hooks). Without a
-- base-url the hosts below are tried in order: the next one on a
-- connection error, a 5xx or a 429 (rt.pipeline, ureq.fallback_urls).
-- Function-call parts of model turns without a thoughtSignature get the
-- skip-validation one (history from another upstream has none); tool
-- schemas are cleaned as for Gemini.
local cpx = require("cpx")
local json = require("lib.json")
local schema = require("lib.schema")
local oauth = require("rt.oauth")
local util = require("lib.provider_util")
local cli = require("providers.gemini_cli")
local gemini = require("providers.gemini")

local type = type
local ipairs = ipairs
local format = string.format
local tonumber = tonumber

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

local _M = {
  name = "antigravity",
  format = "gemini",
  path = "/v1internal",
  -- tried in this order (fact sheet §3.4)
  base_urls = {
    "https://cloudcode-pa.googleapis.com",
    "https://daily-cloudcode-pa.googleapis.com",
    "https://daily-cloudcode-pa.sandbox.googleapis.com",
  },
  -- CLIProxyAPI fetches the version from Antigravity's updater manifest;
  -- here it is data (a file's `headers` can override the User-Agent)
  user_agent = "antigravity/1.16.5 darwin/arm64",
  classify = gemini.classify,
  response_fixup = cli.response_fixup,
  stream_fixup = cli.stream_fixup,
  oauth = {
    type = "antigravity",
    title = "Google (Antigravity)",
    client_id = "1071006060591-tmhssin2h21lcre235vtolojh4g403ep.apps.googleusercontent.com",
    -- Antigravity's installed-app secret, public in its client (RFC 8252 §8.5)
    client_secret = "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",
    auth_url = "https://accounts.google.com/o/oauth2/v2/auth",
    token_url = "https://oauth2.googleapis.com/token",
    userinfo_url = "https://www.googleapis.com/oauth2/v2/userinfo",
    api_base_url = "https://cloudcode-pa.googleapis.com",
    redirect_port = 51121,
    redirect_path = "/oauth-callback",
    scopes = "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email "
      .. "https://www.googleapis.com/auth/userinfo.profile https://www.googleapis.com/auth/cclog "
      .. "https://www.googleapis.com/auth/experimentsandconfigs",
    authorize_extra = { { "access_type", "offline" }, { "prompt", "consent" } },
    -- a plain authorization-code exchange with the client secret
    pkce = false,
    token_body = "form",
    exchange_order = { "code", "client_id", "client_secret", "redirect_uri", "grant_type" },
    refresh_order = { "client_id", "client_secret", "grant_type", "refresh_token" },
    lead = 5 * 60,
    onboard_interval = 2,
    onboard_tries = 30,
    credential_fields = function(_, doc, tokens, old, now)
      if not (type(old) == "table" and nonempty(old.id_token)) then doc.id_token = nil end
      if tokens.expires_in then doc.expires_in = tokens.expires_in end
      doc.timestamp = math.floor(now * 1000)
    end,
    -- antigravity-<email>.json, antigravity.json without an email
    file_name = function(_, doc)
      local email = nonempty(doc.email)
      return email and format("antigravity-%s.json", oauth.safe_name(email)) or "antigravity.json"
    end,
  },
}

-- "-<int>": a stable hash of the conversation's first user text, so one
-- conversation keeps one session.
function _M.session_id(contents)
  local text = ""
  for _, c in ipairs(type(contents) == "table" and contents or {}) do
    if type(c) == "table" and (c.role == "user" or c.role == nil) and type(c.parts) == "table" then
      for _, p in ipairs(c.parts) do
        if type(p) == "table" and type(p.text) == "string" then
          text = p.text
          break
        end
      end
      break
    end
  end
  -- 52 bits: an integer a double holds exactly
  local n = tonumber(cpx.sha256_hex(text):sub(1, 13), 16)
  return format("-%.0f", n)
end

-- Antigravity validates tool schemas strictly (CLIProxyAPI cleans them,
-- util.CleanJSONSchemaForAntigravity): a Gemini client's declarations get
-- lib.schema's Gemini cleaning, which the hub already applies to translated
-- requests. Copies what it changes.
function _M.clean_tools(tools)
  if type(tools) ~= "table" then return tools end
  local out = json.array({})
  for i, t in ipairs(tools) do
    out[i] = t
    if type(t) == "table" and type(t.functionDeclarations) == "table" then
      local decls = json.array({})
      for j, d in ipairs(t.functionDeclarations) do
        decls[j] = d
        if type(d) == "table" and (type(d.parameters) == "table" or type(d.parametersJsonSchema) == "table") then
          local nd = json.shallow_copy(d)
          if type(d.parameters) == "table" then nd.parameters = schema.clean_for_gemini(d.parameters) end
          if type(d.parametersJsonSchema) == "table" then
            nd.parametersJsonSchema = schema.clean_for_gemini(d.parametersJsonSchema)
          end
          decls[j] = nd
        end
      end
      local nt = json.shallow_copy(t)
      nt.functionDeclarations = decls
      out[i] = nt
    end
  end
  return out
end

function _M.fixup(body)
  body.safetySettings = nil
  body.tools = _M.clean_tools(body.tools)
  body.contents = cli.sign_function_calls(body.contents, cli.SKIP_SIGNATURE, false)
  body.sessionId = _M.session_id(body.contents)
  return body
end

-- The hosts to try: the entry's base-url alone, else
-- oauth-endpoints.antigravity.api-base-urls, else the built-in list.
function _M.bases(entry, cfg)
  local b = nonempty(entry["base-url"])
  if b then return { util.base(entry, b) } end
  local e = type(cfg) == "table" and cfg["oauth-endpoints"] and cfg["oauth-endpoints"].antigravity
  local list = type(e) == "table" and type(e["api-base-urls"]) == "table" and #e["api-base-urls"] > 0
    and e["api-base-urls"] or _M.base_urls
  local out = {}
  for i, u in ipairs(list) do out[i] = (u:gsub("/$", "")) end
  return out
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local model = target.upstream_model
  ctx.fixup_response = true
  local headers = util.add_entry_headers({
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. (key and key["api-key"] or ""),
    ["User-Agent"] = _M.user_agent,
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }, entry)
  if ctx.endpoint == "count_tokens" then
    body = cli.count_body(body, model)
  else
    body = cli.envelope({ { "model", model }, { "userAgent", "antigravity" },
                          { "requestType", model:find("image", 1, true) and "image_gen" or "agent" },
                          { "project", cli.project(entry) }, { "requestId", "agent-" .. cpx.uuid() } }, body)
  end
  local action = cli.action(ctx, stream)
  local bases = _M.bases(entry, ctx.config)
  local fallback
  for i = 2, #bases do
    fallback = fallback or {}
    fallback[#fallback + 1] = bases[i] .. _M.path .. action
  end
  return { method = "POST", url = bases[1] .. _M.path .. action, headers = headers, body = body,
           proxy = util.proxy(entry, key), fallback_urls = fallback }
end

return _M
