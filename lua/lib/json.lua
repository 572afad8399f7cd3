-- lib.json: the JSON functions every Lua module uses.
-- They come from the runtime (`cpx.json`, C over yajl): arrays decode with
-- `array_mt` so `[]` stays `[]` on re-encode, and JSON null is `json.null`.
-- Decoded objects keep their key order in their own metatable and numbers
-- keep their input text in `cpx.json.raw_text` (weak-keyed), so an untouched
-- body re-encodes byte for byte; the copies below carry both.
local cpx = require("cpx")

local cjson = cpx.json
local raw_text = cjson.raw_text or setmetatable({}, { __mode = "k" })
local pairs = pairs
local setmetatable = setmetatable
local getmetatable = getmetatable
local type = type
local rawget = rawget
local ipairs = ipairs

local _M = {
  decode = cjson.decode,
  encode = cjson.encode,
  null = cjson.null,
  array_mt = cjson.array_mt,
  -- the passthrough fast path (runtime/core/cpx_json_scan.c)
  peek = cjson.peek,
  set_string = cjson.set_string,
  has = cjson.has,
  -- top-level reads and edits without a decode (codex's raw_fixup)
  top = cjson.top,
  edit = cjson.edit,
  -- spans (docs/lua-api.md): decode(s, spec) leaves the containers at the
  -- spec's paths as their bytes; raw(text) makes one from a JSON text
  spec = cjson.spec,
  raw = cjson.raw,
  span_mt = cjson.span_mt,
}

local decode = cjson.decode
local span_mt = cjson.span_mt

-- true when v is a span (a carried subtree kept as its bytes)
function _M.is_span(v)
  return type(v) == "table" and getmetatable(v) == span_mt
end

-- The bytes of span v (compact JSON), nil for anything else.
function _M.span_text(v)
  if type(v) == "table" and getmetatable(v) == span_mt then return raw_text[v] end
  return nil
end

-- v itself, or for a span its decoded value: what a translator calls
-- before it looks inside a subtree its codec declared carried.
function _M.materialize(v)
  if type(v) == "table" and getmetatable(v) == span_mt then
    return decode(raw_text[v])
  end
  return v
end

-- Marks t (or a new table) as a JSON array.
function _M.array(t)
  return setmetatable(t or {}, cjson.array_mt)
end

-- A copy of t's top level (same metatable, so an array stays an array):
-- enough to change a few top-level fields of a decoded body.
function _M.shallow_copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  raw_text[o] = raw_text[t]
  return setmetatable(o, getmetatable(t))
end

-- A full copy (arrays stay arrays).
local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local o = {}
  for k, x in pairs(v) do o[k] = deep_copy(x) end
  raw_text[o] = raw_text[v]
  return setmetatable(o, getmetatable(v))
end
_M.deep_copy = deep_copy

-- Gives dst (a new object built from src's members) src's recorded key
-- order, so the keys src had come out in src's order; returns dst.
function _M.keep_order(dst, src)
  local mt = type(src) == "table" and getmetatable(src)
  if mt and mt ~= cjson.array_mt and rawget(mt, 1) ~= nil then
    setmetatable(dst, mt)
  end
  return dst
end

-- An object whose keys encode in the given order:
-- object({ {"type", "error"}, {"error", e} }). For documents whose order
-- is a fact (error envelopes, token requests); nil values are left out.
function _M.object(list)
  local t, keys = {}, {}
  for _, kv in ipairs(list) do
    if kv[2] ~= nil then
      keys[#keys + 1] = kv[1]
      t[kv[1]] = kv[2]
    end
  end
  return setmetatable(t, keys)
end

function _M.is_array(t)
  return type(t) == "table" and getmetatable(t) == cjson.array_mt
end

return _M
