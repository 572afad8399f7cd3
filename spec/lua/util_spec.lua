-- The Lua-visible part of the runtime's `cpx` module (cpx_lua_util.c).
local cpx = require("cpx")

local json = cpx.json

describe("cpx.json", function()
  it("keeps [] and {} apart", function()
    assert.equal("[]", json.encode(json.decode("[]")))
    assert.equal("{}", json.encode(json.decode("{}")))
    assert.equal('{"a":[]}', json.encode(json.decode('{"a":[]}')))
    assert.equal("[[],{}]", json.encode(json.decode("[[],{}]")))
  end)

  it("marks decoded arrays with array_mt", function()
    local v = json.decode('{"list":[1,2],"obj":{}}')
    assert.equal(json.array_mt, getmetatable(v.list))
    -- objects carry their key order in their own metatable, never array_mt
    assert.are_not.equal(json.array_mt, getmetatable(v.obj))
    assert.are_not.equal(json.array_mt, getmetatable(v))
    assert.equal(json.array_mt, debug.getregistry()["cpx.json.array_mt"])
  end)

  it("decodes null to the json.null sentinel", function()
    local v = json.decode('{"a":null,"b":[null]}')
    assert.equal(json.null, v.a)
    assert.equal(json.null, v.b[1])
    assert.equal("null", json.encode(json.null))
    assert.equal('{"a":null}', json.encode({ a = json.null }))
  end)

  it("encodes sequences as arrays and other tables as objects", function()
    assert.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
    assert.equal("{}", json.encode({}))
    assert.equal("[]", json.encode(json.array()))
    assert.equal("[]", json.encode(json.array({})))
    assert.equal('{"2":"x"}', json.encode({ [2] = "x" }))
    assert.equal('{"k":"v"}', json.encode({ k = "v" }))
    assert.equal("[1,null,3]", json.encode(json.array({ 1, json.null, 3 })))
  end)

  it("round-trips numbers", function()
    assert.equal("9007199254740991", json.encode(json.decode("9007199254740991")))
    assert.equal("0.1", json.encode(json.decode("0.1")))
    assert.equal("-2.5e-10", json.encode(json.decode("-2.5e-10")))
    assert.equal("100", json.encode(100.0))
    assert.equal(1024, json.decode('{"max_tokens":1024}').max_tokens)
  end)

  it("decodes unicode escapes, including surrogate pairs", function()
    assert.equal("\xC3\xA9", json.decode('"\\u00e9"'))
    assert.equal("\xF0\x9F\x98\x80", json.decode('"\\ud83d\\ude00"'))
  end)

  it("returns nil, err on bad input", function()
    local v, err = json.decode('{"a":')
    assert.is_nil(v)
    assert.matches("^json: .* at byte %d+$", err)
    v, err = json.decode('"\255"')
    assert.is_nil(v)
    assert.matches("^json: ", err)
    v, err = json.decode(string.rep("[", 2000) .. string.rep("]", 2000))
    assert.is_nil(v)
    assert.matches("nesting too deep", err)
  end)

  it("refuses to encode NaN, infinity and functions", function()
    local s, err = json.encode(0 / 0)
    assert.is_nil(s)
    assert.matches("NaN", err)
    s, err = json.encode({ x = math.huge })
    assert.is_nil(s)
    assert.is_string(err)
    s, err = json.encode({ f = print })
    assert.is_nil(s)
    assert.matches("function", err)
  end)
end)

