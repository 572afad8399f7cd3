-- rt.panel: the built-in web control panel's static files. GET (and HEAD)
-- /management.html and /panel/<file> answer the files of panel/ beside the
-- built-in lua/ directory (cpx.panel.read, which reads nothing else and
-- reads in the threadpool). The files are kept per VM generation, so an
-- edit shows after a reload; every answer carries an ETag and must be
-- revalidated (no-cache), a strict Content-Security-Policy (scripts,
-- styles and requests from this origin only: the panel fetches nothing
-- from the internet) and the usual hardening headers.
-- `remote-management.disable-control-panel: true` turns the route off.
local cpx = require("cpx")
local http = require("rt.http")

local type = type
local pairs = pairs

local _M = {}

local TYPES = {
  html = "text/html; charset=utf-8",
  js = "text/javascript; charset=utf-8",
  mjs = "text/javascript; charset=utf-8",
  css = "text/css; charset=utf-8",
  svg = "image/svg+xml",
  png = "image/png",
  ico = "image/x-icon",
  json = "application/json",
  txt = "text/plain; charset=utf-8",
  webmanifest = "application/manifest+json",
}
_M.TYPES = TYPES

local CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " ..
  "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; " ..
  "frame-ancestors 'none'"
_M.CSP = CSP

-- The cache is bounded: at most MAX_ENTRIES files and MAX_BYTES in all
-- (the panel is about 100 KB; names not on disk are never cached).
local MAX_ENTRIES = 128
local MAX_BYTES = 8 * 1024 * 1024
local cache, nentries, nbytes = {}, 0, 0

local function base_headers(ctype, etag)
  return {
    ["Content-Type"] = ctype,
    ["Cache-Control"] = "no-cache",
    ["ETag"] = etag,
    ["Content-Security-Policy"] = CSP,
    ["X-Content-Type-Options"] = "nosniff",
    ["X-Frame-Options"] = "DENY",
    ["Referrer-Policy"] = "no-referrer",
    ["Cross-Origin-Opener-Policy"] = "same-origin",
  }
end

-- The file name a request path asks for, or nil.
function _M.file_for(path)
  if path == "/management.html" then return "management.html" end
  local rest = path:match("^/panel/(.+)$")
  return rest
end

local function load(name)
  local hit = cache[name]
  if hit then return hit end
  local ext = name:match("%.([%w]+)$")
  local ctype = ext and TYPES[ext:lower()]
  if not ctype then return nil, "not found" end
  local body, err = cpx.panel.read(name)
  if not body then return nil, err end
  local entry = { body = body, headers = base_headers(ctype, '"' .. cpx.sha256_hex(body):sub(1, 20) .. '"') }
  if nentries < MAX_ENTRIES and nbytes + #body <= MAX_BYTES then
    cache[name] = entry
    nentries = nentries + 1
    nbytes = nbytes + #body
  end
  return entry
end

local function not_found(req, info)
  return http.error(req, "openai_chat", 404, "not found: " .. info.method .. " " .. info.path, nil, "not_found")
end

-- Answers one panel request; cfg is the validated config.
function _M.serve(cfg, req, info)
  local rm = cfg and cfg["remote-management"]
  if type(rm) == "table" and rm["disable-control-panel"] == true then return not_found(req, info) end
  if info.method ~= "GET" and info.method ~= "HEAD" then return not_found(req, info) end
  local name = _M.file_for(info.path)
  local entry, err = nil, "not found"
  if name then entry, err = load(name) end
  if not entry then
    if err ~= "not found" then cpx.log("warn", "panel file", name, "unreadable:", err) end
    return not_found(req, info)
  end
  local inm = info.headers["if-none-match"]
  if inm and inm == entry.headers.ETag then
    local h = {}
    for k, v in pairs(entry.headers) do h[k] = v end
    h["Content-Type"] = nil
    return req:respond(304, h, "")
  end
  return req:respond(200, entry.headers, info.method == "HEAD" and "" or entry.body)
end

return _M
