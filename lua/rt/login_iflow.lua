-- rt.login_iflow: `cliproxy login iflow`: iFlow's authorization code flow
-- on 11451 (client secret in the exchange, no PKCE), then the API-key
-- lookup on the new token (getUserInfo); `cliproxy login iflow --cookie`:
-- the Cookie header of a logged-in platform.iflow.cn session, pasted on
-- stdin (never printed), then the key from the platform's apikey endpoint
-- (cliproxyapi.md §3.7). Files: iflow-<email>-<unix>.json (code flow),
-- iflow-<name>.json (cookie).
local oauth = require("rt.oauth")
local json = require("lib.json")
local iflow = require("providers.iflow")

local type = type
local tostring = tostring
local tonumber = tonumber
local format = string.format
local floor = math.floor

local _M = {}

local COOKIE_TIMEOUT = 300

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

-- After the code exchange (the CLI's and the management starter's): the
-- API key looked up on the new token, then the file. args.web names it as
-- CLIProxyAPI's web login does (iflow-<email>.json, no timestamp).
function _M.finish(f, args, io, lib, tokens)
  io.say(format("Looking up the API key at %s ...", f.userinfo_url))
  local info, err = iflow.user_info(f, io.request, tokens.access_token)
  if not info then return nil, err end
  tokens.api_key = info.api_key
  tokens.email = info.email
  if args.web then
    tokens.file_name = info.email and format("iflow-%s.json", oauth.safe_name(info.email))
                       or format("iflow-%d.json", floor(io.now() * 1000))
  end
  return lib.save(f, io, tokens, { api_key = info.api_key })
end

local function code_login(f, args, io, lib)
  return lib.code_flow(f, args, io, function(tokens) return _M.finish(f, args, io, lib, tokens) end)
end

-- {success, data} of the platform's apikey endpoint -> data | nil, err
local function key_call(f, io, lib, req)
  local st, h, b = io.request(req)
  if not st then return nil, format("network error: %s: %s", f.api_key_url, tostring(h)) end
  local d = lib.decode(b)
  if st ~= 200 or not d or d.success == false or type(d.data) ~= "table" then
    local msg = d and nonempty(d.message)
    return nil, format("the API-key request failed: %s answered %d%s", f.api_key_url, st,
                       msg and (": " .. msg) or "")
  end
  return d.data
end

local function cookie_login(f, args, io, lib)
  io.watch_stdin({ secret = true }) -- a terminal does not echo it
  io.say("Paste the Cookie header of a browser logged in to platform.iflow.cn (it needs BXAuth=...);")
  io.say("it is not shown or logged:")
  local deadline = io.now() + (tonumber(args.timeout) or COOKIE_TIMEOUT)
  local cookie
  while not cookie do
    local left = deadline - io.now()
    local ev = left > 0 and io.wait(left) or { kind = "timeout" }
    if ev.kind == "line" then
      local s = tostring(ev.text or ""):match("^%s*(.-)%s*$"):gsub("^[Cc]ookie:%s*", "")
      if s:find("BXAuth=", 1, true) then
        cookie = s
      elseif s ~= "" then
        io.say("That has no BXAuth cookie: paste the whole Cookie header")
      end
    elseif ev.kind == "eof" then
      return nil, "no cookie pasted (stdin closed)"
    elseif ev.kind == "timeout" then
      return nil, "timed out waiting for the pasted cookie (--timeout SECONDS waits longer)"
    end
  end
  return _M.save_cookie(f, cookie, io, lib)
end

-- The cookie login after the paste (and POST /iflow-auth-url): the key's
-- name first, then a fresh key for that name, then the file.
function _M.save_cookie(f, cookie, io, lib)
  io.say(format("Fetching the API key from %s ...", f.api_key_url))
  local headers = { Cookie = cookie, Accept = "application/json" }
  local info, err = key_call(f, io, lib, { method = "GET", url = f.api_key_url, headers = headers })
  if not info then return nil, err end
  local name = nonempty(info.name)
  if not name then return nil, f.api_key_url .. " answered without a key name" end
  local post = { method = "POST", url = f.api_key_url, body = json.encode(json.object({ { "name", name } })),
                 headers = { Cookie = cookie, Accept = "application/json", ["Content-Type"] = "application/json" } }
  local key
  key, err = key_call(f, io, lib, post)
  if not key then return nil, err end
  local api_key = nonempty(key.apiKey)
  if not api_key then return nil, f.api_key_url .. " answered without an apiKey" end
  local tokens = { api_key = api_key, email = name, cookie = cookie,
                   file_name = format("iflow-%s.json", oauth.safe_name(name)) }
  return lib.save(f, io, tokens, { api_key = api_key, cookie = cookie,
                                   expired = nonempty(key.expireTime) or nonempty(info.expireTime) })
end

function _M.run(f, args, io, lib)
  if args.cookie then return cookie_login(f, args, io, lib) end
  return code_login(f, args, io, lib)
end

return _M
