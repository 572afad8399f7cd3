-- rt.reqlog: CLIProxyAPI's per-request log files (fact sheet §8), built
-- from the request record (rt.record) when it finishes.
--
--   request-log: true   every API request -> logs/<path>-<YYYY-MM-DDTHHMMSS>-<id>.log
--   otherwise           failed ones only  -> logs/error-<path>-<...>-<id>.log,
--                       the newest error-logs-max-files kept (0: none written)
--
-- logs/ is beside config.yaml (as main.log, rt.mgmt.logs). Sections:
-- REQUEST INFO, HEADERS, REQUEST BODY, then per upstream attempt API REQUEST
-- (URL, headers, translated body) and API RESPONSE or API ERROR RESPONSE,
-- then RESPONSE (what the client got). Every credential is redacted: header
-- values by name, query values by name, JSON fields by name, and then any
-- redacted value wherever else it appears in the text.
--
-- What the pipeline hands over (all no-ops without a record):
--   reqlog.attempt(rec, ureq, status, headers, body | nil, err | nil)
--   reqlog.upstream_body(rec, text)   the body (or stream bytes) of the last attempt
--   reqlog.response(rec, text)        the body the client got
-- Files are written off the event loop (cpx.reqlog.write: bounded, a log
-- is dropped with a warning when too many wait).
local cpx = require("cpx")

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local concat = table.concat
local sort = table.sort
local os_date = os.date
local floor = math.floor
local log = cpx.log or function() end

local _M = {}

-- A body section longer than this is cut (the file says by how much).
local BODY_MAX = 1024 * 1024
-- Upstream attempts kept per request (retries past that are counted).
local MAX_ATTEMPTS = 8
_M.BODY_MAX = BODY_MAX

local REDACTED = "[redacted]"

-- Header names whose value is a credential, and name parts that are.
local SECRET_HEADERS = {
  authorization = true, ["proxy-authorization"] = true, cookie = true, ["set-cookie"] = true,
  ["x-api-key"] = true, ["x-goog-api-key"] = true, ["api-key"] = true, ["x-management-key"] = true,
}
local SECRET_PARTS = { "key", "token", "secret", "auth", "cookie", "password", "session" }

local function secret_header(name)
  local n = name:lower()
  if SECRET_HEADERS[n] then return true end
  for _, p in ipairs(SECRET_PARTS) do
    if n:find(p, 1, true) then return true end
  end
  return false
end
_M.secret_header = secret_header

-- Query parameters and JSON fields whose value is a credential.
local SECRET_FIELDS = {
  "key", "api_key", "api-key", "apiKey", "auth_token", "token", "access_token", "refresh_token",
  "id_token", "client_secret", "secret", "password", "value", "code", "code_verifier", "cookie",
  "session_key",
}

