-- rt.middleware: the hook chain configured by `lua.middleware`.
--
-- A middleware module (lua/middleware/<name>.lua, or the same relative name
-- in a `lua.paths` directory, which wins) returns its contract as data:
--
--   return {
--     name = "<name>",          -- must equal the file name
--     priority = 1000,          -- number; higher runs first
--     version = "1.0",          -- optional string
--     schema = { <field> = { type = ..., default = ..., required = ... } },
--     hooks = { access = fn, rewrite = fn, before_upstream = fn,
--               on_headers = fn, on_chunk = fn, after = fn, log = fn },
--     init_worker = fn,         -- optional: fn(conf) once per worker and
--                               -- generation (start cpx.timer tasks here)
--   }
--
-- Every hook is called as hook(conf, ctx, ...) with the entry's validated
-- settings and the request's ctx. See docs/modules.md for each phase.
--
-- Contract used by rt.boot, rt.server and rt.pipeline:
--   mw.load(cfg, lines) -> chain | nil, err   (err names file and field)
--   mw.run(chain, phase, ctx, ...)
--       access           -> true | false, status, message
--       on_chunk         -> list of IR events (possibly empty)
--       other phases     -> nothing (hooks edit their arguments)
--   mw.wants_chunks(chain) -> bool (an on_chunk hook disables passthrough)
--   mw.defer_log(ctx)        the log phase runs when the stream ends
--   mw.done(chain, info, err) end of the request handler: runs the log
--                             phase unless a stream deferred it
local cpx = require("cpx")

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local tostring = tostring
local error = error
local pcall = pcall
local xpcall = xpcall
local require = require
local setmetatable = setmetatable
local format = string.format
local concat = table.concat
local sort = table.sort
local co_create = coroutine.create
local co_resume = coroutine.resume
local co_status = coroutine.status

local validate = require("rt.validate")

local log = cpx.log
local traceback = cpx.traceback

local _M = {}

-- Phases in the order a request meets them. `yield` marks the ones that
-- run in the request's coroutine and may call cpx.fetch / cpx.sleep.
local PHASES = { "access", "rewrite", "before_upstream", "on_headers", "on_chunk", "after", "log" }
local YIELDABLE = { access = true, rewrite = true, before_upstream = true }
local IS_PHASE = {}
for _, p in ipairs(PHASES) do IS_PHASE[p] = true end
_M.PHASES = PHASES
_M.YIELDABLE = YIELDABLE

-- Keys of a `lua.middleware` entry that belong to the loader, not the module.
local RESERVED = { name = true, priority = true }

local EMPTY = { hooks = {}, list = {} }

local is_list = validate.is_list
local describe = validate.describe
local check_spec = validate.check_spec

-- ---- module shape -------------------------------------------------------

-- Checks what a middleware file returned. Errors read
-- "middleware/<name>.lua: field '<field>' ...".
local function check_module(name, m)
  local file = "middleware/" .. name .. ".lua"
  local function bad(fmt, ...)
    return nil, file .. ": " .. format(fmt, ...)
  end
  if type(m) ~= "table" then return bad("module must return a table, got %s", type(m)) end
  if type(m.name) ~= "string" then return bad("field 'name' must be a string") end
  if m.name ~= name then return bad("field 'name' must be '%s' (the file name), got '%s'", name, m.name) end
  if type(m.priority) ~= "number" then return bad("field 'priority' must be a number") end
  if m.version ~= nil and type(m.version) ~= "string" then return bad("field 'version' must be a string") end
  if type(m.schema) ~= "table" then return bad("field 'schema' must be a table (use {} for no settings)") end
  for k, spec in pairs(m.schema) do
    if type(k) ~= "string" then return bad("field 'schema' must map setting names to field specs") end
    if RESERVED[k] then return bad("field 'schema.%s' is reserved for the loader", k) end
    local ok, err = check_spec(spec, "schema." .. k)
    if not ok then return bad("%s", err) end
  end
  if m.init_worker ~= nil and type(m.init_worker) ~= "function" then
    return bad("field 'init_worker' must be a function")
  end
  if type(m.hooks) ~= "table" then return bad("field 'hooks' must be a table") end
  for k, fn in pairs(m.hooks) do
    if not IS_PHASE[k] then
      return bad("field 'hooks.%s' is not a hook (%s)", tostring(k), concat(PHASES, ", "))
    end
    if type(fn) ~= "function" then return bad("field 'hooks.%s' must be a function", k) end
  end
  for _, p in ipairs(PHASES) do
    if m[p] ~= nil then return bad("field '%s' must be inside 'hooks'", p) end
  end
  return true
