-- rt.refresh: the refresh engine of OAuth accounts (credential files of
-- type claude and codex in auth-dir).
--
-- * A scheduler (a cpx.timer.every task on worker 0; the other workers
--   refresh on demand only) refreshes each account at oauth.due(): expiry
--   minus the provider's lead (Claude 4 h, Codex 5 d), or last_refresh plus
--   the lead, or refresh_interval_seconds; it looks every
--   oauth-refresh.check-seconds (at most 60).
-- * On demand: a request whose account's token is expired (or expires
--   within MARGIN seconds) waits for the refresh before sending, and an
--   upstream 401 refreshes once and retries on the same account
--   (rt.pipeline).
-- * Single flight: a refresh holds cpx.lock("refresh:<file>", {file =
--   <auth-dir>/.<file>.lock}), so one runs at a time for an account in
--   the whole process and across processes sharing the directory. Under
--   the lock the file is read again: when its tokens differ from what the
--   caller looked at, another worker or process refreshed it already and
--   that result is used. A rotated refresh token is therefore never sent
--   twice (RFC 9700 reuse detection would revoke the login). The new
--   tokens are written (cpx.store.write: temporary file, fsync, rename,
--   directory fsync, mode 0600) before anyone uses them, and the rescan
--   that follows shows every worker's registry the new token.
-- * Failure backs off (oauth-refresh.backoff-seconds, doubling up to
--   max-backoff-seconds; a 429's Retry-After when longer). invalid_grant
--   marks the account as needing a new login: it leaves the pool until its
--   file changes.
--
-- The per-account state lives in cpx.shared (process-wide C memory), so
-- state() answers the same on every worker. Contract:
--   refresh.init_worker(app)               (rt.boot)
--   refresh.fresh_key(app, target, key) -> key   (may wait; rt.pipeline)
--   refresh.after_401(app, target, key) -> new key | nil  (rt.pipeline)
--   refresh.refresh(cfg, file[, seen]) -> doc | nil, err
--   refresh.blocked(file, text) -> bool    (rt.registry: out of the pool)
--   refresh.epoch() -> string              (rt.registry: rebuild when it moves)
--   refresh.state([cfg]) -> { [file] = { type, email, last_refresh,
--       expires, next_due, last_error, error_kind, needs_login, failures,
--       retry_at } }                       (epoch seconds)
local cpx = require("cpx")
local json = require("lib.json")
local oauth = require("rt.oauth")

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local format = string.format
local min = math.min
local max = math.max
local floor = math.floor

local store = cpx.store
local log = cpx.log or function() end
local shared = cpx.shared -- absent in the busted module: a local table stands in

local _M = {}

local TYPES = { claude = true, codex = true, gemini = true, ["gemini-cli"] = true, antigravity = true,
                qwen = true, iflow = true, vertex = true }
local KEY = "refresh:"
local EPOCH_KEY = "refresh:#epoch"
-- A token that expires this soon is refreshed before it is sent.
local MARGIN = 5
_M.MARGIN = MARGIN

if not shared then
  local t = {}
  shared = {
    get = function(k) return t[k] end,
    set = function(k, v) t[k] = v; return true end,
    keys = function() return {} end,
  }
end

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

local function fingerprint(text)
  return cpx.sha256_hex(text or ""):sub(1, 16)
end

local function settings(cfg)
  local r = cfg and cfg["oauth-refresh"] or {}
  return { check = r["check-seconds"] or 60, backoff = r["backoff-seconds"] or 300,
           max_backoff = r["max-backoff-seconds"] or 3600 }
end

-- ---- state (cpx.shared) ---------------------------------------------------

local function get_state(file)
  local s = shared.get(KEY .. file)
  if not s then return {} end
  local ok, t = pcall(json.decode, s)
  return ok and type(t) == "table" and t or {}
end

local function put_state(file, st)
  local ok, err = shared.set(KEY .. file, json.encode(st))
  if not ok then log("warn", "refresh: state of " .. file .. " not kept: " .. tostring(err)) end
end

function _M.epoch()
  return shared.get(EPOCH_KEY) or "0"
end

local function bump_epoch()
  shared.set(EPOCH_KEY, tostring((tonumber(_M.epoch()) or 0) + 1))
end

-- Out of the pool: the last refresh said invalid_grant and the file has
-- not changed since.
function _M.blocked(file, text)
  local st = get_state(file)
  return st.needs_login == true and st.fp == fingerprint(text)
end

-- A document a new token can be got for: a refresh token, or a service
-- account that signs its own grant (Vertex).
local function refreshable(doc)
  return nonempty(doc.refresh_token) ~= nil or type(doc.service_account) == "table"
end

-- ---- credential documents (per worker, by store version) ------------------

local cache = { version = nil, docs = {} }

local function docs()
  local v = store.version()
  if cache.version == v then return cache.docs end
  local out = {}
  for _, c in ipairs(store.list()) do
    if TYPES[c.type] and not c.disabled then
      local ok, d = pcall(json.decode, c.text)
      if ok then d = oauth.flat(d) end -- Gemini's nested token
      if ok and type(d) == "table" and d.disabled ~= true then
        out[c.name] = { doc = d, text = c.text, type = c.type }
      end
    end
  end
  cache.version, cache.docs = v, out
  return out
end

local facts_cache = setmetatable({}, { __mode = "k" })

local function facts_for(cfg, kind)
  local per = facts_cache[cfg]
  if not per then
    per = {}
    facts_cache[cfg] = per
  end
  if per[kind] == nil then
    local f, err = oauth.facts(kind, cfg)
    if not f then log("error", "refresh: " .. tostring(err)) end
    per[kind] = f or false
  end
  return per[kind] or nil
end

-- What a caller saw of a document: a refresh is needed only while the
-- file still says this.
local function snapshot(doc)
  return { access_token = doc.access_token, refresh_token = doc.refresh_token, expired = doc.expired or doc.expiry }
end

local function changed(doc, seen)
  return doc.access_token ~= seen.access_token or doc.refresh_token ~= seen.refresh_token
    or (doc.expired or doc.expiry) ~= seen.expired
end

-- ---- one refresh ----------------------------------------------------------

-- Seconds to wait after the n-th failure in a row: backoff-seconds,
-- doubling, capped; a longer Retry-After (429) wins up to the cap.
function _M.backoff(cfg, n, retry_after)
  local s = settings(cfg)
  local back = min(s.backoff * 2 ^ (n - 1), s.max_backoff)
  if retry_after then back = max(back, min(retry_after, s.max_backoff)) end
  return back
end

local function failed(cfg, file, e, st, err, now)
  local n = (st.failures or 0) + 1
  local nst = { last_refresh = st.last_refresh, failures = n, last_error = err.message or tostring(err),
                error_kind = err.kind, fp = fingerprint(e.text) }
  if err.kind == "invalid_grant" then
    nst.needs_login = true
    log("warn", format("refresh %s: %s; the account needs a new login (cliproxy login %s) and is out of the pool "
      .. "until its file changes", file, nst.last_error, e.type))
    put_state(file, nst)
    bump_epoch()
    return
  end
  local back = _M.backoff(cfg, n, err.retry_after)
  nst.retry_at = now + back
  log("warn", format("refresh %s failed (%d in a row): %s; next try in %d s", file, n, nst.last_error, floor(back)))
  put_state(file, nst)
end

-- Under the lock. opts.due_only: the scheduler's call (skip when the
-- file is no longer due, e.g. another process refreshed it).
local function locked(cfg, file, seen, opts)
  -- In the threadpool when we can (blocking file I/O stays off the loop).
  if store.rescan_async then store.rescan_async() else store.rescan() end
  local e = docs()[file]
  if not e then return nil, "credential file " .. file .. " is gone" end
  local doc = e.doc
  if seen and changed(doc, seen) then return doc end -- refreshed by another
  local facts = facts_for(cfg, e.type)
  if not facts then return nil, "no OAuth facts for " .. e.type end
  local now = cpx.now()
  local st = get_state(file)
  if st.needs_login and st.fp == fingerprint(e.text) then
    return nil, "the account needs a new login"
  end
  if st.retry_at and st.retry_at > now then
    return nil, format("refresh backing off for %d s after: %s", floor(st.retry_at - now), tostring(st.last_error))
  end
  if opts.due_only and oauth.due(facts, doc, now) > now then return doc end
  local new, err = oauth.refresh(facts, doc, { proxy = nonempty(doc.proxy_url) })
  if not new then
    failed(cfg, file, e, st, type(err) == "table" and err or { kind = "http", message = tostring(err) }, now)
    return nil, type(err) == "table" and err.message or tostring(err)
  end
  local text = oauth.encode(new)
  local ok, werr = (store.write_async or store.write)(file, text)
  if not ok then
    -- The server may have rotated the refresh token: the new one exists
    -- only in this worker now. Keep using it here and say so loudly.
    log("error", format("refresh %s: the new tokens could not be written (%s); a restart now loses the login",
      file, tostring(werr)))
    cache.docs[file] = { doc = new, text = text, type = e.type }
  end
  put_state(file, { last_refresh = now, failures = 0, fp = fingerprint(text) })
  log("info", format("refresh %s: new access token (expires %s)", file, tostring(new.expired or new.expiry or "?")))
  return new
