-- The C relay's records read an answer's usage in C (cpx.record_usage,
-- runtime/core/cpx_usage_scan.c) when no Lua subscriber listens: the
-- counts must be the ones rt.record's Lua readers give for the same bytes
-- (record.lane_usage), for every format, whole answers and the first and
-- last bytes of long ones, streams cut anywhere, and malformed input.
local cpx = require("cpx")
local record = require("rt.record")

local root = (os.getenv("CPX_ROOT") or ".") .. "/spec/fixtures/translators/"
local KINDS = { "input", "output", "reasoning", "cache_read", "cache_write" }

local function read(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function norm(u)
  local o = {}
  for _, k in ipairs(KINDS) do
    local v = type(u) == "table" and u[k] or nil
    o[k] = type(v) == "number" and v or 0
  end
  return o
end

-- head/tail as the relay keeps them: the first and last k bytes
local function ends(text, k)
  if #text <= 2 * k then return text:sub(1, k), text:sub(k + 1), false end
  return text:sub(1, k), text:sub(-k), true
end

local function same(fmt, head, tail, gap, stream)
  local want = norm(record.lane_usage(fmt, head, tail, gap, stream))
  local got = cpx.record_usage(fmt, head, tail, gap, stream)
  assert.same(want, got, ("%s stream=%s gap=%s head=%q tail=%q"):format(fmt, tostring(stream), tostring(gap),
    head:sub(1, 80), tail:sub(-80)))
  return got
end

local FIXTURES = {
  { "responses/claude.json", "claude", false }, { "responses/gemini.json", "gemini", false },
  { "responses/openai_chat.json", "openai_chat", false },
  { "responses/openai_responses.json", "openai_responses", false },
  { "streams/claude_text.sse", "claude", true }, { "streams/claude_tool.sse", "claude", true },
  { "streams/gemini_text.sse", "gemini", true }, { "streams/gemini_tool.sse", "gemini", true },
  { "streams/openai_chat_text.sse", "openai_chat", true }, { "streams/openai_chat_tool.sse", "openai_chat", true },
  { "streams/openai_responses_text.sse", "openai_responses", true },
  { "streams/openai_responses_tool.sse", "openai_responses", true },
}

describe("cpx.record_usage (the C records' usage)", function()
  it("reads the codec fixtures as rt.record does, whole and by their ends", function()
    local nonzero = {}
    for _, f in ipairs(FIXTURES) do
      local text, fmt, stream = read(root .. f[1]), f[2], f[3]
      for _, k in ipairs({ 4096, 301, 97, 40, 17, 1 }) do
        local head, tail, gap = ends(text, k)
        local got = same(fmt, head, tail, gap, stream)
        if k == 4096 and got.input + got.output > 0 then nonzero[f[1]] = true end
      end
      -- every cut of a whole answer into head and tail (no gap)
      for cut = 0, #text, 7 do same(fmt, text:sub(1, cut), text:sub(cut + 1), false, stream) end
    end
    -- the fixtures do carry usage: the comparison is not of zeros alone
    for _, f in ipairs(FIXTURES) do assert.is_true(nonzero[f[1]] == true, f[1] .. " has no usage") end
  end)

  it("gives the Lua readers' counts on the shapes they treat specially", function()
    local bodies = {
      { "claude", '{"usage":{"input_tokens":10,"cache_read_input_tokens":3,"cache_creation_input_tokens":2,'
        .. '"output_tokens":4}}' },
      { "claude", '{"type":"message","message":{"usage":{"input_tokens":9,"output_tokens":1}}}' },
      { "claude", '{"usage":false,"message":{"usage":{"input_tokens":9}}}' },
      { "claude", '{"usage":null,"message":{"usage":{"input_tokens":9}}}' },
      { "claude", '{"usage":[1,2]}' },
      { "claude", '{"usage":{"input_tokens":"12","output_tokens":-3.5e2}}' },
      { "openai_chat", '{"id":"x","usage":{"prompt_tokens":7,"completion_tokens":8,"prompt_tokens_details":'
        .. '{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":5}}}' },
      { "openai_chat", '{"usage":{"prompt_tokens":1},"usage":{"completion_tokens":2}}' },
      { "openai_chat", '{"choices":[{"message":{"content":"{\\"usage\\":{\\"prompt_tokens\\":4}}"}}],'
        .. '"note":{"usage":{"prompt_tokens":6,"completion_tokens":1}}}' },
      { "openai_chat", '{"choices":[], "usage" :\n {"prompt_tokens":3} ' }, -- cut: not JSON
      { "openai_chat", 'not json "usage": {"prompt_tokens":5, "x":{"y":1}}, "z":1' },
      { "openai_chat", '{"usage":{"prompt_tokens_details":[1],"prompt_tokens":2}}' },
      { "openai_chat", '[{"usage":{"prompt_tokens":2}}]' },
      { "gemini", '{"usageMetadata":{"promptTokenCount":17,"candidatesTokenCount":4,"thoughtsTokenCount":6,'
        .. '"cachedContentTokenCount":3,"totalTokenCount":30}}' },
      { "gemini", '{"response":{"usageMetadata":{"promptTokenCount":5}}}' },
      { "gemini", '{"usageMetadata":{}}' },
      { "openai_responses", '{"response":{"usage":{"input_tokens":19,"output_tokens":2,"input_tokens_details":'
        .. '{"cached_tokens":4},"output_tokens_details":{"reasoning_tokens":1}}}}' },
      { "openai_responses", '{"response":{"id":"r"},"usage":{"input_tokens":3}}' },
      { "openai_responses", '{"usage":{"input_tokens":8,"output_tokens":1}}' },
      { "openai_chat", "" },
      { "openai_chat", "{" },
    }
    local seen = 0
    for _, b in ipairs(bodies) do
      local fmt, text = b[1], b[2]
      local got = same(fmt, text, "", false, false)
      seen = seen + got.input
      for _, k in ipairs({ 5, 11, 23 }) do
        local head, tail, gap = ends(text, k)
        same(fmt, head, tail, gap, false)
      end
    end
    assert.is_true(seen > 0)
  end)

  it("reads streams cut at the seam, with CRLF, without a final blank line", function()
    local claude = 'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":12,'
      .. '"cache_read_input_tokens":3,"output_tokens":1}}}\n\nevent: content_block_del'
    local tail = 'ta: {"x":1}\n\nevent: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\n\n'
    local got = same("claude", claude, tail, true, true)
    assert.same({ 15, 42, 3 }, { got.input, got.output, got.cache_read })
    same("claude", claude, tail, false, true)
    local g = 'data: {"candidates":[],"usageMetadata":{"promptTokenCount":17,"candidatesTokenCount":4}}\r\n\r\n'
      .. 'data: {"candidates":[],"usageMetadata":{"promptTokenCount":17,"candidatesTokenCount":9,'
      .. '"thoughtsTokenCount":2}}'
    got = same("gemini", g, "", false, true)
    assert.same({ 17, 11, 2 }, { got.input, got.output, got.reasoning })
    same("openai_chat", 'data: {"usage":{"prompt_tokens":5}}\n\ndata: [DONE]\n\n', "", false, true)
    same("openai_chat", 'data: {"usage":nope}\n\ndata: {"usage":{"completion_tokens":2}}', "", false, true)
    same("openai_responses", 'event: response.completed\ndata: {"type":"response.completed","response":'
      .. '{"usage":{"input_tokens":19,"output_tokens":2}}}\n\n', "", false, true)
  end)

  it("refuses an unknown format", function()
    assert.has_error(function() cpx.record_usage("nope", "", "", false, false) end)
  end)
end)