describe("cpx.base64", function()
  it("encodes and decodes RFC 4648 vectors", function()
    local vectors = {
      { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
      { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
    }
    for _, v in ipairs(vectors) do
      assert.equal(v[2], cpx.base64.encode(v[1]))
      assert.equal(v[1], cpx.base64.decode(v[2]))
    end
  end)

  it("has a URL-safe form without padding and decodes missing padding", function()
    assert.equal("__79", cpx.base64.encode("\255\254\253", true))
    assert.equal("-_8", cpx.base64.encode("\251\255", true))
    assert.equal("\251\255", cpx.base64.decode("-_8"))
    assert.equal("foob", cpx.base64.decode("Zm9vYg"))
  end)

  it("rejects invalid input", function()
    local s, err = cpx.base64.decode("Z")
    assert.is_nil(s)
    assert.is_string(err)
    assert.is_nil((cpx.base64.decode("Zm9v!")))
    assert.is_nil((cpx.base64.decode("Zm=9v")))
  end)
end)

describe("cpx digests and random", function()
  it("computes sha256", function()
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", cpx.sha256_hex("abc"))
    assert.equal(32, #cpx.sha256("abc"))
  end)

  it("computes HMAC-SHA256 (RFC 4231 test cases 1 and 2)", function()
    assert.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      cpx.hmac_sha256_hex(string.rep("\11", 20), "Hi There"))
    assert.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      cpx.hmac_sha256_hex("Jefe", "what do ya want for nothing?"))
    assert.equal(32, #cpx.hmac_sha256("k", "v"))
  end)

  it("makes v4 uuids and random bytes", function()
    local pat = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
    local a, b = cpx.uuid(), cpx.uuid()
    assert.matches(pat, a)
    assert.matches(pat, b)
    assert.not_equal(a, b)
    assert.equal(16, #cpx.random_bytes(16))
    assert.equal("", cpx.random_bytes(0))
  end)

  it("draws uuids from a refilled pool: all distinct, all v4, every hex digit in use", function()
    -- 256 ids use one 4 KiB pool; 2000 cross seven refills
    local pat = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
    local seen, n, digits = {}, 2000, {}
    for _ = 1, n do
      local u = cpx.uuid()
      assert.matches(pat, u)
      assert.is_nil(seen[u])
      seen[u] = true
      -- the first 8 digits are pure random: each of the 16 values shows up
      for c in u:sub(1, 8):gmatch("%x") do digits[c] = (digits[c] or 0) + 1 end
    end
    local kinds = 0
    for _, count in pairs(digits) do
      kinds = kinds + 1
      -- 16000 digits, 1000 expected each; a stuck or repeating pool is far off
      assert.is_true(count > 800 and count < 1200, "digit count " .. count)
    end
    assert.equal(16, kinds)
  end)

  it("has wall and monotonic clocks", function()
    assert.is_true(cpx.now() > 1.6e9)
    local t0 = cpx.monotonic()
    assert.is_true(cpx.monotonic() >= t0)
  end)
end)

describe("cpx.sse", function()
  local function feed_all(framer, chunks)
    local out = {}
    for _, c in ipairs(chunks) do
      local evs = assert(framer:feed(c))
      for _, ev in ipairs(evs) do
        out[#out + 1] = ev
      end
    end
    return out
  end

  it("frames events across arbitrary splits", function()
    local evs = feed_all(cpx.sse.new(), { "data: a\r", "\n\r", "\ndata: b\r\n\r\n" })
    assert.same({ { data = "a" }, { data = "b" } }, evs)
  end)

  it("reports event, id and retry", function()
    local evs = feed_all(cpx.sse.new(), {
      ': keepalive\nevent: error\nid: 7\nretry: 1500\ndata: {"x":1}\n\n',
    })
    assert.same({ { event = "error", id = "7", retry = 1500, data = '{"x":1}' } }, evs)
  end)

  it("gives the same events byte by byte", function()
    local s = "event: message_start\ndata: {}\n\n: ping\r\n\r\ndata: x\rdata: y\r\rdata: [DONE]\n\n"
    local whole = feed_all(cpx.sse.new(), { s })
    local bytes = {}
    for i = 1, #s do
      bytes[i] = s:sub(i, i)
    end
    assert.same(whole, feed_all(cpx.sse.new(), bytes))
    assert.equal(3, #whole)
    assert.equal("x\ny", whole[2].data)
  end)

  it("fails past max_event and stays failed", function()
    local f = cpx.sse.new(16)
    local evs, err = f:feed(string.rep("data: 0123456789\n", 3))
    assert.is_nil(evs)
    assert.matches("limit", err)
    assert.is_nil((f:feed("\n")))
  end)
end)

describe("cpx.jsonarr", function()
  it("frames a streamed JSON array", function()
    local f = cpx.jsonarr.new()
    local got = {}
    for _, c in ipairs({ '[{"a":"]"}', ',\r\n{"b":[1,', "2]}", "]" }) do
      for _, e in ipairs(assert(f:feed(c))) do
        got[#got + 1] = e
      end
    end
    assert.same({ '{"a":"]"}', '{"b":[1,2]}' }, got)
    assert.same({ b = { 1, 2 } }, json.decode(got[2]))
  end)

  it("rejects bytes that are not an array", function()
    local evs, err = cpx.jsonarr.new():feed("{}")
    assert.is_nil(evs)
    assert.is_string(err)
  end)
end)
