-- fuzz driver (runtime/fuzz/fuzz_lua.c): rt.mgmt.yaml_edit on any text the
-- YAML loader accepts. Setting a key must give a document that loads and
-- holds the new value with every other top-level key unchanged; deleting it
-- must give one without it. It may refuse (nil, err); it never raises.
local cpx = require("cpx")
local ye = require("rt.mgmt.yaml_edit")

local decode = cpx.yaml.decode
local encode = cpx.json.encode

local function same(a, b)
  return encode(a) == encode(b)
end

return function(text)
  local doc = decode(text)
  if type(doc) ~= "table" then return end
  local keys = {}
  for k in pairs(doc) do
    if type(k) == "string" and k ~= "<<" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  keys[#keys + 1] = "fuzz-new-key"
  for i = 1, math.min(#keys, 4) do
    local k = keys[i]
    for _, v in ipairs({ "v: #x", 42, cpx.json.array({ "a", { b = 1 } }) }) do
      local out = ye.set(text, { k }, v)
      if out then
        local d2, err = decode(out)
        assert(d2, "set " .. k .. " gave YAML that does not load: " .. tostring(err))
        assert(same(d2[k], v), "set " .. k .. ": the value did not come back")
        for _, o in ipairs(keys) do
          if o ~= k and doc[o] ~= nil then
            assert(same(d2[o], doc[o]), "set " .. k .. " changed " .. o)
          end
        end
      end
    end
    local out = ye.delete(text, { k })
    if out then
      local d2 = decode(out)
      assert(d2, "delete " .. k .. " gave YAML that does not load")
      assert(d2[k] == nil, "delete " .. k .. ": still there")
    end
  end
end
