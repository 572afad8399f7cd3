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
local getmetatable = getmetatable
local format = string.format
local concat = table.concat
local sort = table.sort
local floor = math.floor
local co_create = coroutine.create
local co_resume = coroutine.resume
local co_status = coroutine.status

local log = cpx.log
local traceback = cpx.traceback
local null = cpx.json and cpx.json.null
local array_mt = cpx.json and cpx.json.array_mt

local _M = {}

-- Phases in the order a request meets them. `yield` marks the ones that
-- run in the request's coroutine and may call cpx.fetch / cpx.sleep.
local PHASES = { "access", "rewrite", "before_upstream", "on_headers", "on_chunk", "after", "log" }
local YIELDABLE = { access = true, rewrite = true, before_upstream = true }
local IS_PHASE = {}
for _, p in ipairs(PHASES) do IS_PHASE[p] = true end
_M.PHASES = PHASES
_M.YIELDABLE = YIELDABLE

local TYPES = { string = true, number = true, integer = true, boolean = true,
                list = true, map = true, record = true, any = true }
local SPEC_KEYS = { type = true, required = true, default = true, enum = true, min = true, max = true,
                    items = true, values = true, fields = true, check = true, description = true }
-- Keys of a `lua.middleware` entry that belong to the loader, not the module.
local RESERVED = { name = true, priority = true }

local EMPTY = { hooks = {}, list = {} }

-- ---- values -------------------------------------------------------------

local function is_null(v)
  return v == nil or (null ~= nil and v == null)
end

local function is_list(v)
  return type(v) == "table" and (getmetatable(v) == array_mt or next(v) == nil
    or (array_mt == nil and v[1] ~= nil))
end

local function describe(v)
  if is_null(v) then return "null" end
  local t = type(v)
  if t == "string" then return format("string %q", #v > 40 and v:sub(1, 40) .. "..." or v) end
  if t == "table" then return is_list(v) and next(v) ~= nil and "a list" or "a mapping" end
  return t .. " " .. tostring(v)
end

local deep_copy = require("lib.json").deep_copy

-- ---- schema of a module's settings ---------------------------------------

-- Checks a field spec of a module's schema; returns true or nil, err where
-- err names the field ("schema.header.type ...").
local function check_spec(spec, where)
  if type(spec) ~= "table" then
    return nil, format("field '%s' must be a table (a field spec)", where)
  end
  for k in pairs(spec) do
    if not SPEC_KEYS[k] then
      return nil, format("field '%s.%s' is not a field-spec key (type, required, default, enum, min, max, "
        .. "items, values, fields, check, description)", where, tostring(k))
    end
  end
  if not TYPES[spec.type] then
    return nil, format("field '%s.type' must be one of string, number, integer, boolean, list, map, record, any",
      where)
  end
  if spec.required ~= nil and type(spec.required) ~= "boolean" then
    return nil, format("field '%s.required' must be a boolean", where)
  end
  if spec.enum ~= nil and type(spec.enum) ~= "table" then
    return nil, format("field '%s.enum' must be a list", where)
  end
  if spec.check ~= nil and type(spec.check) ~= "function" then
    return nil, format("field '%s.check' must be a function", where)
  end
  for _, k in ipairs({ "min", "max" }) do
    if spec[k] ~= nil and type(spec[k]) ~= "number" then
      return nil, format("field '%s.%s' must be a number", where, k)
    end
  end
  if spec.type == "list" then
    if spec.items == nil then return nil, format("field '%s.items' is required for a list", where) end
    return check_spec(spec.items, where .. ".items")
  elseif spec.type == "map" then
    if spec.values == nil then return nil, format("field '%s.values' is required for a map", where) end
    return check_spec(spec.values, where .. ".values")
  elseif spec.type == "record" then
    if type(spec.fields) ~= "table" then
      return nil, format("field '%s.fields' must be a table for a record", where)
    end
    for k, s in pairs(spec.fields) do
      local ok, err = check_spec(s, where .. ".fields." .. tostring(k))
      if not ok then return nil, err end
    end
  end
  return true
end

-- Validates value v against spec. Returns the normalised value (defaults
-- filled in) or nil, path, message.
local validate_value

local function validate_fields(fields, v, path)
  local out = {}
  for k, x in pairs(v) do
    if not fields[k] then
      return nil, path .. "." .. tostring(k), "unknown field"
    end
    out[k] = x
  end
  local names = {}
  for k in pairs(fields) do names[#names + 1] = k end
  sort(names)
  for _, k in ipairs(names) do
    local nv, p, msg = validate_value(fields[k], out[k], path .. "." .. k)
    if p then return nil, p, msg end
    out[k] = nv
  end
  return out
end

validate_value = function(spec, v, path)
  if is_null(v) then
    if spec.required then return nil, path, "is required" end
    return deep_copy(spec.default)
  end
  local t = spec.type
  if t == "string" then
    if type(v) ~= "string" then return nil, path, "expected a string, got " .. describe(v) end
  elseif t == "number" or t == "integer" then
    if type(v) ~= "number" then
      return nil, path, (t == "integer" and "expected an integer, got " or "expected a number, got ") .. describe(v)
    end
    if t == "integer" and v ~= floor(v) then return nil, path, "expected an integer, got " .. tostring(v) end
    if spec.min and v < spec.min then return nil, path, format("must be at least %s, got %s", spec.min, v) end
    if spec.max and v > spec.max then return nil, path, format("must be at most %s, got %s", spec.max, v) end
  elseif t == "boolean" then
    if type(v) ~= "boolean" then return nil, path, "expected true or false, got " .. describe(v) end
  elseif t == "list" then
    if not is_list(v) then return nil, path, "expected a list, got " .. describe(v) end
    local out = setmetatable({}, array_mt)
    for i = 1, #v do
      local nv, p, msg = validate_value(spec.items, v[i], path .. "." .. i)
      if p then return nil, p, msg end
      out[i] = nv
    end
    v = out
  elseif t == "map" or t == "record" then
    if type(v) ~= "table" or (next(v) ~= nil and is_list(v)) then
      return nil, path, "expected a mapping, got " .. describe(v)
    end
    if t == "record" then
      local out, p, msg = validate_fields(spec.fields, v, path)
      if not out then return nil, p, msg end
      v = out
    else
      local out = {}
      for k, x in pairs(v) do
        local nv, p, msg = validate_value(spec.values, x, path .. "." .. tostring(k))
        if p then return nil, p, msg end
        out[tostring(k)] = nv
      end
      v = out
    end
  end
  if spec.enum then
    local ok = false
    for _, e in ipairs(spec.enum) do if e == v then ok = true end end
    if not ok then
      local names = {}
      for i, e in ipairs(spec.enum) do names[i] = tostring(e) end
      return nil, path, format("expected one of %s, got %s", concat(names, ", "), describe(v))
    end
  end
  if spec.check then
    local ok, err = spec.check(v)
    if not ok then return nil, path, err or "is invalid" end
  end
  return v
end

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
    local p, line = path, nil
    while p and not line do
      line = lines[p]
      p = p:match("^(.*)%.[^.]+$")
    end
    return nil, format("%s%s: %s: %s", file, line and (":" .. line) or "", path, msg)
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
    local conf, p, msg = validate_fields(m.schema, settings, path)
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
