-- rt.mgmt.vertex: POST /vertex/import, a Google service account for Vertex
-- AI (CLIProxyAPI v6's vertex_import.go):
--   multipart/form-data with the JSON in a file part ("file"), and the
--   optional fields "location" (default us-central1) and "prefix"; or the
--   JSON as the raw body with ?location= and ?prefix=
--   -> {"status":"ok","auth-file":"vertex-<project>.json","project_id","email","location"}
-- The account is checked (type service_account, project_id, client_email,
-- an RSA private key that signs), written as CLIProxyAPI writes it
-- (vertex-[<prefix>-]<project>.json: service_account, project_id, email,
-- location, type "vertex", prefix) with mode 0600, atomically, in the
-- threadpool, and the store rescans: the next request can use it
-- (providers/vertex_sa.lua mints its token). DELETE /auth-files?name=
-- removes it like any credential.
local cpx = require("cpx")
local json = require("lib.json")
local access = require("rt.access")
local oauth = require("rt.oauth")
local auth_files = require("rt.mgmt.auth_files")
local vertex_sa = require("providers.vertex_sa")

local type = type
local ipairs = ipairs
local tostring = tostring
local lower = string.lower

local query_param = access.query_param

local _M = { name = "vertex" }

local function fail(status, msg) return status, { error = msg } end

local function trim(s)
  return type(s) == "string" and s:match("^%s*(.-)%s*$") or nil
end

-- The request's JSON text and its fields -> text, location, prefix | nil, status, msg
local function input(req)
  local ctype = req.headers["content-type"] or ""
  if lower(ctype):find("^multipart/form%-data") then
    local parts, perr = auth_files.multipart(req.body or "", ctype)
    if not parts then return nil, 400, "invalid multipart form: " .. tostring(perr) end
    local text, location, prefix
    for _, p in ipairs(parts) do
      if p.filename or p.name == "file" then
        if text then return nil, 400, "one service account file per import" end
        text = p.data
      elseif p.name == "location" then
        location = p.data
      elseif p.name == "prefix" then
        prefix = p.data
      end
    end
    if not text then return nil, 400, "file is required" end
    return text, location, prefix
  end
  return req.body or "", query_param(req.query, "location"), query_param(req.query, "prefix")
end

local function import(req, ctx)
  local text, location, prefix = input(req)
  if not text then return fail(location, prefix) end -- (nil, status, message)
  local max = auth_files.MAX_FILE_BYTES
  if #text > max then return fail(400, "file larger than " .. max .. " bytes") end
  local sa, derr = json.decode(text)
  if type(sa) ~= "table" or json.is_array(sa) then
    return fail(400, "invalid service account JSON" .. (derr and (": " .. derr) or ""))
  end
  local ok, why = vertex_sa.service_account(sa)
  if not ok then return fail(400, "invalid service account: " .. why) end
  -- the key must sign (an encrypted or broken key fails here, not at the
  -- first request)
  local sig, serr = cpx.rsa_sha256_sign(sa.private_key, "cliproxy vertex import")
  if not sig then return fail(400, "invalid service account: private_key: " .. tostring(serr)) end
  location = trim(location)
  if not location or location == "" then location = vertex_sa.default_location end
  if not location:match("^[%w%-]+$") then
    return fail(400, "location must be a region such as us-central1 or global")
  end
  prefix = trim(prefix) or ""
  prefix = prefix:gsub("^/+", ""):gsub("/+$", "")
  if prefix:find("/", 1, true) then return fail(400, "prefix must be a single segment (no '/')") end
  local base = oauth.safe_name(sa.project_id)
  if prefix ~= "" then base = oauth.safe_name(prefix) .. "-" .. base end
  local name = "vertex-" .. base .. ".json"
  local fields = { { "service_account", sa }, { "project_id", sa.project_id }, { "email", sa.client_email },
                   { "location", location }, { "type", "vertex" } }
  if prefix ~= "" then fields[#fields + 1] = { "prefix", prefix } end
  local wok, werr = auth_files.write(name, json.encode(json.object(fields)))
  if not wok then return fail(500, "failed to save file: " .. tostring(werr)) end
  cpx.log("info", "vertex import: saved " .. name .. " (" .. sa.client_email .. ", " .. location .. ")")
  return 200, json.object({ { "status", "ok" }, { "auth-file", name }, { "project_id", sa.project_id },
                            { "email", sa.client_email }, { "location", location } })
end

_M.routes = {
  { method = "POST", path = "/vertex/import", handler = import },
}

return _M
