-- rt.mgmt.api_call: POST /api-call, CLIProxyAPI's generic upstream call with
-- a stored credential (api_tools.go; the panel uses it for quota queries).
--   body    {auth_index, method, url, header = {name: value}, data}
--   answer  {status_code, header = {name: [values]}, body}
-- The header value "$TOKEN$" (anywhere in a value) is replaced by the
-- credential's access_token, api_key, token, id_token or cookie, the first
-- present. auth_index is the entry's auth_index in GET /auth-files, or the
-- file name.
local cpx = require("cpx")
local json = require("lib.json")

local type = type
local pairs = pairs
local ipairs = ipairs
local floor = math.floor
local tonumber = tonumber
local gsub = string.gsub

local store = cpx.store

-- Upstream answers kept for the panel: a quota page, not a download.
local MAX_BODY = 4 * 1024 * 1024
local METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true, HEAD = true }
local TOKEN_FIELDS = { "access_token", "api_key", "token", "id_token", "cookie" }

local _M = { name = "api_call" }

local function credential(idx)
  local list = store.list()
  local n = tonumber(idx)
  if n and n == floor(n) then return list[n + 1] end
  if type(idx) == "string" then
    for _, c in ipairs(list) do
      if c.name == idx then return c end
    end
  end
  return nil
end

local function token_of(c)
  local doc = json.decode(c.text or "")
  if type(doc) ~= "table" then return nil end
  for _, f in ipairs(TOKEN_FIELDS) do
    if type(doc[f]) == "string" and doc[f] ~= "" then return doc[f] end
  end
  return nil
end

local function api_call(req, ctx)
  local b = json.decode(req.body or "")
  if type(b) ~= "table" or json.is_array(b) then return 400, { error = "invalid body" } end
  local method = type(b.method) == "string" and b.method:upper() or "GET"
  if not METHODS[method] then return 400, { error = "invalid method" } end
  if type(b.url) ~= "string" or not b.url:match("^https?://[^%s]+$") then
    return 400, { error = "invalid url" }
  end
  if b.header ~= nil and (type(b.header) ~= "table" or json.is_array(b.header)) then
    return 400, { error = "invalid header" }
  end
  if b.data ~= nil and b.data ~= json.null and type(b.data) ~= "string" then
    return 400, { error = "invalid data" }
  end
  local token
  if b.auth_index ~= nil and b.auth_index ~= json.null and b.auth_index ~= "" then
    local c = credential(b.auth_index)
    if not c then return 404, { error = "auth not found" } end
    token = token_of(c)
  end
  local headers = {}
  for k, v in pairs(b.header or {}) do
    if type(k) ~= "string" or type(v) ~= "string" then return 400, { error = "invalid header" } end
    if v:find("$TOKEN$", 1, true) then
      if not token then return 400, { error = "auth has no token for $TOKEN$" } end
      v = gsub(v, "%$TOKEN%$", function() return token end)
    end
    headers[k] = v
  end
  local up, err = cpx.fetch({ url = b.url, method = method, headers = headers,
                              body = type(b.data) == "string" and b.data or nil, max_body = MAX_BODY })
  if not up then return 502, { error = "request failed", message = err } end
  local body, berr = up:body()
  if not body then return 502, { error = "request failed", message = berr } end
  local out = {}
  for k, v in pairs(up:headers()) do out[k] = json.array({ v }) end
  return 200, { status_code = up:status(), header = out, body = body }
end

_M.routes = {
  { method = "POST", path = "/api-call", handler = api_call },
}

return _M
