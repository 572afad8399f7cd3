-- Spans (issue 12): the subtrees a codec only carries stay as their bytes
-- (json.decode(s, spec)), and the upstream bytes are the same as with the
-- whole body decoded; arguments <-> input/args convert without a decode.
package.path = "./lua/?/init.lua;" .. package.path
local tr = require("translators")
local json = require("lib.json")
local fixture = require("fixture")

local function new_ctx()
  local n = 0
  return { model = "client-model", upstream_model = "up-model", now = 1700000000,
           id_gen = function(p) n = n + 1; return p .. "id" .. n end }
end

-- counts the spans in a decoded value
local function spans(v)
  if json.is_span(v) then return 1 end
  if type(v) ~= "table" then return 0 end
  local n = 0
  for _, x in pairs(v) do n = n + spans(x) end
  return n
end

-- Byte-exact content: 64-bit integers, 1.10, -0, 1e-7, escapes written as
-- the client wrote them, non-BMP characters, and key order zeta..alpha.
local TRICKY = [[{"zeta":{"type":"string","description":"caf\u00e9 \ud83d\ude00 a\/b \"q\""},]]
  .. [["alpha":{"type":"integer","minimum":-0,"maximum":12345678901234567891,"multipleOf":1e-7,"default":1.10}}]]
local SCHEMA = [[{"type":"object","properties":]] .. TRICKY .. [[,"required":["zeta"]}]]
local INPUT = [[{"zeta":"caf\u00e9 \ud83d\ude00","n":12345678901234567891,"x":1.10,"z":-0,"e":1e-7}]]

local CLAUDE = [[{"model":"m","max_tokens":10,"tools":[{"name":"f","description":"d","input_schema":]] .. SCHEMA
  .. [[}],"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use",]]
  .. [["id":"toolu_1","name":"f","input":]] .. INPUT .. [[}]},{"role":"user","content":[{"type":"tool_result",]]
  .. [["tool_use_id":"toolu_1","content":"ok"}]}],"context_management":{"edits":[{"type":"x","keep":"all"}]}}]]
local CHAT = [[{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":]] .. SCHEMA
  .. [[}}],"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1",]]
  .. [["type":"function","function":{"name":"f","arguments":]] .. json.encode(INPUT) .. [[}}]},]]
  .. [[{"role":"tool","tool_call_id":"c1","content":"ok"}]}]]
local GEMINI = [[{"contents":[{"role":"user","parts":[{"text":"hi"}]},{"role":"model","parts":[{"functionCall":]]
  .. [[{"name":"f","args":]] .. INPUT .. [[}}]},{"role":"user","parts":[{"functionResponse":{"name":"f",]]
  .. [["response":{"output":"ok"}}}]}],"tools":[{"functionDeclarations":[{"name":"f","parametersJsonSchema":]]
  .. SCHEMA .. [[}]}]}]]
local RESPONSES = [[{"model":"m","tools":[{"type":"function","name":"f","parameters":]] .. SCHEMA
  .. [[}],"input":[{"type":"message","role":"user","content":"hi"},{"type":"function_call","call_id":"c1",]]
  .. [["name":"f","arguments":]] .. json.encode(INPUT) .. [[},{"type":"function_call_output","call_id":"c1",]]
  .. [["output":"ok"}]}]]

local BODIES = { claude = CLAUDE, openai_chat = CHAT, gemini = GEMINI, openai_responses = RESPONSES }

describe("json spans", function()
  local spec = json.spec({ "a.b", "list[].x", "deep[][]" })

  it("keep a carried container's bytes and give them back on encode", function()
    local text = '{"a":{"b":' .. SCHEMA .. '},"list":[{"x":' .. INPUT .. ',"y":1},{"x":"s"}],"deep":[[{"k":1}],[2]]}'
    local v = assert(json.decode(text, spec))
    assert.is_true(json.is_span(v.a.b))
    assert.is_nil(next(v.a.b))
    assert.equal(SCHEMA, json.span_text(v.a.b))
    assert.is_true(json.is_span(v.list[1].x))
    assert.equal("s", v.list[2].x) -- a scalar at a carried path is decoded
    assert.is_true(json.is_span(v.deep[1][1]))
    assert.equal(text, json.encode(v))
    assert.equal(3, spans(v)) -- deep[2][1] is a number
    -- the decoded value of a span is the full decode's
    assert.equal(json.encode(json.decode(SCHEMA)), json.encode(json.materialize(v.a.b)))
    assert.equal(SCHEMA, json.encode(json.deep_copy(v.a.b)))
  end)

  it("drop the whitespace outside strings only", function()
    local v = json.decode('{"a":{"b": { "k" : [ 1 , "x  y\\" z" ] } }}', spec)
    assert.equal('{"k":[1,"x  y\\" z"]}', json.span_text(v.a.b))
  end)

  it("are checked like any value: invalid UTF-8 and depth are errors naming the field", function()
    local v, err = json.decode('{"a":{"b":{"k":"\255"}}}', spec)
    assert.is_nil(v)
    assert.equal("json: invalid bytes in UTF8 string in a.b at byte 17", err)
    v, err = json.decode('{"a":{"b":' .. ("["):rep(1200) .. ("]"):rep(1200) .. '}}', spec)
    assert.is_nil(v)
    assert.truthy(err:find("nesting too deep in a.b", 1, true))
  end)

  it("name the client's field in decode errors", function()
    local _, err = json.decode('{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a\255"}]}]}')
    assert.equal("json: invalid bytes in UTF8 string in messages[0].content[0].text at byte 76", err)
    _, err = json.decode('{"max_tokens":1e999}')
    assert.equal("json: number out of range in max_tokens at byte 19", err)
  end)

  it("raw() validates and compacts an arguments text without decoding it", function()
    local s = assert(json.raw(' { "n" : 12345678901234567891 , "x":[1.10, -0] } '))
    assert.is_true(json.is_span(s))
    assert.equal('{"n":12345678901234567891,"x":[1.10,-0]}', json.encode(s))
    assert.is_nil(json.raw("[1]", "object"))
    assert.is_nil(json.raw('{"a":'))
    assert.is_nil(json.raw('{"a":"\255"}'))
    assert.is_nil(json.raw('"str"'))
  end)

  it("spec() refuses malformed paths with the path in the message", function()
    for _, p in ipairs({ "", "a..b", "a[", "a[x]", ".a" }) do
      local ok, err = pcall(json.spec, { p })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("json.spec: path '" .. p .. "'", 1, true))
    end
    assert.has_error(function() json.spec({ "a", "a.b" }) end)
    assert.has_error(function() json.spec({ 1 }) end)
  end)
