-- rt.login: the flows of `cliproxy login claude|codex [--device]`: the
-- authorization code with PKCE (a local callback or a pasted redirect), the
-- Codex device code, the token exchange and the credential file, with a
-- line for the user at each step.
--
-- The protocol pieces (PKCE, URLs, token requests and answers, file names
-- and fields) are rt.oauth's; this module only sequences them and talks to
-- the user. What needs the OS comes in `io` (runtime/app/cpx_login.c gives the
-- real one; specs give a scripted one):
--   io.say(line)                      a line on stdout
--   io.now() -> epoch seconds
--   io.listen(port, path) -> true | nil, err, code   the callback server
--   io.watch_stdin([{secret = true}]) pasted lines become "line" events (secret:
--                                     a terminal does not echo them)
--   io.open_browser(url) -> true | nil, err
--   io.wait(seconds) -> ev            yields: {kind = "callback", query} |
--                                     {kind = "line", text} | {kind = "eof"} |
--                                     {kind = "timeout"}
--   io.answer(status, html)           answers the callback received last (the
--                                     browser waits for it; at the end of the
--                                     command an unanswered one gets a short page)
--   io.sleep(seconds)                 yields
--   io.request(req) -> status, headers, body | nil, err   yields (oauth.request's shape)
--   io.write(name, text) -> true | nil, err   yields (the threadpool writes)
--   io.dir() -> auth-dir | nil
-- run(args, io) -> info | nil, message (one line, never a token).
local oauth = require("rt.oauth")
local json = require("lib.json")

local type = type
local pairs = pairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local format = string.format
local gsub = string.gsub
local floor = math.floor
local max = math.max
local min = math.min

local _M = {}

local CODE_TIMEOUT = 300     -- s to wait for the browser or a paste
local DEVICE_TIMEOUT = 900   -- s when the server names no expiry
local DEVICE_INTERVAL = 5    -- s between polls when the server names none
local SLOW_DOWN = 5          -- s added on each slow_down (RFC 8628 §3.5)
local POLL_RETRIES = 3       -- network errors in a row a device poll survives
local MAX_INTERVAL = 60

_M.CODE_TIMEOUT = CODE_TIMEOUT
_M.DEVICE_TIMEOUT = DEVICE_TIMEOUT

local TITLES = { claude = "Claude", codex = "ChatGPT (Codex)" }

-- Providers whose login is more than the code flow above (or Codex's device
-- code) bring their own module: run(facts, args, io, lib) -> info | nil, msg,
-- with lib = the pieces below. A missing module means no login yet.
local FLOWS = {
  gemini = "rt.login_gemini",
  antigravity = "rt.login_antigravity",
  qwen = "rt.login_qwen",
  iflow = "rt.login_iflow",
}
_M.FLOWS = FLOWS

local function duration(s)
  s = floor(s + 0.5)
  if s < 120 then return format("%d s", s) end
  return format("%d min", floor(s / 60 + 0.5))
end

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

-- ---- what the user pastes or the browser brings -----------------------------

-- A pasted line: a redirect URL, its query ("?code=..&state=.."), or Claude's
-- "code#state". -> {code, state, error, error_description} | nil, why
function _M.parse_input(text)
  if type(text) ~= "string" then return nil, "nothing pasted" end
  text = text:match("^%s*(.-)%s*$")
  if text == "" then return nil, "nothing pasted" end
  local query = text:match("^%a[%w+.-]*://[^?#]*%?([^#]*)") or text:match("^%?([^#]*)")
  if not query and text:find("^[%w_.-]+=") then query = text:match("^([^#]*)") end
  if query then
    local q = oauth.parse_query(query)
    if not nonempty(q.code) and not nonempty(q.error) then
      return nil, "the pasted URL has no code"
    end
    return { code = nonempty(q.code), state = q.state, error = nonempty(q.error),
             error_description = nonempty(q.error_description) }
  end
  if text:find("^%a[%w+.-]*://") then return nil, "the pasted URL has no code" end
  local code, state = oauth.split_code(text)
  if state and nonempty(code) and not code:find("[%s?&=]") then
    return { code = code, state = state }
  end
  return nil, "not a redirect URL or code#state"
end

-- {code, state, error} against the state this login sent -> code | nil, why.
-- why is the one line for the user; the state is never echoed.
function _M.judge(got, state)
  if got.error then
    if got.error == "access_denied" then
      return nil, "access denied: the authorization was declined in the browser"
    end
    return nil, format("the authorization server refused: %s%s", got.error,
                       got.error_description and (" (" .. got.error_description .. ")") or "")
  end
  if not nonempty(got.code) then return nil, "the redirect carries no code" end
  if got.state ~= state then
    return nil, "state mismatch: the code is not from this login (a stale or forged redirect); refused"
  end
  return got.code
end

local function html_escape(s)
  return (gsub(tostring(s), "[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                        ['"'] = "&quot;", ["'"] = "&#39;" }))
end

-- The page the browser shows after the redirect.
function _M.page(ok, text)
  local title = ok and "Login successful" or "Login failed"
  return format('<!doctype html><html><head><meta charset="utf-8"><title>cliproxy: %s</title></head>'
                .. '<body style="font-family:sans-serif;margin:3em"><h1>%s</h1><p>%s</p>'
                .. '<p>You can close this window and return to the terminal.</p></body></html>',
                title, title, html_escape(text))
end

-- ---- the token exchange and the file --------------------------------------

local function exchange(f, io, o)
  io.say(format("Exchanging the code at %s ...", f.token_url))
  local status, headers, body = io.request(oauth.exchange_request(f, o))
  if not status then
    return nil, format("network error: %s: %s", f.token_url, tostring(headers))
  end
  local tokens, err = oauth.parse_token_response(f, status, headers, body)
  if not tokens then
    return nil, "the token exchange failed: " .. tostring(err.message)
  end
  return tokens
end

local function save(f, io, tokens, extra)
  local doc = oauth.credential(f, tokens, nil, io.now())
  for k, v in pairs(extra or {}) do doc[k] = v end
  local name = oauth.file_name(f, doc, tokens)
  local ok, err = io.write(name, oauth.encode(doc))
  local dir = io.dir() or "auth-dir"
  local path = dir .. "/" .. name
  if not ok then
    return nil, format("cannot write %s: %s", path, tostring(err))
  end
  local email = nonempty(doc.email)
  io.say(format("Saved %s (%s)", path, email or "no email in the answer"))
  return { path = path, name = name, email = email }
end

-- ---- authorization code with PKCE -----------------------------------------

-- finish(tokens) -> info | nil, err turns the exchanged tokens into saved
-- files (default: one file by oauth.credential); a provider whose login has
-- more steps (an account lookup, a project to choose) passes its own, and the
-- waiting browser is told the outcome of all of them.
local function code_flow(f, args, io, finish)
  local port = tonumber(args.port) or f.redirect_port
  local timeout = tonumber(args.timeout) or CODE_TIMEOUT
  local verifier, challenge = oauth.pkce()
  local state = oauth.new_state()
  local redirect_uri = oauth.redirect_uri(f, port)
  local url = oauth.authorize_url(f, { state = state, challenge = challenge, redirect_uri = redirect_uri })

  local ok, err, code = io.listen(port, f.redirect_path)
  if not ok then
    if code == "EADDRINUSE" then
      return nil, format("port %d is in use (another login or program?): pass --callback-port N to use "
                         .. "another port", port)
    end
    return nil, format("cannot listen on 127.0.0.1:%d: %s", port, tostring(err))
  end
  io.watch_stdin()
  io.say(format("Log in to %s with this URL:", f.title or TITLES[f.provider] or f.provider))
  io.say("  " .. url)
  if args.browser ~= false then
    local opened, why = io.open_browser(url)
    if opened then
      io.say("Opening the browser ...")
    else
      io.say(format("Could not open a browser (%s): open the URL above yourself.", tostring(why)))
    end
  end
  io.say(format("Waiting for the browser to come back to %s (up to %d s);", redirect_uri, floor(timeout)))
  io.say("on another machine, paste the URL the browser ends on (or the code#state it shows) here:")

  local deadline = io.now() + timeout
  local got, browser_waits
  while true do
    local left = deadline - io.now()
    local ev = left > 0 and io.wait(left) or { kind = "timeout" }
    if ev.kind == "timeout" then
      return nil, format("timed out after %d s waiting for the browser or a pasted code "
                         .. "(--timeout SECONDS waits longer)", floor(timeout))
    elseif ev.kind == "callback" then
      local q = oauth.parse_query(ev.query)
      local c, why = _M.judge({ code = nonempty(q.code), state = q.state, error = nonempty(q.error),
                                error_description = nonempty(q.error_description) }, state)
      if not c then
        io.answer(400, _M.page(false, why))
        return nil, why
      end
      -- The browser waits for the outcome of the exchange.
      got, browser_waits = c, true
      break
    elseif ev.kind == "line" then
      local p, perr = _M.parse_input(ev.text)
      if p then
        local c, why = _M.judge(p, state)
        if not c then return nil, why end
        got = c
        break
      elseif perr ~= "nothing pasted" then
        io.say(perr .. ": paste the whole redirect URL, or code#state")
      end
    end
  end
  local tokens, terr = exchange(f, io, { code = got, verifier = verifier, state = state,
                                         redirect_uri = redirect_uri })
  local info
  if tokens then info, terr = (finish or function(t) return save(f, io, t) end)(tokens) end
  if browser_waits then
    io.answer(info and 200 or 502, _M.page(info ~= nil, info and format("Saved %s%s.", info.name,
              info.email and (" (" .. info.email .. ")") or "") or terr))
  end
  if not info then return nil, terr end
  return info
end

-- ---- Codex device code ----------------------------------------------------

local function post_json(f, url, list)
  local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json" }
  for k, v in pairs(f.token_headers or {}) do
    if k ~= "Accept" then headers[k] = v end
  end
  return { method = "POST", url = url, headers = headers, body = json.encode(oauth.ordered(list)) }
end

local function decode(body)
  if type(body) ~= "string" or body == "" then return nil end
  local ok, d = pcall(json.decode, body)
  return ok and type(d) == "table" and d or nil
end

local function error_text(status, d, body)
  local code = d and (type(d.error) == "string" and d.error
                      or type(d.error) == "table" and (d.error.code or d.error.type))
  local msg = d and (d.error_description or d.message or type(d.error) == "table" and d.error.message)
  if code or msg then
    return format("%d: %s%s", status, tostring(code or msg), (code and msg) and (" (" .. tostring(msg) .. ")") or "")
  end
  return format("%d%s", status, type(body) == "string" and body ~= "" and (": " .. body:sub(1, 200)) or "")
end

-- "5", 5, nil -> seconds within [1, MAX_INTERVAL]
local function interval_of(v)
  local n = tonumber(v)
  if not n or n <= 0 then return DEVICE_INTERVAL end
  return min(max(n, 1), MAX_INTERVAL)
end
_M.interval_of = interval_of

local function device_flow(f, args, io)
  if not nonempty(f.device_url) or not nonempty(f.device_token_url) then
    return nil, f.provider .. " has no device login"
  end
  io.say(format("Asking %s for a device code ...", f.device_url))
  local status, herr, body = io.request(post_json(f, f.device_url, { { "client_id", f.client_id } }))
  if not status then return nil, format("network error: %s: %s", f.device_url, tostring(herr)) end
  local d = decode(body)
  if status ~= 200 then
    return nil, format("the device code request failed: %s answered %s", f.device_url, error_text(status, d, body))
  end
  local user_code = d and (nonempty(d.user_code) or nonempty(d.usercode))
  local device_id = d and nonempty(d.device_auth_id)
  if not user_code or not device_id then
    return nil, format("%s answered without a user code", f.device_url)
  end
  local interval = interval_of(d.interval)
  local life = tonumber(d.expires_in) or tonumber(f.device_timeout) or DEVICE_TIMEOUT
  local timeout = tonumber(args.timeout) or life
  local verify = nonempty(d.verification_uri) or f.device_verify_url
  io.say(format("Open %s and enter the code %s", verify, user_code))
  io.say(format("Waiting for the approval (polling every %d s, up to %s) ...", interval,
                duration(min(timeout, life))))
  local deadline = io.now() + min(timeout, life)
  local grant
  local failures = 0 -- network errors in a row
  while true do
    if io.now() + interval > deadline then
      if timeout < life then
        return nil, format("timed out after %d s waiting for the device approval (--timeout SECONDS waits longer)",
                           floor(timeout))
      end
      return nil, format("the device code expired after %s without an approval: run the login again",
                         duration(life))
    end
    io.sleep(interval)
    local st, perr, b = io.request(post_json(f, f.device_token_url, { { "device_auth_id", device_id },
                                                                       { "user_code", user_code } }))
    if not st then
      -- The user may take minutes to approve on another device; one dropped
      -- connection in that time is not worth starting over for.
      failures = failures + 1
      if failures > POLL_RETRIES then
        return nil, format("network error: %s: %s", f.device_token_url, tostring(perr))
      end
      io.say(format("Polling failed (network error: %s); trying again in %d s", tostring(perr), interval))
      goto continue
    end
    failures = 0
    local a = decode(b)
    local code = a and type(a.error) == "string" and a.error or
                 a and type(a.error) == "table" and (a.error.code or a.error.type) or nil
    if st == 200 and a and nonempty(a.authorization_code) then
      grant = a
      break
    elseif code == "slow_down" then
      interval = min(interval + SLOW_DOWN, MAX_INTERVAL)
      io.say(format("The server asked to slow down: polling every %d s", interval))
    elseif st == 403 or st == 404 or code == "authorization_pending" then -- luacheck: ignore 542
      -- not approved yet
    elseif code == "expired_token" or st == 410 then
      return nil, "the device code expired without an approval: run the login again"
    elseif code == "access_denied" then
      return nil, "access denied: the device login was declined"
    else
      return nil, format("device login failed: %s answered %s", f.device_token_url, error_text(st, a, b))
    end
    ::continue::
  end
  if not nonempty(grant.code_verifier) then
    return nil, format("%s approved without a code_verifier", f.device_token_url)
  end
  local tokens, terr = exchange(f, io, { code = grant.authorization_code, verifier = grant.code_verifier,
                                         redirect_uri = f.device_redirect_uri })
  if not tokens then return nil, terr end
  -- CLIProxyAPI records how the account logged in (oauth updates: Codex).
  return save(f, io, tokens, { codex_login_mode = "device" })
end

-- What a provider's login module builds on (see FLOWS).
_M.lib = {
  code_flow = code_flow,       -- (f, args, io, finish) -> info | nil, msg
  device_flow = device_flow,   -- Codex's device code (f, args, io)
  exchange = exchange,         -- (f, io, {code, verifier, state, redirect_uri}) -> tokens | nil, msg
  save = save,                 -- (f, io, tokens, extra_fields) -> info | nil, msg
  post_json = post_json,       -- (f, url, {{k, v}, ...}) -> req
  decode = decode,             -- body -> table | nil
  error_text = error_text,     -- (status, decoded, body) -> "400: code (message)"
  interval_of = interval_of,   -- "5" | 5 | nil -> seconds
  duration = duration,         -- seconds -> "90 s" | "15 min"
  nonempty = nonempty,
  SLOW_DOWN = SLOW_DOWN,
  POLL_RETRIES = POLL_RETRIES,
}

-- args = {provider, device, browser, port, timeout, config, cookie, project_id}
function _M.run(args, io)
  if type(args) ~= "table" or type(io) ~= "table" then
    error("rt.login.run(args, io): bad arguments", 2)
  end
  local f, err = oauth.facts(args.provider, args.config)
  if not f then return nil, err end
  -- Before the user spends a login on it: where the file will go.
  if not io.dir() then
    local dir = type(args.config) == "table" and args.config["auth-dir"]
    return nil, format("auth-dir %s cannot be opened (see the warning above): fix auth-dir in the config",
                       nonempty(dir) or "(not set)")
  end
  local info, msg
  local flow = FLOWS[args.provider]
  if flow then
    local ok, m = pcall(require, flow)
    if not ok or type(m) ~= "table" or type(m.run) ~= "function" then
      return nil, format("no login for %s in this build (%s)", tostring(args.provider),
                         ok and (flow .. ": no run function") or tostring(m))
    end
    info, msg = m.run(f, args, io, _M.lib)
  elseif args.device then
    if args.provider ~= "codex" then return nil, "--device is for codex only" end
    info, msg = device_flow(f, args, io)
  else
    info, msg = code_flow(f, args, io)
  end
  if not info then
    -- One line, whatever a server put in its answer (an HTML error page).
    return nil, (gsub(gsub(tostring(msg), "[%c%s]+", " "), "^ ", ""))
  end
  return info
end

return _M