end
_M.check_module = check_module

-- ---- load -----------------------------------------------------------------

-- Loads and validates every `lua.middleware` entry. lines maps config key
-- paths to line numbers (from the YAML loader).
function _M.load(cfg, lines)
  local list = cfg.lua and cfg.lua.middleware or {}
  if #list == 0 then return EMPTY end
  lines = lines or {}
  local file = cfg._file or "config.yaml"
  local function fail(path, msg)
    return nil, validate.message(file, lines, path, msg)
  end

  local entries = {}
  for i, e in ipairs(list) do
    local path = "lua.middleware." .. i
    if type(e) ~= "table" or is_list(e) and next(e) ~= nil then
      return fail(path, "expected a mapping with a 'name', got " .. describe(e))
    end
    local name = e.name
    if type(name) ~= "string" then
      return fail(path .. ".name", "expected a string, got " .. describe(name))
    end
    if not name:match("^[%w_%-]+$") then
      return fail(path .. ".name", format("'%s' is not a module name (letters, digits, _ and -)", name))
    end
    local ok, m = pcall(require, "middleware." .. name)
    if not ok then
      m = tostring(m)
      if m:find("module 'middleware." .. name .. "' not found", 1, true) then
        return fail(path .. ".name", format("no middleware '%s' (looked for middleware/%s.lua in lua.paths and lua/)",
          name, name))
      end
      return nil, m
    end
    local good, err = check_module(name, m)
    if not good then return nil, err end
    if e.priority ~= nil and type(e.priority) ~= "number" then
      return fail(path .. ".priority", "expected a number, got " .. describe(e.priority))
    end
    local settings = {}
    for k, v in pairs(e) do
      if not RESERVED[k] then settings[k] = v end
    end
    local conf, p, msg = validate.fields(m.schema, settings, path, { unknown = "error" })
    if not conf then
      if msg == "unknown field" and p:match("^lua%.middleware%.%d+%.[^.]+$") then
        local known = {}
        for k in pairs(m.schema) do known[#known + 1] = k end
        sort(known)
        msg = format("unknown setting for middleware '%s' (settings: %s)", name,
          #known > 0 and concat(known, ", ") or "none")
      end
      return fail(p, msg)
    end
    entries[#entries + 1] = { name = name, index = i, module = m, conf = conf,
                              priority = e.priority or m.priority }
  end
  -- Descending priority; equal priorities keep the config order.
  sort(entries, function(a, b)
    if a.priority ~= b.priority then return a.priority > b.priority end
    return a.index < b.index
  end)
  local hooks = {}
  for _, p in ipairs(PHASES) do
    local hl = {}
    for _, en in ipairs(entries) do
      local fn = en.module.hooks[p]
      if fn then hl[#hl + 1] = { fn = fn, conf = en.conf, entry = en } end
    end
    if #hl > 0 then hooks[p] = hl end
  end
  return { hooks = hooks, list = entries }
end

-- ---- per-request state ----------------------------------------------------

-- One state table per request, keyed by the request's info table (the same
-- table in every phase), so ctx.plugin survives from access to log.
local STATES = setmetatable({}, { __mode = "k" })

local function state_of(ctx)
  local key = ctx.info or ctx
  local st = STATES[key]
  if not st then
    st = { plugin = {}, shared = {} }
    STATES[key] = st
  end
  return st
end

local function prepare(ctx)
  local st = state_of(ctx)
  ctx.shared = st.shared
  if ctx.request_id == nil and ctx.info then ctx.request_id = ctx.info.id end
  st.ctx = ctx
  return st
end

local function plugin_state(st, h)
  local en = h.entry
  local t = st.plugin[en]
  if not t then
    t = {}
    st.plugin[en] = t
  end
  return t
end

-- Runs a hook that must not yield: inside its own coroutine, so cpx.fetch
-- and cpx.sleep refuse to run and a coroutine.yield is caught.
local function on_hook_error(e)
  return traceback and traceback(tostring(e), 2) or tostring(e)
end

local function call_noyield(h, phase, ctx, a, b)
  local co = co_create(function(...)
    return xpcall(h.fn, on_hook_error, ...)
  end)
  local ok, fine, r1 = co_resume(co, h.conf, ctx, a, b)
  if not ok then error(fine, 0) end
  if co_status(co) ~= "dead" then
    error(format("middleware '%s': hook '%s' may not yield (only access, rewrite and before_upstream may)",
      h.entry.name, phase), 0)
  end
  if not fine then error(r1, 0) end
  return r1
end

local function run_chunk(hooks, st, ctx, ev)
  local evs = { ev }
  for _, h in ipairs(hooks) do
    local out = {}
    ctx.plugin = plugin_state(st, h)
    for _, e in ipairs(evs) do
      local r = h.fn(h.conf, ctx, e)
      if r == nil then
        out[#out + 1] = e
      elseif r ~= false then
        if type(r) ~= "table" then
          error(format("middleware '%s': on_chunk must return nil, false, an event or a list of events, got %s",
            h.entry.name, type(r)), 0)
        end
        if r.t then
          out[#out + 1] = r
        else
          for _, x in ipairs(r) do out[#out + 1] = x end
        end
      end
    end
    evs = out
    if #evs == 0 then break end
  end
  return evs
end

function _M.run(chain, phase, ctx, a, b)
  local hooks = chain.hooks[phase]
  if not hooks then
    if phase == "access" then return true end
    if phase == "on_chunk" then return { a } end
    if phase == "after" and chain.hooks.log then prepare(ctx).res = a end
    return
  end
  local st = prepare(ctx)
  if phase == "on_chunk" then return run_chunk(hooks, st, ctx, a) end
  if phase == "log" then
    if st.logged then return end
    st.logged = true
    for _, h in ipairs(hooks) do
      ctx.plugin = plugin_state(st, h)
      local ok, err = pcall(call_noyield, h, phase, ctx, a)
      if not ok then log("error", format("middleware '%s' log hook failed: %s", h.entry.name, tostring(err))) end
    end
    return
  end
  if phase == "after" then st.res = a end
  local yieldable = YIELDABLE[phase]
  for _, h in ipairs(hooks) do
    ctx.plugin = plugin_state(st, h)
    if phase == "access" then
      local status, msg = h.fn(h.conf, ctx)
      if status ~= nil then
        if type(status) ~= "number" or status < 400 or status > 599 then
          error(format("middleware '%s': access must return nothing or a 4xx/5xx status and a message, got %s",
            h.entry.name, describe(status)), 0)
        end
        st.res = { status = status, message = msg }
        return false, status, msg
      end
    elseif yieldable then
      h.fn(h.conf, ctx, a, b)
    else
      call_noyield(h, phase, ctx, a, b)
    end
  end
  if phase == "access" then return true end
end

function _M.wants_chunks(chain)
  return chain.hooks.on_chunk ~= nil
end

function _M.defer_log(ctx)
  state_of(ctx).deferred = true
end

-- End of the request handler (rt.server): the log phase, unless a stream
-- is still running (then the pipeline runs it when the stream ends).
-- status: what the client was answered (cliproxy's own errors never ran
-- the "after" phase that records it).
function _M.done(chain, info, err, status)
  if not chain.hooks.log then return end
  local st = STATES[info]
  if st and (st.deferred or st.logged) then return end
  local ctx = st and st.ctx or { info = info }
  local res = st and st.res or {}
  if res.status == nil then res.status = status end
  if err then res.error = err end
  _M.run(chain, "log", ctx, res)
end

return _M