local function escape_pattern(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

local function redact_query(q)
  if type(q) ~= "string" or q == "" then return q end
  local out = {}
  for part in q:gmatch("[^&]+") do
    local k = part:match("^([^=]*)=")
    local hit = false
    if k then
      for _, f in ipairs(SECRET_FIELDS) do
        if k == f then
          hit = true
          break
        end
      end
    end
    out[#out + 1] = hit and (k .. "=" .. REDACTED) or part
  end
  return concat(out, "&")
end
_M.redact_query = redact_query

-- JSON string fields named like a credential: "access_token": "..." -> redacted.
local function redact_json_fields(text)
  for _, f in ipairs(SECRET_FIELDS) do
    if f ~= "value" and f ~= "code" and f ~= "key" then
      text = text:gsub('("' .. escape_pattern(f) .. '"%s*:%s*)"[^"]*"', '%1"' .. REDACTED .. '"')
    end
  end
  return text
end

-- Lines "Name: value" of a header table, sorted, credentials redacted;
-- every redacted value (and a Bearer's token) goes into found.
local function header_lines(h, found)
  if type(h) ~= "table" then return "" end
  local names = {}
  for k in pairs(h) do
    if type(k) == "string" then names[#names + 1] = k end
  end
  sort(names)
  local out = {}
  for _, k in ipairs(names) do
    local v = h[k]
    if type(v) == "table" then v = concat(v, ", ") end
    v = tostring(v)
    if secret_header(k) then
      found[#found + 1] = v
      local tok = v:match("^%s*[Bb]earer%s+(.+)$") or v:match("^%s*[Bb]asic%s+(.+)$")
      if tok then found[#found + 1] = tok end
      for c in v:gmatch("[^;]+=([^;]+)") do found[#found + 1] = c end
      v = REDACTED
    end
    out[#out + 1] = k .. ": " .. v
  end
  return concat(out, "\n")
end

local function body_text(b)
  if type(b) ~= "string" then return "" end
  if #b > BODY_MAX then
    return b:sub(1, BODY_MAX) .. "\n[... " .. (#b - BODY_MAX) .. " more bytes not logged]"
  end
  return b
end

local function iso(t)
  return os_date("!%Y-%m-%dT%H:%M:%S", floor(t or 0)) .. "Z"
end

-- "/v1/chat/completions" -> "v1-chat-completions" (CLIProxyAPI's sanitized path).
local function sanitize(path)
  local s = tostring(path or ""):gsub("^/+", ""):gsub("[^A-Za-z0-9_.]+", "-"):gsub("^[-.]+", "")
  s = s:gsub("-+$", "")
  if s == "" then s = "root" end
  return s:sub(1, 80)
end
_M.sanitize = sanitize

local function safe_id(id)
  id = tostring(id or "")
  if id:match("^[A-Za-z0-9]+$") and #id <= 64 then return id end
  return (id:gsub("[^A-Za-z0-9]", "")):sub(1, 64)
end

function _M.file_name(rec, error_log)
  local ts = os_date("!%Y-%m-%dT%H%M%S", floor(rec.time or 0))
  local id = safe_id(rec.request_id)
  if id == "" then id = safe_id(rec.id) end
  return (error_log and "error-" or "") .. sanitize(rec.endpoint) .. "-" .. ts .. "-" .. id .. ".log"
end

-- ---- what the pipeline hands over ------------------------------------------

function _M.attempt(rec, ureq, status, headers, body, err)
  if type(rec) ~= "table" then return end
  local a = rec._attempts
  if not a then
    a = {}
    rec._attempts = a
  end
  if #a >= MAX_ATTEMPTS then
    rec._attempts_dropped = (rec._attempts_dropped or 0) + 1
    return
  end
  a[#a + 1] = { time = cpx.now(), method = ureq and ureq.method, url = ureq and ureq.url,
                headers = ureq and ureq.headers, body = ureq and ureq.body, status = status,
                resp_headers = headers, resp_body = body, err = err, provider = rec.provider }
end

function _M.upstream_body(rec, text)
  if type(rec) ~= "table" then return end
  local a = rec._attempts
  if a and a[#a] and a[#a].resp_body == nil then a[#a].resp_body = text end
end

function _M.response(rec, text)
  if type(rec) == "table" then rec._response = text end
end

-- ---- the file ------------------------------------------------------------

function _M.format(rec)
  local found = {}
  local info = rec._info or {}
  local parts = {}
  local function add(s) parts[#parts + 1] = s end
  local q = redact_query(info.query)
  add("=== REQUEST INFO ===")
  add("Version: 1")
  add("URL: " .. tostring(rec.endpoint or info.path or "") .. ((q and q ~= "") and ("?" .. q) or ""))
  add("Method: " .. tostring(rec.method or info.method or ""))
  add("Client IP: " .. tostring(info.remote or ""))
  add("Request ID: " .. tostring(rec.request_id or ""))
  add("Timestamp: " .. iso(rec.time))
  if rec.model then add("Model: " .. tostring(rec.model)) end
  if rec.client_key then add("Client key: " .. rec.client_key) end
  add("")
  add("=== HEADERS ===")
  add(header_lines(info.headers, found))
  add("")
  add("=== REQUEST BODY ===")
  add(body_text(info.body))
  add("")
  for i, a in ipairs(rec._attempts or {}) do
    add("=== API REQUEST " .. i .. " ===")
    add("Timestamp: " .. iso(a.time))
    add("Upstream URL: " .. tostring(a.method or "POST") .. " " .. tostring(a.url or ""))
    add("Auth: provider=" .. tostring(a.provider or rec.provider or "") ..
        (rec.credential and (" credential=" .. tostring(rec.credential)) or ""))
    add("Headers:")
    add(header_lines(a.headers, found))
    add("Body:")
    add(body_text(a.body))
    add("")
    if a.err then
      add("=== API ERROR RESPONSE " .. i .. " ===")
      add(tostring(a.err))
    else
      add("=== API RESPONSE " .. i .. " ===")
      add("Status: " .. tostring(a.status or ""))
      add("Headers:")
      add(header_lines(a.resp_headers, found))
      add("Body:")
      add(body_text(a.resp_body))
    end
    add("")
  end
  if rec._attempts_dropped then add("(" .. rec._attempts_dropped .. " more upstream attempts not logged)\n") end
  add("=== RESPONSE ===")
  add("Status: " .. tostring(rec.status or ""))
  add("Latency-ms: " .. tostring(rec.latency_ms or ""))
  if rec.error then add("Error: " .. tostring(rec.error)) end
  if rec.stream then add("Stream: true") end
  add("Body:")
  add(body_text(rec._response))
  add("")
  local text = redact_json_fields(concat(parts, "\n"))
  -- a credential echoed anywhere else (an error body quoting it, a URL)
  sort(found, function(a, b) return #a > #b end)
  for _, v in ipairs(found) do
    v = v:match("^%s*(.-)%s*$")
    if #v >= 6 then text = text:gsub(escape_pattern(v), REDACTED) end
  end
  return text
end

-- ---- the record subscriber ---------------------------------------------------

local state = { dir = nil, all = false, keep = 10 }

function _M.log_dir(cfg)
  local path = cfg and cfg._file or "config.yaml"
  local dir = path:match("^(.*)/[^/]*$") or "."
  return dir .. "/logs"
end

local function subscriber(rec)
  if rec.kind ~= "inference" and rec.kind ~= "count" then return end
  local error_log = not state.all
  if error_log and (not rec.failed or state.keep <= 0) then return end
  local name = _M.file_name(rec, error_log)
  local ok, err = cpx.reqlog.write(state.dir, name, _M.format(rec), error_log and "error-" or "",
                                   error_log and state.keep or 0)
  if not ok then
    -- a flood of failing requests must not become a flood of warnings
    state.dropped = (state.dropped or 0) + 1
    local now = cpx.now()
    if not state.warned or now - state.warned >= 10 then
      log("warn", "request logs not written: " .. tostring(err) .. " (" .. state.dropped .. " since the last warning)")
      state.warned, state.dropped = now, 0
    end
  end
end
_M.subscriber = subscriber

-- rt.boot, every generation.
function _M.configure(app)
  local record = require("rt.record")
  local cfg = app.config
  if not cpx.reqlog then
    record.unsubscribe("reqlog")
    return true
  end
  state.dir = _M.log_dir(cfg)
  state.all = cfg["request-log"] == true
  state.keep = cfg["error-logs-max-files"] or 10
  if not state.all and state.keep <= 0 then
    record.unsubscribe("reqlog")
    return true
  end
  -- error logs only: the C relay hands Lua its failed records alone
  record.subscribe("reqlog", subscriber, not state.all and "reqlog_failed" or nil)
  return true
end

function _M.dir()
  return state.dir
end

-- Every request is logged (request-log: true), not only failed ones.
function _M.all()
  return state.all
end

return _M