end

-- Refreshes `file` unless the file no longer says `seen` (then the
-- current document is the answer). Yields. Returns the document or nil,
-- err.
function _M.refresh(cfg, file, seen, opts)
  local dir = store.dir()
  if not dir then return nil, "no auth-dir" end
  local lk, lerr = cpx.lock("refresh:" .. file, { file = dir .. "/." .. file .. ".lock", timeout = 60 })
  if not lk then return nil, "refresh lock of " .. file .. ": " .. tostring(lerr) end
  local ok, doc, err = pcall(locked, cfg, file, seen, opts or {})
  lk:release()
  if not ok then
    log("error", "refresh " .. file .. ": " .. tostring(doc))
    return nil, tostring(doc)
  end
  return doc, err
end

-- ---- on demand (rt.pipeline) ----------------------------------------------

-- A request does not refresh in its own coroutine: a client that goes away
-- aborts that coroutine's fetches and releases its locks, which could cut
-- a token call after the server rotated the refresh token and lose the
-- login. The refresh runs in a task instead (one per account and worker at
-- a time; later callers join it) and the request waits for its answer.
local flights = {}

local function refresh_in_task(cfg, file, seen)
  local fl = flights[file]
  if not fl then
    fl = {}
    local ok = cpx.timer and cpx.timer.at(0, function(premature)
      if premature then
        fl.err = "generation retired"
      else
        fl.doc, fl.err = _M.refresh(cfg, file, seen)
      end
      fl.done = true
      if flights[file] == fl then flights[file] = nil end
    end)
    if not ok then return _M.refresh(cfg, file, seen) end
    flights[file] = fl
  end
  while not fl.done do
    local ok, err = cpx.sleep(0.02)
    if not ok then return nil, err end
  end
  -- A flight that started from an older view still answers with the
  -- file's current document; one that failed is this caller's failure.
  return fl.doc, fl.err
