-- rt.json: the JSON functions every Lua module uses.
-- They come from the runtime (`cpx.json`, C over yajl): arrays decode with
-- `array_mt` so `[]` stays `[]` on re-encode, and JSON null is `json.null`.
local cpx = require("cpx")

local cjson = cpx.json
local pairs = pairs
local setmetatable = setmetatable
local getmetatable = getmetatable
local type = type

local _M = {
  decode = cjson.decode,
  encode = cjson.encode,
  null = cjson.null,
  array_mt = cjson.array_mt,
  -- the passthrough fast path (runtime/cpx_json_scan.c)
  peek = cjson.peek,
  set_string = cjson.set_string,
}

-- Marks t (or a new table) as a JSON array.
function _M.array(t)
  return setmetatable(t or {}, cjson.array_mt)
end

-- A copy of t's top level (same metatable, so an array stays an array):
-- enough to change a few top-level fields of a decoded body.
function _M.shallow_copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return setmetatable(o, getmetatable(t))
end

-- A full copy (arrays stay arrays).
local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local o = {}
  for k, x in pairs(v) do o[k] = deep_copy(x) end
  return setmetatable(o, getmetatable(v))
end
_M.deep_copy = deep_copy

function _M.is_array(t)
  return type(t) == "table" and getmetatable(t) == cjson.array_mt
end

return _M
