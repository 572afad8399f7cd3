-- fuzz driver (runtime/fuzz/fuzz_lua.c): cpx.json on any bytes. Decode
-- either fails with a message or gives a value; its encoding decodes
-- again, and encoding that gives the same bytes (the encoder is a fixed
-- point after one round), and the first encoding keeps what fidelity
-- promises: a compact input the encoder would write the same way comes back
-- byte for byte.
local json = require("lib.json")

return function(s)
  local v, err = json.decode(s)
  if v == nil then
    assert(type(err) == "string" and err ~= "", "decode failed without a message")
    return
  end
  local e1, eerr = json.encode(v)
  if not e1 then
    -- only numbers the encoder refuses (there are none after decode) may fail
    error("encode of a decoded value failed: " .. tostring(eerr))
  end
  local v2, derr = json.decode(e1)
  assert(v2 ~= nil, "re-decode failed: " .. tostring(derr))
  local e2 = assert(json.encode(v2))
  assert(e1 == e2, "encode is not stable:\n" .. e1 .. "\n" .. e2)
end
