-- rt.access: client API keys. An empty api-keys list means open access.
-- Keys are read from Authorization: Bearer, X-Goog-Api-Key, X-Api-Key,
-- ?key= and ?auth_token= (CLIProxyAPI's order) and compared in constant time.
local cpx = require("cpx")

local secure_compare = cpx.secure_compare
local client_key = cpx.client_key
local gsub = string.gsub
local char = string.char
local tonumber = tonumber

local _M = {}

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function query_param(query, name)
  if not query or query == "" then return nil end
  for k, v in query:gmatch("([^&=]+)=([^&]*)") do
    if k == name then return unescape(v) end
  end
  return nil
end
_M.query_param = query_param

-- Returns the presented key (or nil) and where it came from.
function _M.presented(info)
  local h = info.headers
  -- the headers' rule is cpx_client_key's (runtime/core/cpx_access.c),
  -- which the C relay uses too
  local k, where = client_key(h["authorization"], h["x-goog-api-key"], h["x-api-key"])
  if k then return k, where end
  k = query_param(info.query, "key")
  if k then return k, "query-key" end
  k = query_param(info.query, "auth_token")
  if k then return k, "query-auth-token" end
  return nil
end

-- Returns true (and the matched key) or false, "Missing API key" /
-- "Invalid API key".
function _M.check(keys, info)
  if not keys or #keys == 0 then return true end
  local key = _M.presented(info)
  if not key then return false, "Missing API key" end
  local ok = false
  -- Walk every key so the time does not depend on which one matched.
  for i = 1, #keys do
    if secure_compare(key, keys[i]) then ok = true end
  end
  if ok then return true, key end
  return false, "Invalid API key"
end

return _M
