-- Every upstream stream fixture, replayed whole, byte by byte and at random
-- splits, into every client format: identical bytes, a valid client-format
-- sequence, and the same content (text, thinking, tool calls) coming out.
package.path = "./lua/?/init.lua;" .. package.path
local tr = require("translators")
local json = require("lib.json")
local cpx = require("cpx")

local root = (os.getenv("CPX_ROOT") or ".") .. "/spec/fixtures/translators/streams/"

local function read(name)
  local f = assert(io.open(root .. name, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local FIXTURES = {
  { file = "claude_text.sse", fmt = "claude" },
  { file = "claude_tool.sse", fmt = "claude" },
  { file = "openai_chat_text.sse", fmt = "openai_chat" },
  { file = "openai_chat_tool.sse", fmt = "openai_chat" },
  { file = "openai_responses_text.sse", fmt = "openai_responses" },
  { file = "openai_responses_tool.sse", fmt = "openai_responses" },
  { file = "gemini_text.sse", fmt = "gemini" },
  { file = "gemini_tool.sse", fmt = "gemini" },
  { file = "gemini_array.json", fmt = "gemini", array = true },
}

local function new_ctx(client, extra)
  local n = 0
  local ctx = { model = "client-model", upstream_model = "up-model", stream = true, now = 1700000000,
                id_gen = function(p) n = n + 1; return p .. "id" .. n end,
                chat_include_usage = true }
  if client == "openai_responses" then ctx.responses_custom = { apply_patch = true } end
  for k, v in pairs(extra or {}) do ctx[k] = v end
  return ctx
end

local function framer(array)
  if array then
    local f = cpx.jsonarr.new()
    return { feed = function(_, b)
      local out = {}
      for _, e in ipairs(assert(f:feed(b))) do out[#out + 1] = { data = e } end
      return out
    end }
  end
  return cpx.sse.new()
end

-- feeds `bytes` cut at `cuts` (sorted positions) through a fresh stream
local function replay(fx, client, bytes, cuts, ctx_extra)
  local s = tr.stream(client, fx.fmt, new_ctx(client, ctx_extra))
  local fr = framer(fx.array)
  local out = {}
  local prev = 1
  local function feed(chunk)
    for _, ev in ipairs(assert(fr:feed(chunk))) do
      for _, f in ipairs(s:feed(ev)) do out[#out + 1] = f end
    end
  end
  for _, c in ipairs(cuts) do
    feed(bytes:sub(prev, c))
    prev = c + 1
  end
  feed(bytes:sub(prev))
  for _, f in ipairs(s:finish()) do out[#out + 1] = f end
  return table.concat(out), out
end

-- IR content of a stream: what the given codec decodes out of `bytes`
local function content_of(fmt, bytes, array)
  local codec = tr.codecs[fmt]
  local st, ctx = {}, new_ctx(fmt)
  local evs = {}
  for _, ev in ipairs(framer(array):feed(bytes)) do
    for _, e in ipairs(codec.stream_decode(ev, st, ctx)) do evs[#evs + 1] = e end
  end
  for _, e in ipairs(codec.stream_flush(st, ctx)) do evs[#evs + 1] = e end
  local c = { text = {}, thinking = {}, tools = {}, stop = nil }
  local tools = {}
  for _, e in ipairs(evs) do
    if e.t == "block_start" then
      if e.kind == "tool_call" then
        tools[e.i] = { name = e.name, args = {} }
        c.tools[#c.tools + 1] = tools[e.i]
      end
    elseif e.t == "delta" then
      if e.text then c.text[#c.text + 1] = e.text end
      if e.thinking then c.thinking[#c.thinking + 1] = e.thinking end
      if e.args and tools[e.i] then table.insert(tools[e.i].args, e.args) end
    elseif e.t == "finish" then
      c.stop = e.stop
      c.usage = e.usage
    end
  end
  c.text = table.concat(c.text)
  c.thinking = table.concat(c.thinking)
  for _, t in ipairs(c.tools) do
    local a = table.concat(t.args)
    t.args = a == "" and {} or json.decode(a)
  end
  return c
end

local VALIDATE = {}

function VALIDATE.claude(frames)
  local open, idx, seen_start, stopped = nil, 0, false, false
  for k, f in ipairs(frames) do
    local ev, data = f:match("^event: ([%w_]+)\ndata: (.-)\n\n$")
    assert(ev, "bad claude frame: " .. f)
    local d = json.decode(data)
    assert.equal(ev, d.type)
    if k == 1 then assert.equal("message_start", ev) end
    if ev == "message_start" then
      assert.is_false(seen_start); seen_start = true
      assert.equal("client-model", d.message.model)
    elseif ev == "content_block_start" then
      assert.is_nil(open, "two blocks open at once")
      assert.equal(idx, d.index)
      open = d.index
    elseif ev == "content_block_delta" then
      assert.equal(open, d.index)
    elseif ev == "content_block_stop" then
      assert.equal(open, d.index)
      open = nil
      idx = idx + 1
    elseif ev == "message_delta" then
      assert.is_nil(open)
      assert.truthy(d.delta.stop_reason)
    elseif ev == "message_stop" then
      assert.equal(#frames, k); stopped = true
    end
  end
  assert.is_true(stopped)
end

function VALIDATE.openai_chat(frames)
  assert.equal("data: [DONE]\n\n", frames[#frames])
  local finish, usage = 0, 0
  for k = 1, #frames - 1 do
    local data = frames[k]:match("^data: (.-)\n\n$")
    assert(data, "bad chat frame")
    local d = json.decode(data)
    assert.equal("chat.completion.chunk", d.object)
    assert.equal("client-model", d.model)
    if d.choices[1] and d.choices[1].finish_reason ~= json.null then finish = finish + 1 end
    if d.usage then usage = usage + 1; assert.equal(0, #d.choices) end
  end
  assert.equal(1, finish)
  assert.equal(1, usage)
end

function VALIDATE.openai_responses(frames)
  for k, f in ipairs(frames) do
    local ev, data = f:match("^event: ([%w_%.]+)\ndata: (.-)\n\n$")
    assert(ev, "bad responses frame")
    local d = json.decode(data)
    assert.equal(ev, d.type)
    assert.equal(k - 1, d.sequence_number)
    if k == 1 then assert.equal("response.created", ev) end
    if k == #frames then
      assert.equal("response.completed", ev)
      assert.equal("client-model", d.response.model)
      assert.truthy(d.response.usage)
      assert.truthy(#d.response.output > 0)
    end
  end
end

function VALIDATE.gemini(frames, array)
  if array then
    local all = json.decode(table.concat(frames))
    assert.truthy(json.is_array(all))
    assert.truthy(all[#all].candidates[1].finishReason)
    return
  end
  for k, f in ipairs(frames) do
    local data = f:match("^data: (.-)\r\n\r\n$")
    assert(data, "bad gemini frame")
    local d = json.decode(data)
    assert.equal("client-model", d.modelVersion)
    if k == #frames then assert.truthy(d.candidates[1].finishReason) end
  end
end

local CATEGORY = { end_turn = "end", stop_sequence = "end", tool_use = "tool", max_tokens = "max" }

describe("stream replay", function()
  for _, fx in ipairs(FIXTURES) do
    for _, client in ipairs(tr.formats) do
      local name = fx.file .. " -> " .. client
      it(name, function()
        local bytes = read(fx.file)
        local whole, frames = replay(fx, client, bytes, {})
        -- byte by byte
        local cuts = {}
        for k = 1, #bytes - 1 do cuts[k] = k end
        assert.equal(whole, (replay(fx, client, bytes, cuts)))
        -- random splits
        math.randomseed(#bytes)
        for _ = 1, 20 do
          local rc, seen = {}, {}
          for _ = 1, math.random(1, 12) do
            local c = math.random(1, #bytes - 1)
            if not seen[c] then seen[c] = true; rc[#rc + 1] = c end
          end
          table.sort(rc)
          assert.equal(whole, (replay(fx, client, bytes, rc)))
        end
        VALIDATE[client](frames, false)
        -- content survives: decode the client bytes with the client's own codec
        local want = content_of(fx.fmt, bytes, fx.array)
        local got = content_of(client, whole, false)
        assert.equal(want.text, got.text)
        assert.equal(want.thinking, got.thinking)
        assert.equal(#want.tools, #got.tools)
        for k, t in ipairs(want.tools) do
          assert.equal(t.name, got.tools[k].name)
          assert.same(t.args, got.tools[k].args)
        end
        assert.equal(CATEGORY[want.stop] or want.stop, CATEGORY[got.stop] or got.stop)
        assert.equal(want.usage and want.usage.input, got.usage and got.usage.input)
        assert.equal(want.usage and want.usage.output, got.usage and got.usage.output)
      end)
    end
  end

  it("writes Gemini JSON-array streams when the client asked without alt=sse", function()
    local fx = FIXTURES[7]
    local whole, frames = replay(fx, "gemini", read(fx.file), {}, { gemini_array = true })
    VALIDATE.gemini(frames, true)
    assert.equal("[", whole:sub(1, 1))
    assert.equal("]", whole:sub(-1))
    local got = content_of("gemini", whole, true)
    assert.equal("Hello wörld ✓", got.text)
  end)
end)

describe("stream encoders", function()
  it("Claude: interleaved IR blocks come out one at a time, none dropped", function()
    local s = tr.codecs.claude
    local st, ctx = {}, new_ctx("claude")
    local evs = {
      { t = "start", id = "x", usage = { input = 5 } },
      { t = "block_start", i = 1, kind = "tool_call", id = "a", name = "A" },
      { t = "block_start", i = 2, kind = "tool_call", id = "b", name = "B" },
      { t = "delta", i = 1, args = '{"x":' },
      { t = "delta", i = 2, args = '{"y":2}' },
      { t = "delta", i = 1, args = '1}' },
      { t = "block_stop", i = 2 },
      { t = "block_stop", i = 1 },
      { t = "finish", stop = "tool_use", usage = { output = 3 } },
    }
    local frames = {}
    for _, e in ipairs(evs) do
      for _, f in ipairs(s.stream_encode(e, st, ctx)) do frames[#frames + 1] = f end
    end
    VALIDATE.claude(frames)
    local got = content_of("claude", table.concat(frames))
    assert.equal(2, #got.tools)
    assert.same({ x = 1 }, got.tools[1].args)
    assert.same({ y = 2 }, got.tools[2].args)
  end)

  it("Claude: message_start carries input usage; message_delta the totals", function()
    local out = replay(FIXTURES[3], "claude", read(FIXTURES[3].file), {})
    assert.truthy(out:find('"stop_reason":"end_turn"', 1, true))
    local ms = json.decode(out:match("event: message_start\ndata: (.-)\n\n"))
    assert.equal("msg_", ms.message.id:sub(1, 4))
    local md = json.decode(out:match("event: message_delta\ndata: (.-)\n\n"))
    assert.equal(9, md.usage.output_tokens)
    assert.equal(12, md.usage.input_tokens)
    assert.equal(8, md.usage.cache_read_input_tokens)
  end)

  it("OpenAI chat: no usage chunk unless asked", function()
    local _, frames = replay(FIXTURES[1], "openai_chat", read(FIXTURES[1].file), {},
                             { chat_include_usage = false })
    for _, f in ipairs(frames) do assert.falsy(f:find('"usage"', 1, true)) end
    assert.equal("data: [DONE]\n\n", frames[#frames])
  end)

  it("Responses: custom tools stream back as custom_tool_call", function()
    local out = replay(FIXTURES[6], "openai_responses", read(FIXTURES[6].file), {})
    local last = json.decode(out:match("event: response.completed\ndata: (.-)\n\n"))
    local types = {}
    for _, it in ipairs(last.response.output) do types[#types + 1] = it.type end
    assert.same({ "function_call", "custom_tool_call" }, types)
    assert.equal("*** Begin Patch\n*** End Patch", last.response.output[2].input)
    assert.equal("call_01E", last.response.output[2].call_id)
  end)

  it("signatures reach a client of another format tagged, and the same format plain", function()
    local out = replay(FIXTURES[1], "openai_responses", read(FIXTURES[1].file), {})
    assert.truthy(out:find('"encrypted_content":"cpx1.claude.claude-sig-3"', 1, true))
    out = replay(FIXTURES[5], "claude", read(FIXTURES[5].file), {})
    assert.truthy(out:find('"signature":"cpx1.openai_responses.enc-3"', 1, true))
  end)
end)

describe("stream errors", function()
  local err = { status = 529, type = "overloaded_error", message = "Overloaded" }
  it("mid-stream failure ends with the client format's error event", function()
    for _, client in ipairs(tr.formats) do
      local s = tr.stream(client, "claude", new_ctx(client))
      local fr = cpx.sse.new()
      local bytes = read("claude_text.sse")
      local frames = {}
      for _, ev in ipairs(fr:feed(bytes:sub(1, 700))) do
        for _, f in ipairs(s:feed(ev)) do frames[#frames + 1] = f end
      end
      assert.truthy(#frames > 0)
      local tail = s:fail(err)
      assert.equal(1, #tail)
      local f = tail[1]
      if client == "claude" then
        local d = json.decode(f:match("^event: error\ndata: (.-)\n\n$"))
        assert.same({ type = "error", error = { type = "overloaded_error", message = "Overloaded" } }, d)
      elseif client == "openai_chat" then
        local d = json.decode(f:match("^data: (.-)\n\n$"))
        assert.equal("Overloaded", d.error.message)
        assert.equal("server_error", d.error.type)
      elseif client == "openai_responses" then
        local d = json.decode(f:match("^event: response.failed\ndata: (.-)\n\n$"))
        assert.equal("failed", d.response.status)
        assert.equal("Overloaded", d.response.error.message)
        assert.truthy(d.sequence_number > 0)
      else
        -- a plain data frame: @google/genai reads only "data:" frames
        local d = json.decode(f:match("^data: (.-)\r\n\r\n$"))
        assert.equal(529, d.error.code)
        assert.equal("UNAVAILABLE", d.error.status)
      end
      assert.same({}, s:fail(err))
      assert.same({}, s:finish())
    end
  end)

  it("an upstream error event becomes the client's error event", function()
    local s = tr.stream("openai_chat", "claude", new_ctx("openai_chat"))
    local out = s:feed({ event = "error",
      data = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}' })
    local d = json.decode(out[#out]:match("^data: (.-)\n\n$"))
    assert.equal("Overloaded", d.error.message)
  end)

  it("a truncated upstream still ends the client stream", function()
    local s = tr.stream("claude", "openai_chat", new_ctx("claude"))
    local fr = cpx.sse.new()
    local frames = {}
    for _, ev in ipairs(fr:feed(read("openai_chat_text.sse"):sub(1, 400))) do
      for _, f in ipairs(s:feed(ev)) do frames[#frames + 1] = f end
    end
    for _, f in ipairs(s:finish()) do frames[#frames + 1] = f end
    VALIDATE.claude(frames)
  end)
end)
