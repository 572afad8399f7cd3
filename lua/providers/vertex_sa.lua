-- providers/vertex_sa: Vertex AI's Gemini models with a Google service
-- account (a `vertex` credential file, as POST /v0/management/vertex/import
-- writes it; fact sheet §3.5):
--   POST https://{location}-aiplatform.googleapis.com/v1/projects/{p}/locations/{loc}
--        /publishers/google/models/{m}:{action}   (global: aiplatform.googleapis.com)
-- with a Bearer token minted by a JWT bearer grant (RFC 7523) signed with
-- the account's private key (cpx.rsa_sha256_sign). The token goes through
-- the refresh engine like any OAuth account's (rt.refresh): minted before
-- the first request, again 5 minutes before its hour is up and after a
-- 401; the file keeps it (access_token, expired) next to the account.
-- oauth-endpoints.vertex.token-url / api-base-url move the token endpoint
-- and the inference host (mirrors, tests). The service account's own
-- token_uri is not followed: an uploaded file does not choose where the
-- signed assertion goes.
local cpx = require("cpx")
local json = require("lib.json")
local oauth = require("rt.oauth")
local util = require("lib.provider_util")
local gemini = require("providers.gemini")

local type = type
local ipairs = ipairs
local tostring = tostring
local floor = math.floor
local format = string.format

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

local SCOPE = "https://www.googleapis.com/auth/cloud-platform"
local GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
local LIFE = 3600 -- seconds a minted token is asked for (Google's maximum)

local _M = {
  name = "vertex",
  format = "gemini",
  classify = gemini.classify,
  default_location = "us-central1",
  oauth = {
    type = "vertex",
    title = "Vertex AI (service account)",
    -- a service account has no OAuth client or browser login; the fields
    -- rt.oauth requires of every provider are placeholders here
    client_id = "service-account",
    auth_url = "https://oauth2.googleapis.com/token",
    redirect_port = 0,
    redirect_path = "/",
    token_url = "https://oauth2.googleapis.com/token",
    scopes = SCOPE,
    token_body = "form",
    lead = 5 * 60,
  },
}

-- The service account a file carries, checked: {client_email, private_key,
-- project_id, ...} | nil, err. For the import (rt.mgmt.vertex) too.
function _M.service_account(sa)
  if type(sa) ~= "table" then return nil, "not a JSON object" end
  if sa.type ~= "service_account" then return nil, "type is not \"service_account\"" end
  for _, k in ipairs({ "project_id", "client_email", "private_key" }) do
    if not nonempty(sa[k]) then return nil, k .. " is missing" end
  end
  if not sa.private_key:find("-----BEGIN [%u ]*PRIVATE KEY-----") then
    return nil, "private_key is not a PEM private key"
  end
  return sa
end

local function b64url_json(t)
  return cpx.base64.encode(json.encode(t), true)
end

-- The signed assertion: header.claims.signature (RS256).
function _M.assertion(sa, aud, now)
  local h = { { "alg", "RS256" }, { "typ", "JWT" } }
  if nonempty(sa.private_key_id) then h[3] = { "kid", sa.private_key_id } end
  local head = b64url_json(json.object(h))
  local claims = b64url_json(json.object({ { "iss", sa.client_email }, { "scope", SCOPE }, { "aud", aud },
                                           { "iat", floor(now) }, { "exp", floor(now) + LIFE } }))
  local sig, err = cpx.rsa_sha256_sign(sa.private_key, head .. "." .. claims)
  if not sig then return nil, err end
  return head .. "." .. claims .. "." .. cpx.base64.encode(sig, true)
end

-- rt.oauth.refresh's hook: a new token for the file's service account.
-- -> the new document | nil, {kind, message}
function _M.oauth.refresh_grant(f, doc, opts)
  local sa, serr = _M.service_account(type(doc) == "table" and doc.service_account)
  if not sa then return nil, { kind = "invalid_grant", message = "service_account: " .. serr } end
  local now = cpx.now()
  local jwt, jerr = _M.assertion(sa, f.token_url, now)
  if not jwt then return nil, { kind = "invalid_grant", message = "cannot sign: " .. tostring(jerr) } end
  local status, headers, body = oauth.request({
    method = "POST", url = f.token_url,
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded", Accept = "application/json" },
    body = oauth.form({ { "grant_type", GRANT }, { "assertion", jwt } }),
  }, opts)
  if not status then return nil, { kind = "network", message = f.token_url .. ": " .. tostring(headers) } end
  local tokens, err = oauth.parse_token_response(f, status, headers, body)
  if not tokens then return nil, err end
  local new = json.shallow_copy(doc)
  new.access_token = tokens.access_token
  new.last_refresh = oauth.format_time(now)
  new.expired = oauth.format_time(now + (tokens.expires_in or LIFE))
  return new
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local loc = nonempty(entry.location) or _M.default_location
  local host = loc == "global" and "https://aiplatform.googleapis.com"
    or format("https://%s-aiplatform.googleapis.com", loc)
  local headers = util.add_entry_headers({
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tostring(key and key["api-key"] or ""),
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }, entry)
  local url = util.base(entry, host) .. format("/v1/projects/%s/locations/%s/publishers/google/models/",
    oauth.pct(entry.project_id or ""), oauth.pct(loc)) .. target.upstream_model .. util.gemini_action(ctx, stream)
  return { method = "POST", url = url, headers = headers, body = body, proxy = util.proxy(entry, key) }
end

return _M
