-- rt.login_qwen: `cliproxy login qwen`: Qwen's device code flow with PKCE
-- (RFC 8628 + RFC 7636, form bodies; cliproxyapi.md §3.6), saved as
-- qwen-<email>.json with the account's resource_url. Qwen's answer names
-- no account, so (as CLIProxyAPI does) the user is asked for an email or
-- alias to name the file; `--email` skips the question.
local oauth = require("rt.oauth")

local type = type
local tostring = tostring
local tonumber = tonumber
local format = string.format
local floor = math.floor
local min = math.min
local setmetatable = setmetatable

local _M = {}

local DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
local MAX_INTERVAL = 60
local NAME_TIMEOUT = 120 -- s to wait for the email or alias

local function form_req(url, list)
  return { method = "POST", url = url, body = oauth.form(list),
           headers = { ["Content-Type"] = "application/x-www-form-urlencoded", ["Accept"] = "application/json" } }
end

local function code_of(a)
  return a and (type(a.error) == "string" and a.error
                or type(a.error) == "table" and (a.error.code or a.error.type)) or nil
end

-- The name of the file: args.email, else a line from the user.
local function ask_name(args, io, lib)
  local given = lib.nonempty(args.email)
  if given then return given end
  io.watch_stdin()
  io.say("Enter an email or alias for this Qwen account (it names the file):")
  local deadline = io.now() + NAME_TIMEOUT
  while true do
    local left = deadline - io.now()
    local ev = left > 0 and io.wait(left) or { kind = "timeout" }
    if ev.kind == "line" then
      local s = tostring(ev.text or ""):match("^%s*(.-)%s*$")
      if s ~= "" then return s end
    elseif ev.kind ~= "callback" then
      return nil -- no answer: the file is named by the time
    end
  end
end

-- The device code request (PKCE). -> dev | nil, err, where dev =
-- {device_code, user_code, verify, interval, life, verifier}: what the
-- poll needs, all strings and numbers (the management starter keeps it in
-- cpx.shared while it polls in the background).
function _M.device_start(f, io, lib)
  local verifier, challenge = oauth.pkce()
  io.say(format("Asking %s for a device code ...", f.device_url))
  local status, herr, body = io.request(form_req(f.device_url, {
    { "client_id", f.client_id }, { "scope", f.scopes },
    { "code_challenge", challenge }, { "code_challenge_method", "S256" } }))
  if not status then return nil, format("network error: %s: %s", f.device_url, tostring(herr)) end
  local d = lib.decode(body)
  if status ~= 200 then
    return nil, format("the device code request failed: %s answered %s", f.device_url,
                       lib.error_text(status, d, body))
  end
  local device_code = d and lib.nonempty(d.device_code)
  local user_code = d and lib.nonempty(d.user_code)
  if not device_code or not user_code then
    return nil, format("%s answered without a device code", f.device_url)
  end
  return { device_code = device_code, user_code = user_code, verifier = verifier,
           interval = lib.interval_of(d.interval),
           life = tonumber(d.expires_in) or tonumber(f.device_timeout) or 900,
           verify = lib.nonempty(d.verification_uri_complete) or lib.nonempty(d.verification_uri)
                    or "https://chat.qwen.ai" }
end

-- One poll of the token endpoint. -> "ok", tokens | "wait", interval |
-- "retry", why (a network error, to try again) | nil, err (the login is
-- over).
function _M.poll_once(f, dev, io, lib)
  local st, h, b = io.request(form_req(f.device_token_url, {
    { "grant_type", DEVICE_GRANT }, { "client_id", f.client_id },
    { "device_code", dev.device_code }, { "code_verifier", dev.verifier } }))
  if not st then return "retry", tostring(h) end
  local a = lib.decode(b)
  local code = code_of(a)
  if st == 200 and a and lib.nonempty(a.access_token) then
    local t, terr = oauth.parse_token_response(f, st, h, b)
    if not t then return nil, "the token answer is unusable: " .. tostring(terr.message) end
    return "ok", t
  elseif code == "slow_down" then
    return "wait", min(dev.interval + lib.SLOW_DOWN, MAX_INTERVAL)
  elseif code == "authorization_pending" then
    return "wait", dev.interval
  elseif code == "expired_token" then
    return nil, "the device code expired without an approval: run the login again"
  elseif code == "access_denied" then
    return nil, "access denied: the device login was declined"
  end
  return nil, format("device login failed: %s answered %s", f.device_token_url, lib.error_text(st, a, b))
end

-- Saves the approved account: qwen-<name>.json, or qwen-<unix>.json when
-- nobody named it.
function _M.save(f, io, lib, tokens, name)
  if name then tokens.email = name end
  local extra = { resource_url = tokens.resource_url or "" }
  if not name then
    f = setmetatable({ file_name = function() return format("qwen-%d.json", floor(io.now())) end },
                     { __index = f })
  end
  return lib.save(f, io, tokens, extra)
end

function _M.run(f, args, io, lib)
  local dev, err = _M.device_start(f, io, lib)
  if not dev then return nil, err end
  local interval, life = dev.interval, dev.life
  local timeout = tonumber(args.timeout) or life
  io.say(format("Open %s and enter the code %s", dev.verify, dev.user_code))
  if args.browser ~= false and io.open_browser then io.open_browser(dev.verify) end
  io.say(format("Waiting for the approval (polling every %d s, up to %s) ...", interval,
                lib.duration(min(timeout, life))))
  local deadline = io.now() + min(timeout, life)
  local failures = 0
  local tokens
  while true do
    if io.now() + interval > deadline then
      if timeout < life then
        return nil, format("timed out after %d s waiting for the device approval (--timeout SECONDS waits longer)",
                           floor(timeout))
      end
      return nil, format("the device code expired after %s without an approval: run the login again",
                         lib.duration(life))
    end
    io.sleep(interval)
    local r, v = _M.poll_once(f, dev, io, lib)
    if r == "retry" then
      failures = failures + 1
      if failures > lib.POLL_RETRIES then
        return nil, format("network error: %s: %s", f.device_token_url, v)
      end
      io.say(format("Polling failed (network error: %s); trying again in %d s", v, interval))
    elseif r == "ok" then
      tokens = v
      break
    elseif r == "wait" then
      failures = 0
      if v ~= interval then
        interval = v
        dev.interval = v
        io.say(format("The server asked to slow down: polling every %d s", interval))
      end
    else
      return nil, v
    end
  end
  io.say("Approved.")
  return _M.save(f, io, lib, tokens, ask_name(args, io, lib))
end

return _M
