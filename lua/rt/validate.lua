-- rt.validate: the one validator for contracts written as data: config.yaml
-- (rt.config's schema) and every middleware module's settings
-- (rt.middleware). A field spec is a table:
--
--   type      string | number | integer | boolean | list | map | record | any
--   items     list: the spec of each item
--   values    map (string keys): the spec of each value
--   fields    record: name -> spec
--   required  true: absent (or null) is an error
--   default   the value when absent; it is validated like a given value, so
--             a record whose default is {} gets its fields' defaults
--   optional  record: absent stays nil even where a default exists
--   enum      the allowed values (after coercion)
--   min, max  number bounds
--   check     fn(v) -> true | nil, err (after every other check)
--   coerce    string: a YAML number or boolean is taken as its text
--   description
--
-- One coercion rule: nothing converts unless its spec says `coerce = true`
-- (config.yaml's strings do, as CLIProxyAPI's YAML decoding reads `key:
-- 123` as "123"; a middleware module's settings are strict unless the
-- module opts in).
--
--   validate.value(spec, v, path, opts) -> normalised value | nil, path, msg
--       opts.unknown: "error" (an unknown record field fails) or a list
--       that collects the unknown fields' paths (they are kept as given)
--   validate.message(file, lines, path, msg) -> "file:line: path: msg"
--       the line of the path or of its nearest parent that has one
--   validate.check_spec(spec, where) -> true | nil, err (a spec's shape)
local cpx = require("cpx")
local deep_copy = require("lib.json").deep_copy

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local format = string.format
local concat = table.concat
local sort = table.sort
local floor = math.floor

local null = cpx.json and cpx.json.null
local array_mt = cpx.json and cpx.json.array_mt

local _M = {}

local TYPES = { string = true, number = true, integer = true, boolean = true,
                list = true, map = true, record = true, any = true }
local SPEC_KEYS = { type = true, required = true, default = true, enum = true, min = true, max = true,
                    items = true, values = true, fields = true, check = true, description = true,
                    optional = true, coerce = true }

local function is_null(v)
  return v == nil or (null ~= nil and v == null)
end

local function is_list(v)
  return type(v) == "table" and (getmetatable(v) == array_mt or next(v) == nil
    or (array_mt == nil and v[1] ~= nil))
end
_M.is_list = is_list

local function describe(v)
  if is_null(v) then return "null" end
  local t = type(v)
  if t == "string" then return format("string %q", #v > 40 and v:sub(1, 40) .. "..." or v) end
  if t == "table" then return is_list(v) and next(v) ~= nil and "a list" or "a mapping" end
  return t .. " " .. tostring(v)
end
_M.describe = describe

local function join(path, k)
  return path ~= "" and (path .. "." .. k) or k
end

function _M.message(file, lines, path, msg)
  local p, line = path, nil
  while p and p ~= "" and not line do
    line = lines[p]
    p = p:match("^(.*)%.[^.]+$")
  end
  return format("%s%s: %s: %s", file, line and (":" .. line) or "", path ~= "" and path or "(top)", msg)
end

-- ---- a spec's shape ---------------------------------------------------------

local function check_spec(spec, where)
  if type(spec) ~= "table" then
    return nil, format("field '%s' must be a table (a field spec)", where)
  end
  for k in pairs(spec) do
    if not SPEC_KEYS[k] then
      return nil, format("field '%s.%s' is not a field-spec key (type, required, default, enum, min, max, "
        .. "items, values, fields, check, coerce, optional, description)", where, tostring(k))
    end
  end
  if not TYPES[spec.type] then
    return nil, format("field '%s.type' must be one of string, number, integer, boolean, list, map, record, any",
      where)
  end
  for _, k in ipairs({ "required", "optional", "coerce" }) do
    if spec[k] ~= nil and type(spec[k]) ~= "boolean" then
      return nil, format("field '%s.%s' must be a boolean", where, k)
    end
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
_M.check_spec = check_spec

-- ---- values -----------------------------------------------------------------

local value

local function record_fields(spec, v, path, opts)
  local fields, out = spec.fields, {}
  local extra = {}
  for k in pairs(v) do
    if not fields[k] then extra[#extra + 1] = tostring(k) end
  end
  sort(extra)
  for _, k in ipairs(extra) do
    if opts.unknown == "error" then return nil, join(path, k), "unknown field" end
    if type(opts.unknown) == "table" then opts.unknown[#opts.unknown + 1] = join(path, k) end
    out[k] = v[k]
  end
  local names = {}
  for k in pairs(fields) do names[#names + 1] = k end
  sort(names)
  for _, k in ipairs(names) do
    local nv, p, msg = value(fields[k], v[k], join(path, k), opts)
    if p then return nil, p, msg end
    out[k] = nv
  end
  return out
end

value = function(spec, v, path, opts)
  if is_null(v) then
    if spec.required then return nil, path, "is required" end
    if spec.default == nil or spec.optional then return nil end
    v = deep_copy(spec.default)
  end
  local t = spec.type
  if t == "string" then
    if spec.coerce and (type(v) == "number" or type(v) == "boolean") then v = tostring(v) end
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
      local nv, p, msg = value(spec.items, v[i], path .. "." .. i, opts)
      if p then return nil, p, msg end
      out[i] = nv
    end
    v = out
  elseif t == "map" or t == "record" then
    if type(v) ~= "table" or (next(v) ~= nil and is_list(v)) then
      return nil, path, "expected a mapping, got " .. describe(v)
    end
    if t == "record" then
      local out, p, msg = record_fields(spec, v, path, opts)
      if not out then return nil, p, msg end
      v = out
    else
      local out = {}
      for k, x in pairs(v) do
        local nv, p, msg = value(spec.values, x, join(path, tostring(k)), opts)
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
      return nil, path, format("expected one of %s, got %s", concat(names, ", "),
        type(v) == "string" and format("%q", v) or describe(v))
    end
  end
  if spec.check then
    local ok, err = spec.check(v)
    if not ok then return nil, path, err or "is invalid" end
  end
  return v
end

function _M.value(spec, v, path, opts)
  return value(spec, v, path or "", opts or {})
end

-- The fields of a record spec (given as its `fields` table) over v.
function _M.fields(fields, v, path, opts)
  return record_fields({ fields = fields }, v, path or "", opts or {})
end

return _M
