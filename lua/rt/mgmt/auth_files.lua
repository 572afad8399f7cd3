-- rt.mgmt.auth_files: the credential files of auth-dir, in CLIProxyAPI v6's
-- shapes (auth_files.go):
--   GET    /auth-files                  {"files": [entry...]}
--   GET    /auth-files/download?name=   the file
--   POST   /auth-files                  multipart (one or more files) or a raw JSON body with ?name=
--   DELETE /auth-files?name= | ?all=true
--   PATCH  /auth-files/status           {name, disabled}
--   PATCH  /auth-files/fields           {name, prefix, proxy_url, headers, priority, note}
--   GET    /auth-files/models?name=     the models a credential serves
--   GET    /model-definitions/:channel  a channel's static catalog
--   POST   /reset-cooldown              {account?, model?} (cliproxy's own)
-- Files are written atomically with mode 0600 in the threadpool, then the
-- store rescans, so the next request already routes with them.
local cpx = require("cpx")
local json = require("lib.json")
local access = require("rt.access")
local cooldown = require("lib.cooldown")
local catalog = require("rt.catalog")

local type = type
local ipairs = ipairs
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local pcall = pcall
local require = require
local find = string.find
local sub = string.sub
local lower = string.lower

local mgmt = cpx.mgmt
local store = cpx.store
local pool = cpx.pool
local query_param = access.query_param
local null = json.null

-- An upload bigger than this is refused (a credential is a few KiB).
local MAX_FILE_BYTES = 1024 * 1024
-- Files in one multipart upload.
local MAX_FILES = 100

local _M = { name = "auth_files" }

local function err(status, msg) return status, { error = msg } end

-- A plain credential file name: what cpx.store accepts.
local function valid_name(name)
  return type(name) == "string" and #name <= 255 and name:match("^[^/\\%.][^/\\]*%.[jJ][sS][oO][nN]$") ~= nil
    and not find(name, "\0", 1, true)
end

local function dir()
  return store.dir and store.dir() or nil
end

local function by_name(name)
  for _, c in ipairs(store.list()) do
    if c.name == name then return c end
  end
  return nil
end

local function rfc3339(t)
  if not t then return nil end
  return cooldown.format_rfc3339(t)
end

-- refresh state from rt.refresh (the refresh engineer's module) when it
-- is there; {} otherwise.
local function refresh_state(cfg)
  local ok, refresh = pcall(require, "rt.refresh")
  if not ok or type(refresh) ~= "table" or type(refresh.state) ~= "function" then return {} end
  local sok, st = pcall(refresh.state, cfg)
  return sok and type(st) == "table" and st or {}
end

-- Upstream models each pool account serves, from the live registry.
local function models_by_account(app)
  local out = {}
  local reg = app.registry
  for _, targets in pairs(reg and reg.models or {}) do
    for _, t in ipairs(targets) do
      if t.account then
        local l = out[t.account] or {}
        out[t.account] = l
        if not l[t.upstream_model] then
          l[t.upstream_model] = true
          l[#l + 1] = t.upstream_model
        end
      end
    end
  end
  return out
end

local function entry(c, i, models, refresh, now)
  local doc = json.decode(c.text or "")
  if type(doc) ~= "table" then doc = {} end
  local function str(v) return type(v) == "string" and v or nil end
  local account = "auth:" .. c.name
  local disabled = c.disabled == true or doc.disabled == true
  local status, message = disabled and "disabled" or "active", ""
  local next_retry, cooling = nil, json.array()
  for _, m in ipairs(models[account] or {}) do
    local st = pool.state(account, m)
    if st and st.remaining and st.remaining > 0 then
      local at = now + st.remaining
      if not next_retry or at < next_retry then next_retry = at end
      cooling[#cooling + 1] = { model = m, reason = st.reason, remaining_seconds = st.remaining,
                                next_retry_after = rfc3339(at), quota = st.quota }
    end
  end
  local r = refresh[c.name]
  if type(r) == "table" and not disabled then
    if r.needs_login then
      status, message = "error", tostring(r.last_error or "refresh failed: log in again")
    elseif r.last_error then
      message = tostring(r.last_error)
    end
  end
  local unavailable = not disabled and #cooling > 0 and #cooling >= #(models[account] or {})
  return {
    id = c.name, name = c.name, type = c.type or str(doc.type) or "", provider = c.type or str(doc.type) or "",
    label = str(doc.label) or str(doc.email) or c.name, status = status, status_message = message,
    disabled = disabled, unavailable = unavailable, runtime_only = false, source = "file",
    size = #(c.text or ""), modtime = rfc3339(c.mtime), email = str(doc.email) or "",
    account_type = "oauth", account = str(doc.email) or str(doc.account_id) or "",
    created_at = rfc3339(c.mtime), updated_at = rfc3339(c.mtime), last_refresh = str(doc.last_refresh) or null,
    next_retry_after = next_retry and rfc3339(next_retry) or null, priority = tonumber(doc.priority) or 0,
    note = str(doc.note) or "", auth_index = i - 1, cooldowns = cooling,
    refresh = type(r) == "table" and r or null,
  }
end

local function list(req, ctx)
  local now = cpx.now()
  local models = models_by_account(ctx.app)
  local refresh = refresh_state(ctx.app.config)
  local files = json.array()
  for i, c in ipairs(store.list()) do files[#files + 1] = entry(c, i, models, refresh, now) end
  return 200, { files = files }
end

local function download(req, ctx)
  local name = query_param(req.query, "name")
  if not valid_name(name) then return err(400, "invalid name") end
  local c = by_name(name)
  if not c then return err(404, "file not found") end
  return 200, c.text, { ["Content-Type"] = "application/json",
                        ["Content-Disposition"] = 'attachment; filename="' .. name .. '"' }
end

-- Checks a credential document; returns the text to write or nil, why.
local function check_credential(text)
  if #text > MAX_FILE_BYTES then return nil, "file larger than " .. MAX_FILE_BYTES .. " bytes" end
  local doc, derr = json.decode(text)
  if type(doc) ~= "table" or json.is_array(doc) then
    return nil, "invalid JSON object" .. (derr and (": " .. derr) or "")
  end
  if type(doc.type) ~= "string" or doc.type == "" then return nil, "missing field 'type'" end
  return text
end

local function write(name, text, expect)
  local d = dir()
  if not d then return nil, "auth-dir is not open" end
  local ok, werr, why = mgmt.write_file(d .. "/" .. name, text, expect or false, 384) -- 0600
  if not ok then return nil, werr, why end
  store.rescan()
  return true
end

-- Splits a multipart/form-data body (RFC 7578) into its file parts:
-- { {name = field, filename = ..., data = ...}, ... } or nil, err. Bounded
-- by the body, which the server already limits.
local function multipart(body, ctype)
  local boundary = ctype:match('boundary="([^"]+)"') or ctype:match("boundary=([^;%s]+)")
  if not boundary then return nil, "no boundary" end
  local delim = "--" .. boundary
  local parts = {}
  local pos = find(body, delim, 1, true)
  if not pos then return nil, "no parts" end
  pos = pos + #delim
  while true do
    if sub(body, pos, pos + 1) == "--" then break end -- the closing delimiter
    if sub(body, pos, pos + 1) ~= "\r\n" then return nil, "malformed delimiter" end
    pos = pos + 2
    local hend = find(body, "\r\n\r\n", pos, true)
    if not hend then return nil, "part without headers" end
    local head = sub(body, pos, hend - 1)
    local nextd = find(body, "\r\n" .. delim, hend + 4, true)
    if not nextd then return nil, "unterminated part" end
    local part = { data = sub(body, hend + 4, nextd - 1) }
    for line in (head .. "\r\n"):gmatch("(.-)\r\n") do
      local k, v = line:match("^([^:]+):%s*(.*)$")
      if k and lower(k) == "content-disposition" then
        part.name = v:match('[; ]name="([^"]*)"')
        part.filename = v:match('filename="([^"]*)"')
      end
    end
    parts[#parts + 1] = part
    if #parts > MAX_FILES then return nil, "more than " .. MAX_FILES .. " parts" end
    pos = nextd + 2 + #delim
  end
  return parts
end

local function upload(req, ctx)
  local ctype = req.headers["content-type"] or ""
  if lower(ctype):find("^multipart/form%-data") then
    local parts, perr = multipart(req.body or "", ctype)
    if not parts then return err(400, "invalid multipart form: " .. perr) end
    local uploaded, failed = json.array(), json.array()
    local nfiles = 0
    for _, p in ipairs(parts) do
      if p.filename then
        nfiles = nfiles + 1
        local name = p.filename:match("[^/\\]*$")
        local text, why
        if not valid_name(name) then
          why = "file must be .json"
        else
          text, why = check_credential(p.data)
          if text then
            local ok, werr = write(name, text)
            if not ok then why = "failed to save file: " .. tostring(werr) end
          end
        end
        if why then
          failed[#failed + 1] = { name = name or p.filename, error = why }
        else
          uploaded[#uploaded + 1] = name
        end
      end
    end
    if nfiles == 0 then return err(400, "no files uploaded") end
    if nfiles == 1 then
      if #failed == 1 then return err(400, failed[1].error) end
      return 200, { status = "ok" }
    end
    if #failed == 0 then return 200, { status = "ok", uploaded = #uploaded, files = uploaded } end
    return #uploaded > 0 and 207 or 400,
      { status = #uploaded > 0 and "partial" or "error", uploaded = #uploaded, files = uploaded, failed = failed }
  end
  local name = query_param(req.query, "name")
  if not name or name == "" then return err(400, "missing name") end
  if not valid_name(name) then return err(400, "name must end with .json") end
  local text, why = check_credential(req.body or "")
  if not text then return err(400, why) end
  local ok, werr = write(name, text)
  if not ok then return err(500, "failed to save file: " .. tostring(werr)) end
  return 200, { status = "ok" }
end

local function delete(req, ctx)
  if query_param(req.query, "all") == "true" then
    local n = 0
    for _, c in ipairs(store.list()) do
      if store.remove(c.name) then n = n + 1 end
    end
    return 200, { status = "ok", deleted = n }
  end
  local name = query_param(req.query, "name")
  if not valid_name(name) then return err(400, "invalid name") end
  if not by_name(name) then return err(404, "file not found") end
  local ok, rerr = store.remove(name)
  if not ok then return err(500, "failed to remove file: " .. tostring(rerr)) end
  pool.clear("auth:" .. name)
  return 200, { status = "ok" }
end

-- Reads name's JSON, lets fn change the document, writes it back (only if
-- the file did not change meanwhile). Returns status, body.
local function edit_file(name, fn)
  if not valid_name(name) then return err(400, "invalid name") end
  local d = dir()
  if not d then return err(500, "auth-dir is not open") end
  for _ = 1, 5 do
    local text, sha = mgmt.read_file(d .. "/" .. name)
    if not text then return err(404, "file not found") end
    local doc = json.decode(text)
    if type(doc) ~= "table" or json.is_array(doc) then return err(422, "the file is not a JSON object") end
    local bad = fn(doc)
    if bad then return err(400, bad) end
    local ok, werr, why = write(name, json.encode(doc), sha)
    if ok then return nil end
    if why ~= "conflict" then return err(500, "failed to save file: " .. tostring(werr)) end
  end
  return err(409, "the file kept changing; try again")
end

local function patch_status(req, ctx)
  local b = json.decode(req.body or "")
  if type(b) ~= "table" or type(b.name) ~= "string" or type(b.disabled) ~= "boolean" then
    return err(400, "invalid body")
  end
  local status, body = edit_file(b.name, function(doc) doc.disabled = b.disabled end)
  if status then return status, body end
  return 200, { status = "ok", disabled = b.disabled }
end

local FIELDS = { prefix = "string", proxy_url = "string", headers = "table", priority = "number", note = "string" }

local function patch_fields(req, ctx)
  local b = json.decode(req.body or "")
  if type(b) ~= "table" or type(b.name) ~= "string" then return err(400, "invalid body") end
  local any = false
  for f, want in pairs(FIELDS) do
    local v = b[f]
    if v ~= nil and v ~= null then
      if type(v) ~= want or (want == "table" and json.is_array(v)) then return err(400, "invalid " .. f) end
      any = true
    elseif v == null then
      any = true
    end
  end
  if not any then return err(400, "no fields to change") end
  local status, body = edit_file(b.name, function(doc)
    for f in pairs(FIELDS) do
      local v = b[f]
      if v == null or v == "" then
        doc[f] = nil
      elseif v ~= nil then
        doc[f] = v
      end
    end
  end)
  if status then return status, body end
  return 200, { status = "ok" }
end

-- POST /reset-cooldown {account?, model?}: account is a credential file
-- name (or a pool account id); model an upstream model name. Neither: all.
local function reset_cooldown(req, ctx)
  local b = {}
  if req.body and req.body ~= "" then
    b = json.decode(req.body)
    if type(b) ~= "table" or json.is_array(b) then return err(400, "invalid body") end
  end
  local acct, model = b.account, b.model
  if (acct ~= nil and type(acct) ~= "string") or (model ~= nil and type(model) ~= "string") then
    return err(400, "invalid body")
  end
  if acct == "" then acct = nil end
  if model == "" then model = nil end
  if acct and not find(acct, ":", 1, true) then acct = "auth:" .. acct end
  local n = pool.clear(acct, model)
  return 200, { status = "ok", account = b.account or null, model = model or null, cleared = n }
end

-- GET /auth-files/models?name=: the model names a credential serves now
-- (client-visible ids, aliases and prefixes included).
local function file_models(req, ctx)
  local name = query_param(req.query, "name")
  if not valid_name(name) then return err(400, "invalid name") end
  if not by_name(name) then return err(404, "file not found") end
  local account = "auth:" .. name
  local ids = {}
  local reg = ctx.app.registry
  for id, targets in pairs(reg and reg.models or {}) do
    for _, t in ipairs(targets) do
      if t.account == account then
        ids[#ids + 1] = { id = id, upstream = t.upstream_model, owned_by = t.owner }
        break
      end
    end
  end
  table.sort(ids, function(a, b) return a.id < b.id end)
  local out = json.array()
  for i, m in ipairs(ids) do
    out[i] = { id = m.id, display_name = m.id, name = m.upstream, owned_by = m.owned_by, type = "model" }
  end
  return 200, { models = out }
end

-- GET /model-definitions/:channel: the static catalog of a channel.
local function definitions(req, ctx)
  local ch = req.params.channel
  local out = json.array()
  for i, m in ipairs(catalog.for_provider(ch) or {}) do
    out[i] = { id = m.id, display_name = m.id, owned_by = m.owned_by, context_length = m.context,
               max_completion_tokens = m.output }
  end
  return 200, { channel = ch, models = out }
end

_M.routes = {
  { method = "GET", path = "/auth-files/models", handler = file_models },
  { method = "GET", path = "/model-definitions/:channel", handler = definitions },
  { method = "GET", path = "/auth-files", handler = list },
  { method = "GET", path = "/auth-files/download", handler = download },
  { method = "POST", path = "/auth-files", handler = upload },
  { method = "DELETE", path = "/auth-files", handler = delete },
  { method = "PATCH", path = "/auth-files/status", handler = patch_status },
  { method = "PATCH", path = "/auth-files/fields", handler = patch_fields },
  { method = "POST", path = "/reset-cooldown", handler = reset_cooldown },
}

-- for rt.mgmt.vertex and the specs
_M.multipart = multipart
_M.valid_name = valid_name
_M.write = write
_M.MAX_FILE_BYTES = MAX_FILE_BYTES

return _M
