-- providers/openai_compat (user override): the built-in OpenAI-compatible
-- provider, plus the quirks of one vendor, "Acme", selected by the name of
-- the openai-compatibility entry. Because this file has the same relative
-- name as lua/providers/openai_compat.lua and sits in a lua.paths
-- directory, it replaces the built-in for every openai-compatibility entry;
-- entries without quirks behave exactly as before.
--
-- Acme's quirks:
--   * every request carries X-Acme-Signature: hex HMAC-SHA256 of the body
--     under the API key, and X-Acme-Client: cliproxy;
--   * the output limit is called max_output_tokens instead of max_tokens
--     (and max_completion_tokens);
--   * it has no stream_options.
local cpx = require("cpx")

local pairs = pairs
local ipairs = ipairs
local hmac_hex = cpx.hmac_sha256_hex

local _M = {
  name = "openai-compatibility",
  format = "openai_chat",
  user_agent = "cli-proxy-openai-compat",
}

-- Vendor quirks by openai-compatibility entry name.
local QUIRKS = {
  acme = { sign = true, headers = { ["X-Acme-Client"] = "cliproxy" },
           rename = { max_tokens = "max_output_tokens", max_completion_tokens = "max_output_tokens" },
           drop = { "stream_options" } },
}

local function join(base, path)
  if base:sub(-1) == "/" then base = base:sub(1, -2) end
  return base .. path
end

local function quirks_of(entry)
  return entry and QUIRKS[entry.name]
end

-- Called with the upstream body as a table, before it is encoded.
function _M.fixup(body, ctx)
  local q = quirks_of(ctx.target and ctx.target.entry)
  if not q then return body end
  for from, to in pairs(q.rename) do
    if body[from] ~= nil then
      body[to] = body[to] or body[from]
      body[from] = nil
    end
  end
  for _, k in ipairs(q.drop) do body[k] = nil end
  return body
end

-- Builds the upstream request: { url, method, headers, body }.
function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local api_key = key and key["api-key"] or ""
  local headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = _M.user_agent,
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }
  if api_key ~= "" then headers["Authorization"] = "Bearer " .. api_key end
  for k, v in pairs(entry.headers or {}) do headers[k] = v end
  local q = quirks_of(entry)
  if q then
    for k, v in pairs(q.headers) do headers[k] = v end
    if q.sign then headers["X-Acme-Signature"] = hmac_hex(api_key, body) end
  end
  return {
    method = "POST",
    url = join(entry["base-url"], "/chat/completions"),
    headers = headers,
    body = body,
    proxy = (key and key["proxy-url"] ~= nil and key["proxy-url"] ~= "" and key["proxy-url"])
      or (entry["proxy-url"] ~= "" and entry["proxy-url"]) or nil,
  }
end

function _M.classify(status)
  if status < 400 then return "success" end
  if status == 400 or status == 422 or status == 413 then return "fatal" end
  return "retry"
end

return _M
