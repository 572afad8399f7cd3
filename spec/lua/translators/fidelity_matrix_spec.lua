-- Issue 12, every pair and every direction: what a translator only carries
-- reaches the other side with its key order and number text unchanged.
--
-- One fixture per format and direction (spec/fixtures/translators/fidelity/
-- matrix/) holds the same tool call, whose arguments are ARGS below, the same
-- tool schema (properties zeta, alpha, reasoning, answer) and a text with
-- escapes and a non-BMP character. For each of the 12 translated pairs the
-- test finds the tool call in the output and compares its arguments as
-- bytes; a same-format round trip must give the fixture's own bytes.
package.path = "./lua/?/init.lua;" .. package.path
local tr = require("translators")
local json = require("lib.json")
local cpx = require("cpx")
local fixture = require("fixture")

local FORMATS = { "claude", "openai_chat", "openai_responses", "gemini" }
local ARGS = '{"zeta":"z","n":12345678901234567891,"x":1.10,"alpha":-0,"e":1e-7}'
local PROPS = { '"zeta":{', '"alpha":{', '"reasoning":{', '"answer":{' }
local TEXT_IN = 'Decide \u{e9}\u{1F600} "q".'
local TEXT_OUT = 'Done \u{e9}\u{1F600}.'

local function raw(name)
  return (fixture.raw("translators/fidelity/matrix/" .. name):gsub("\n$", ""))
end

local function new_ctx(extra)
  local n = 0
  local ctx = { model = "client-model", upstream_model = "up-model", now = 1700000000,
                id_gen = function(p) n = n + 1; return p .. "id" .. n end }
  for k, v in pairs(extra or {}) do ctx[k] = v end
  return ctx
end