end)

describe("translated requests with spans", function()
  local formats = tr.formats

  -- every fixture through every pair: the span decode changes no byte
  local sources = {}
  for _, f in ipairs(formats) do
    sources[#sources + 1] = { f, "requests/" .. f, fixture.raw("translators/requests/" .. f .. ".json") }
    sources[#sources + 1] = { f, "tricky " .. f, BODIES[f] }
  end
  for _, f in ipairs({ "claude", "openai_chat" }) do
    sources[#sources + 1] = { f, "fidelity/" .. f, fixture.raw("translators/fidelity/" .. f .. ".json") }
  end
  for _, src in ipairs(sources) do
    local from, name, raw = src[1], src[2], src[3]
    -- (to == from: the hub's own path, taken with a thinking suffix)
    for _, to in ipairs(formats) do
      it(name .. " -> " .. to .. " gives the bytes of the full decode", function()
        local full = assert(json.encode(assert(tr.request(from, to, assert(json.decode(raw)), new_ctx()))))
        local body = assert(tr.decode_request(from, raw))
        local got = assert(json.encode(assert(tr.request(from, to, body, new_ctx()))))
        assert.equal(full, got)
      end)
    end
  end

  it("the tricky bodies carry spans (so the comparison above is about them)", function()
    for f, raw in pairs(BODIES) do
      assert.is_true(spans(tr.decode_request(f, raw)) >= 1, f)
    end
  end)

  it("keep key order and number text of schemas and arguments in every pair", function()
    local args = json.encode(INPUT)
    for from, raw in pairs(BODIES) do
      for _, to in ipairs(formats) do
        do
          local s = json.encode(tr.request(from, to, tr.decode_request(from, raw), new_ctx()))
          if to == "gemini" then
            -- cleaned for Gemini (rebuilt), order kept
            assert.truthy(s:find('"properties":{"zeta":{', 1, true), from .. " -> gemini: " .. s)
          else
            assert.truthy(s:find(TRICKY, 1, true), from .. " -> " .. to .. ": " .. s)
          end
          if to == "openai_chat" or to == "openai_responses" then
            assert.truthy(s:find('"arguments":' .. args, 1, true), from .. " -> " .. to .. ": " .. s)
          else
            local key = to == "claude" and '"input":' or '"args":'
            assert.truthy(s:find(key .. INPUT, 1, true), from .. " -> " .. to .. ": " .. s)
          end
        end
      end
    end
  end)

  it("turn Anthropic input into an arguments string and back without a decode", function()
    local body = tr.decode_request("claude", CLAUDE)
    local use = body.messages[2].content[1]
    assert.is_true(json.is_span(use.input))
    local chat = tr.request("claude", "openai_chat", body, new_ctx())
    assert.equal(INPUT, chat.messages[2].tool_calls[1]["function"].arguments)
    local back = tr.request("openai_chat", "claude", tr.decode_request("openai_chat", json.encode(chat)), new_ctx())
    local input = back.messages[2].content[1].input
    assert.is_true(json.is_span(input))
    assert.equal(INPUT, json.span_text(input))
  end)

  it("the Gemini schema cleaner still works on a carried schema", function()
    local g = tr.request("claude", "gemini", tr.decode_request("claude", CLAUDE), new_ctx())
    local decl = g.tools[1].functionDeclarations[1]
    local sc = decl.parametersJsonSchema or decl.parameters
    assert.is_false(json.is_span(sc))
    assert.equal("string", sc.properties.zeta.type)
  end)
end)

describe("translated responses keep argument bytes", function()
  it("Chat tool_calls arguments become the Anthropic input as written", function()
    local up = json.decode([[{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,]]
      .. [["message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":]]
      .. [[{"name":"f","arguments":]] .. json.encode(INPUT) .. [[}}]},"finish_reason":"tool_calls"}]}]])
    local ctx = new_ctx()
    tr.request("claude", "openai_chat", tr.decode_request("claude", CLAUDE), ctx)
    local out = json.encode(tr.response("claude", "openai_chat", up, ctx))
    assert.truthy(out:find('"input":' .. INPUT, 1, true), out)
  end)

  it("Gemini functionCall args become the Anthropic input as written", function()
    local up = json.decode([[{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"f","args":]]
      .. INPUT .. [[}}]},"finishReason":"STOP"}]}]])
    local ctx = new_ctx()
    tr.request("claude", "gemini", tr.decode_request("claude", CLAUDE), ctx)
    local out = json.encode(tr.response("claude", "gemini", up, ctx))
    assert.truthy(out:find('"input":' .. INPUT, 1, true), out)
  end)
end)
