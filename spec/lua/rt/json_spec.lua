-- lib.json fidelity (issue 12): decode -> encode gives back the input bytes;
-- edits change only what they touch; copies carry order and number text.
local json = require("lib.json")

-- compact documents that must come back byte for byte
local SAME = {
  '{"zeta":1,"alpha":2,"reasoning":{"z":{"y":1,"b":2},"a":[]},"answer":"x"}',
  '{"n":12345678901234567891}',
  '{"n":-9223372036854775808}',
  '[12345678901234567891,-9223372036854775808]',
  '{"x":1.10,"y":-0,"z":1e-7,"w":1E+2,"v":2.50e3}',
  '[1.10,-0,1e-7,1E+2,0.1,42]',
  '{"s":"a\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001F"}',
  '{"raw":"\240\159\152\128 caf\195\169"}',
  '["\\ud83d\\ude00","\\u00e9","\\/","\\u001f"]',
  '{"k":"x\\\\","l":"\\/\\\\","m":"a\\\\\\"b"}',
  '{}', '[]', 'null', '{"a":null,"b":[null,{}],"c":[[]]}',
  '"text"', 'true', '7',
}

describe("lib.json fidelity", function()
  for _, s in ipairs(SAME) do
    it("round trips " .. s, function()
      assert.equal(s, json.encode(json.decode(s)))
    end)
  end

  it("changed, removed and added members", function()
    local v = json.decode('{"z":1.10,"n":12345678901234567891,"m":0,"a":1}')
    v.z = 1.25          -- changed: the new value
    v.m = nil           -- removed: gone
    v.y, v.b = 2, 3     -- added: after the recorded keys, sorted
    assert.equal('{"z":1.25,"n":12345678901234567891,"a":1,"b":3,"y":2}', json.encode(v))
    v.n = v.n + 1e6     -- no longer the recorded number
    assert.equal('{"z":1.25,"n":1.2345678901235567e+19,"a":1,"b":3,"y":2}', json.encode(v))
  end)

  it("a decoded {} stays a bare table, an object keeps its order list", function()
    local v = json.decode('{"e":{},"o":{"b":1,"a":2}}')
    assert.is_nil(getmetatable(v.e))
    assert.same({ "b", "a" }, { getmetatable(v.o)[1], getmetatable(v.o)[2] })
    v.e[1] = "x"
    assert.equal('{"e":["x"],"o":{"b":1,"a":2}}', json.encode(v))
  end)

  it("tables built in Lua encode with sorted keys", function()
    assert.equal('{"a":{"c":1,"d":2},"b":1,"z":[1]}',
      json.encode({ z = json.array({ 1 }), b = 1, a = { d = 2, c = 1 } }))
  end)

  it("objects with many keys: recorded first, then added, sorted", function()
    local t, want = {}, {}
    for i = 20, 1, -1 do t[("k%02d"):format(i)] = i end
    for i = 1, 20 do want[#want + 1] = ('"k%02d":%d'):format(i, i) end
    assert.equal("{" .. table.concat(want, ",") .. "}", json.encode(t))
    local v = json.decode('{"z":0}')
    for k, x in pairs(t) do v[k] = x end
    assert.equal('{"z":0,' .. table.concat(want, ",") .. "}", json.encode(v))
  end)

  it("shallow_copy and deep_copy carry order and number text", function()
    local s = '{"z":{"q":1.10,"p":[1.10]},"a":12345678901234567891}'
    local v = json.decode(s)
    assert.equal(s, json.encode(json.shallow_copy(v)))
    assert.equal(s, json.encode(json.deep_copy(v)))
    local c = json.shallow_copy(v)
    c.b = true
    assert.equal('{"z":{"q":1.10,"p":[1.10]},"a":12345678901234567891,"b":true}', json.encode(c))
  end)

  it("keep_order gives a rebuilt object the source's order", function()
    local src = json.decode('{"zeta":1,"alpha":2}')
    local dst = json.keep_order({}, src)
    dst.alpha, dst.zeta = 2, 1
    assert.equal('{"zeta":1,"alpha":2}', json.encode(dst))
  end)
end)