-- The JSON text without the whitespace between tokens (strings untouched):
-- what a decode + encode of `s` must give back.
local function minify(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:sub(i, i)
    if c == '"' then
      local j = i + 1
      while true do
        local b = s:sub(j, j)
        if b == "\\" then j = j + 2 elseif b == '"' then break else j = j + 1 end
      end
      out[#out + 1] = s:sub(i, j)
      i = j + 1
    else
      if not c:match("%s") then out[#out + 1] = c end
      i = i + 1
    end
  end
  return table.concat(out)
end

-- The arguments of the first tool call anywhere in a decoded document, as
-- the JSON text the document carries: OpenAI's `arguments` string as is,
-- Anthropic's `input` and Gemini's `args` objects encoded (the encoder
-- writes decoded values back with their order and number text).
local function find_args(v)
  if type(v) ~= "table" then return nil end
  if v.type == "tool_use" and type(v.input) == "table" then return json.encode(v.input) end
  if type(v.functionCall) == "table" and v.functionCall.args then
    return json.encode(v.functionCall.args)
  end
  if v.type == "function_call" and type(v.arguments) == "string" then return v.arguments end
  if type(v["function"]) == "table" and type(v["function"].arguments) == "string" then
    return v["function"].arguments
  end
  for _, k in ipairs(json.keys and json.keys(v) or {}) do
    local a = find_args(v[k])
    if a then return a end
  end
  for _, x in pairs(v) do
    local a = find_args(x)
    if a then return a end
  end
  return nil
end

-- every string value in a decoded document
local function strings(v, acc)
  acc = acc or {}
  if type(v) == "string" then
    acc[#acc + 1] = v
  elseif type(v) == "table" then
    for _, x in pairs(v) do strings(x, acc) end
  end
  return acc
end

local function has_string(doc, want)
  for _, s in ipairs(strings(doc)) do
    if s:find(want, 1, true) then return true end
  end
  return false
end

local function in_order(s, needles)
  local at = 0
  for _, nd in ipairs(needles) do
    local p = s:find(nd, at + 1, true)
    assert(p, "missing " .. nd .. " after byte " .. at .. " in " .. s)
    at = p
  end
end

local function upstream_request(from, to)
  local body = assert(tr.decode_request(from, raw("request_" .. from .. ".json")))
  local out, err = tr.request(from, to, body, new_ctx())
  assert.is_nil(err)
  return assert(json.encode(out))
end

local function client_response(from, to)
  local body = assert(json.decode(raw("response_" .. to .. ".json")))
  local out, err = tr.response(from, to, body, new_ctx())
  assert.is_nil(err)
  return assert(json.encode(out))
end

-- The upstream stream fixture of format `to`, fed to a client of format
-- `from` cut at every byte (the worst split); -> the client's bytes.
local function client_stream(from, to, step)
  local bytes = fixture.raw("translators/fidelity/matrix/stream_" .. to .. ".sse")
  local s = tr.stream(from, to, new_ctx({ stream = true, chat_include_usage = true }))
  local sse = cpx.sse.new()
  local out = {}
  for i = 1, #bytes, step do
    for _, ev in ipairs(assert(sse:feed(bytes:sub(i, i + step - 1)))) do
      for _, f in ipairs(s:feed(ev)) do out[#out + 1] = f end
    end
  end
  for _, f in ipairs(s:finish()) do out[#out + 1] = f end
  return table.concat(out)
end

-- The tool-call arguments a client of format `fmt` reads from its stream:
-- the client codec's own decoder, the argument deltas joined as bytes.
local function stream_args(fmt, bytes)
  local codec = tr.codecs[fmt]
  local st, ctx = {}, new_ctx({ stream = true })
  local parts = {}
  local evs = {}
  for _, ev in ipairs(assert(cpx.sse.new():feed(bytes))) do
    for _, e in ipairs(codec.stream_decode(ev, st, ctx)) do evs[#evs + 1] = e end
  end
  for _, e in ipairs(codec.stream_flush(st, ctx)) do evs[#evs + 1] = e end
  for _, e in ipairs(evs) do
    if e.t == "delta" and e.args then parts[#parts + 1] = e.args end
  end
  return table.concat(parts)
end

describe("fidelity matrix", function()
  describe("same format: decode + encode gives the fixture's bytes", function()
    for _, f in ipairs(FORMATS) do
      for _, kind in ipairs({ "request", "response" }) do
        it(kind .. " " .. f, function()
          local s = raw(kind .. "_" .. f .. ".json")
          assert.equal(minify(s), json.encode(assert(json.decode(s))))
        end)
      end
      it("request " .. f .. " through its decoder with spans", function()
        local s = raw("request_" .. f .. ".json")
        assert.equal(minify(s), json.encode(assert(tr.decode_request(f, s))))
      end)
    end
    it("every codec fixture under translators/requests and responses", function()
      for _, dir in ipairs({ "requests", "responses" }) do
        for _, f in ipairs(FORMATS) do
          local s = fixture.raw("translators/" .. dir .. "/" .. f .. ".json")
          assert.equal(minify(s), json.encode(assert(json.decode(s))), dir .. "/" .. f)
        end
      end
    end)
  end)

  for _, from in ipairs(FORMATS) do
    for _, to in ipairs(FORMATS) do
      if from ~= to then
        describe(from .. " client, " .. to .. " upstream", function()
          it("request: schema order, argument bytes and text kept", function()
            local s = upstream_request(from, to)
            in_order(s, PROPS)
            assert.equal(ARGS, find_args(json.decode(s)))
            assert.is_true(has_string(json.decode(s), TEXT_IN), s)
            assert.equal(s, upstream_request(from, to))
          end)
          it("response: argument bytes and text kept", function()
            local s = client_response(from, to)
            assert.equal(ARGS, find_args(json.decode(s)))
            assert.is_true(has_string(json.decode(s), TEXT_OUT), s)
            assert.equal(s, client_response(from, to))
          end)
          it("stream, whole and byte by byte: argument bytes kept", function()
            local whole = client_stream(from, to, 1e9)
            assert.equal(ARGS, stream_args(from, whole))
            assert.equal(whole, client_stream(from, to, 1))
          end)
        end)
      end
    end
  end

  -- Found by spec/e2e/fidelity.test.mjs: the ids given to a Gemini history's
  -- calls were random, so the same request differed from worker to worker.
  it("a Gemini history without call ids gets the same ids every time, call paired with result", function()
    local raw_req = raw("request_gemini.json")
    for _, to in ipairs({ "claude", "openai_chat", "openai_responses" }) do
      local function once()
        local body = assert(tr.decode_request("gemini", raw_req))
        local ctx = { model = "m", upstream_model = "up" } -- no id_gen: the real generator
        return assert(json.encode(assert(tr.request("gemini", to, body, ctx))))
      end
      local a = once()
      assert.equal(a, once(), to)
      local ids = {}
      for id in a:gmatch('"([%w_]+h1)"') do ids[#ids + 1] = id end
      assert.is_true(#ids >= 2, to .. ": the call and its result share one id: " .. a)
      for _, id in ipairs(ids) do assert.equal(ids[1], id) end
    end
  end)
end)
