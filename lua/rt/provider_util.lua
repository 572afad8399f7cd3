-- rt.provider_util: the small pieces every provider's prepare() shares.
local pairs = pairs

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

-- Gemini-style method suffix for the request.
function _M.gemini_action(ctx, stream)
  if ctx.endpoint == "count_tokens" then return ":countTokens" end
  if stream then return ":streamGenerateContent?alt=sse" end
  return ":generateContent"
end

return _M
