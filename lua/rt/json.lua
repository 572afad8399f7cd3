-- rt.json: the JSON functions every Lua module uses.
-- They come from the runtime (`cpx.json`, C over yajl): arrays decode with
-- `array_mt` so `[]` stays `[]` on re-encode, and JSON null is `json.null`.
local cpx = require("cpx")

local cjson = cpx.json
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

function _M.is_array(t)
  return type(t) == "table" and getmetatable(t) == cjson.array_mt
end

return _M
