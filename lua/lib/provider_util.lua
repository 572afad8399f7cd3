-- lib.provider_util: the small pieces every provider's prepare() shares.
local cpx = require("cpx")

local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local type = type
local unpack = unpack
local tonumber = tonumber
local byte = string.byte
local char = string.char
local format = string.format
local band, bor = bit.band, bit.bor

local _M = {}

-- base-url of the entry, else the provider's default, without a trailing /.
function _M.base(entry, default)
  local b = (entry["base-url"] and entry["base-url"] ~= "") and entry["base-url"] or default
  if b:sub(-1) == "/" then b = b:sub(1, -2) end
  return b
end

-- The entry's extra headers win over the provider's own.
function _M.add_entry_headers(headers, entry)
  for k, v in pairs(entry.headers or {}) do headers[k] = v end
  return headers
end

-- Per-key proxy-url, else the entry's; nil means the global proxy-url.
function _M.proxy(entry, key)
  local kp = key and key["proxy-url"]
  if kp and kp ~= "" then return kp end
  local ep = entry["proxy-url"]
  if ep and ep ~= "" then return ep end
  return nil
end

-- cpx.fetch(ureq), and when the provider listed other hosts in
-- ureq.fallback_urls (Antigravity), the next one after a connection
-- error, a 5xx or a 429; the last answer or error is the attempt's.
function _M.fetch(ureq, who)
  local up, err = cpx.fetch(ureq)
  local alt = ureq.fallback_urls
  if not alt then return up, err end
  for _, u in ipairs(alt) do
    local st = up and up:status()
    if up and st < 500 and st ~= 429 then break end
    if cpx.log then
      cpx.log("warn", format("upstream %s: %s failed (%s); trying %s", tostring(who or "?"), ureq.url,
                             tostring(up and st or err), u))
    end
    if up then up:close() end
    ureq.url = u
    up, err = cpx.fetch(ureq)
  end
  return up, err
end

-- Gemini-style method suffix for the request.
function _M.gemini_action(ctx, stream)
  if ctx.endpoint == "count_tokens" then return ":countTokens" end
  if stream then return ":streamGenerateContent?alt=sse" end
  return ":generateContent"
end

-- The key the client authenticated with (x-api-key, Authorization Bearer,
-- x-goog-api-key, ?key=), or nil. Only ever hashed into stable ids, never
-- logged or sent upstream.
function _M.client_key(info)
  local h = type(info) == "table" and info.headers or nil
  if type(h) ~= "table" then return nil end
  local k = h["x-api-key"] or h["x-goog-api-key"]
  if not k and type(h.authorization) == "string" then k = h.authorization:match("^[Bb]earer%s+(%S+)") end
  if not k and type(info.query) == "string" then k = info.query:match("[?&]?key=([^&]+)") end
  if type(k) ~= "string" or k == "" then return nil end
  return k
end

-- A UUID (8-4-4-4-12 hex) from the first 16 bytes of digest d, with the
-- version nibble set to v and the RFC 9562 variant bits.
local function uuid_from(d, v)
  local b = { byte(d, 1, 16) }
  b[7] = bor(band(b[7], 0x0f), v * 16)
  b[9] = bor(band(b[9], 0x3f), 0x80)
  local h = format(("%02x"):rep(16), unpack(b))
  return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-" .. h:sub(13, 16) .. "-" .. h:sub(17, 20) .. "-" .. h:sub(21, 32)
end

-- RFC 9562 name spaces, as text.
_M.NS_OID = "6ba7b812-9dad-11d1-80b4-00c04fd430c8"
_M.NS_DNS = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"

-- The version-5 (SHA-1, name-based) UUID of name in name space ns (a UUID
-- in text form), as Go's uuid.NewSHA1 computes it.
function _M.uuid5(ns, name)
  local hex = ns:gsub("-", "")
  local raw = hex:gsub("%x%x", function(x) return char(tonumber(x, 16)) end)
  return uuid_from(cpx.sha1(raw .. name), 5)
end

-- A stable UUID-shaped id for a secret-derived seed: SHA-256 based, so
-- the seed (an account's key or file) cannot be read back from it.
function _M.stable_uuid(seed)
  return uuid_from(cpx.sha256(seed), 4)
end

return _M
