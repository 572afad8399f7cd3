-- cpx.json.peek / set_string: the passthrough fast path must agree with the
-- full decoder on every document it accepts, and refuse broken structure.
local cpx = require("cpx")
local json = cpx.json

describe("cpx.json.peek", function()
  local cases = {
    { '{"model":"m","stream":true}', "m", true },
    { ' {\n "stream" : false , "model" : "a\\"b" } ', 'a"b', false },
    { '{"messages":[{"role":"user","content":"x}]\\"{"}],"model":"gpt-5(high)"}', "gpt-5(high)", nil },
    { '{"model":"\\u00e9t\\u00e9","stream":null}', "été", nil },
    { '{"model":1.5}', 1.5, nil },
    { '{"model":{"a":[1,2,{"b":"]"}]}}', true, nil },
    { '{}', nil, nil },
  }
  for i, c in ipairs(cases) do
    it("reads top-level values, case " .. i, function()
      local m, s = json.peek(c[1], "model", "stream")
      assert.are.same(c[2], m)
      assert.are.same(c[3], s)
      -- agrees with the full decoder
      local full = json.decode(c[1])
      if type(full.model) ~= "table" then assert.are.same(full.model, m) end
    end)
  end

  local bad = {
    '{"model": "e2e-model", "messages": [{"role": "user", ',
    '{"model":"m"',
    '{"model":"m",}',
    '{"model" "m"}',
    '[1,2]',
    '{"a":[1,2}',
    '{"a":{"b":1]}',
    '{"a":"unterminated}',
    '{"a":1} trailing',
    '',
    '{"a":}',
  }
  for i, b in ipairs(bad) do
    it("rejects broken structure, case " .. i, function()
      local v, err = json.peek(b, "model")
      assert.is_nil(v)
      assert.matches("malformed", err)
    end)
  end

  it("handles escaped backslashes before quotes", function()
    local m = json.peek('{"x":"a\\\\","model":"q"}', "model")
    assert.are.equal("q", m)
  end)

  it("survives deep nesting without crashing", function()
    local deep = '{"a":' .. string.rep("[", 5000) .. string.rep("]", 5000) .. '}'
    local v, err = json.peek(deep, "a")
    assert.is_nil(v)
    assert.is_string(err)
  end)
end)

describe("cpx.json.set_string", function()
  it("replaces the top-level value and nothing else", function()
    local s = '{"messages":[{"model":"inner"}],"model":"alias","stream":true}'
    local out = json.set_string(s, "model", "upstream/name")
    assert.are.equal('{"messages":[{"model":"inner"}],"model":"upstream/name","stream":true}', out)
    local d = json.decode(out)
    assert.are.equal("inner", d.messages[1].model)
  end)
  it("escapes the new value", function()
    local out = json.set_string('{"model":"a"}', "model", 'x"y\n')
    assert.are.equal('x"y\n', json.decode(out).model)
  end)
  it("adds an absent key", function()
    assert.are.equal("m", json.decode(json.set_string('{"a":1}', "model", "m")).model)
    assert.are.equal("m", json.decode(json.set_string('{ }', "model", "m")).model)
  end)
  it("refuses a broken document", function()
    local v, err = json.set_string('{"model":', "model", "m")
    assert.is_nil(v)
    assert.matches("malformed", err)
  end)
end)

describe("cpx.json.has", function()
  it("tells which keys are top-level members, null included", function()
    local doc = '{"betas":null,"x":{"thinking":1},"max_tokens":9,"s":"\\"temperature\\""}'
    assert.are.same({ true, true, false, false, true },
      { json.has(doc, "betas", "max_tokens", "thinking", "temperature", "s") })
  end)
  it("refuses a broken document", function()
    local v, err = json.has('{"a":1', "a")
    assert.is_nil(v)
    assert.matches("malformed", err)
  end)
end)
