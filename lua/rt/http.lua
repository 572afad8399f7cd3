-- rt.http: response helpers shared by every route: CORS headers as
-- CLIProxyAPI sends them (the list is C's, cpx.http), JSON bodies, SSE
-- heads, and errors in the client's format.
local cpx = require("cpx")
local json = require("lib.json")
local translators = require("translators")
local record = require("rt.record")

local type = type
local pairs = pairs

local _M = {}

-- The header sets are C's (runtime/net/cpx_server.h, the lists the C fast
-- path and C's own answers use): one list each, read here.
local CORS = cpx.http.cors_headers
_M.CORS = CORS
local SSE = cpx.http.sse_headers

-- Returns a new header table: CORS + content type + extra.
-- Header tables without extras never change: build each once. (The C side
-- only reads them.)
local plain, nplain = {}, 0

function _M.headers(content_type, extra)
  if not extra and content_type then
    local c = plain[content_type]
    if c then return c end
  end
  local h = {}
  for k, v in pairs(CORS) do h[k] = v end
  if content_type then h["Content-Type"] = content_type end
  if extra then
    for k, v in pairs(extra) do h[k] = v end
  elseif content_type and nplain < 32 then
    -- bounded: upstream content types are not ours to enumerate
    plain[content_type] = h
    nplain = nplain + 1
  end
  return h
end

-- The head of an SSE answer (CORS, text/event-stream, no-cache, no proxy
-- buffering); never changed by its users.
function _M.sse_headers()
  return SSE
end

function _M.json(req, status, body, extra)
  local s = type(body) == "string" and body or json.encode(body)
  local rec = record.of_req(req)
  if rec then rec._response = s end -- [record] rt.reqlog's RESPONSE section
  return req:respond(status, _M.headers("application/json", extra), s)
end

-- Decodes a JSON object body or answers 400 in the client's format (then
-- returns nil).
function _M.decode_body(req, info, fmt)
  local body, err = json.decode(info.body)
  if type(body) ~= "table" or json.is_array(body) then
    _M.error(req, fmt, 400, "invalid JSON body: " .. (err or "expected an object"))
    return nil
  end
  return body
end

-- Default OpenAI-style type and code per status (the fact sheet's table).
local TYPES = {
  [400] = { "invalid_request_error" },
  [401] = { "authentication_error", "invalid_api_key" },
  [403] = { "permission_error", "insufficient_quota" },
  [404] = { "invalid_request_error", "model_not_found" },
  [413] = { "invalid_request_error", "request_too_large" },
  [429] = { "rate_limit_error", "rate_limit_exceeded" },
}

function _M.error_info(status, message, etype, code)
  local d = TYPES[status] or (status >= 500 and { "server_error", "internal_server_error" }) or
    { "invalid_request_error" }
  return { status = status, type = etype or d[1], code = code or d[2], message = message }
end

-- Responds with cliproxy's own error in the client's wire format.
function _M.error(req, format, status, message, etype, code, extra)
  local body = translators.error_body(format or "openai_chat", _M.error_info(status, message, etype, code))
  return _M.json(req, status, body, extra)
end

return _M