end

local function with_token(key, token)
  if not token or token == key["api-key"] then return key end
  local k = json.shallow_copy(key)
  k["api-key"] = token
  return k
end

-- The document field whose value goes upstream: the access token, or
-- what the provider's oauth.upstream_token names (iFlow's api_key).
local function upstream_field(cfg, kind)
  local f = facts_for(cfg, kind)
  return f and f.upstream_token or "access_token"
end

-- The key to send for an OAuth target: the file's current token, after
-- waiting for a refresh when it is expired or about to be.
function _M.fresh_key(app, target, key)
  local file = target.credential
  local e = file and docs()[file]
  if not e then return key end
  local doc = e.doc
  local exp = oauth.expiry(doc)
  local field = upstream_field(app.config, e.type)
  -- expired or about to, or never minted yet (an imported service account)
  if ((exp and exp - cpx.now() <= MARGIN) or not nonempty(doc[field])) and refreshable(doc) then
    local nd, err = refresh_in_task(app.config, file, snapshot(doc))
    if nd then
      doc = nd
    else
      log("warn", "refresh " .. file .. " before sending: " .. tostring(err))
    end
  end
  return with_token(key, nonempty(doc[field]))
end

-- After the upstream said 401 to `key`: one refresh (or the token another
-- worker got meanwhile). Returns the key to retry with, or nil.
function _M.after_401(app, target, key)
  local file = target.credential
  local e = file and docs()[file]
  if not e or not refreshable(e.doc) then return nil end
  local seen = snapshot(e.doc)
  if upstream_field(app.config, e.type) == "access_token" then seen.access_token = key["api-key"] end
  local nd, err = refresh_in_task(app.config, file, seen)
  if not nd then
    log("warn", "refresh " .. file .. " after a 401: " .. tostring(err))
    return nil
  end
  local tok = nonempty(nd[upstream_field(app.config, e.type)])
  if not tok or tok == key["api-key"] then return nil end
  return with_token(key, tok)
end

-- ---- the scheduler ----------------------------------------------------------

local function tick(premature, cfg)
  if premature then return end
  local now = cpx.now()
  for file, e in pairs(docs()) do
    local facts = refreshable(e.doc) and facts_for(cfg, e.type)
    if facts and not _M.blocked(file, e.text) then
      local st = get_state(file)
      local due = oauth.due(facts, e.doc, now)
      if st.retry_at and st.retry_at > due then due = st.retry_at end
      if now >= due then _M.refresh(cfg, file, snapshot(e.doc), { due_only = true }) end
    end
  end
end
_M.tick = tick

local current_cfg

function _M.init_worker(app)
  current_cfg = app.config
  if not cpx.timer or cpx.worker_id() ~= 0 or not store.dir() then return end
  local s = settings(app.config)
  local ok, err = cpx.timer.at(0, tick, app.config)
  if ok then ok, err = cpx.timer.every(s.check, tick, app.config) end
  if not ok then log("error", "refresh: scheduler not started: " .. tostring(err)) end
end

-- ---- state for the management API ----------------------------------------

function _M.state(cfg)
  cfg = cfg or current_cfg
  local out = {}
  local now = cpx.now()
  for file, e in pairs(docs()) do
    local st = get_state(file)
    local blocked = st.needs_login == true and st.fp == fingerprint(e.text)
    local facts = cfg and facts_for(cfg, e.type)
    local due = facts and nonempty(e.doc.refresh_token) and oauth.due(facts, e.doc, now) or nil
    if due and st.retry_at and st.retry_at > due then due = st.retry_at end
    out[file] = {
      type = e.type, email = nonempty(e.doc.email),
      last_refresh = oauth.parse_time(e.doc.last_refresh) or st.last_refresh,
      expires = oauth.expiry(e.doc),
      next_due = not blocked and due or nil,
      last_error = st.last_error, error_kind = st.error_kind,
      needs_login = blocked, failures = st.failures or 0,
      retry_at = not blocked and st.retry_at or nil,
    }
  end
  return out
end

return _M
