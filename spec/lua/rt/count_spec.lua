-- rt.count: what the local estimate counts, with which encoding, and the
-- bound on the text one request may make us tokenize.
local cpx = require("cpx")
local json = require("lib.json")
local count = require("rt.count")

local A = json.array

describe("rt.count.encoding_for", function()
  local cases = {
    { "gpt-5", "o200k_base" }, { "gpt-4o-mini", "o200k_base" }, { "gpt-4.1", "o200k_base" },
    { "o3-mini", "o200k_base" }, { "gpt-4-turbo", "cl100k_base" }, { "gpt-3.5-turbo", "cl100k_base" },
    { "claude-sonnet-4-5", "o200k_base" }, { nil, "o200k_base" },
  }
  for _, c in ipairs(cases) do
    it(tostring(c[1]) .. " -> " .. c[2], function()
      assert.are.equal(c[2], count.encoding_for(c[1]))
    end)
  end
end)

describe("rt.count.text_of", function()
  it("joins system, messages, tool calls, tool results and tool definitions", function()
    local body = {
      model = "claude-x", max_tokens = 10,
      system = A({ { type = "text", text = "SYSTEM-TEXT" } }),
      tools = A({ { name = "read_file", description = "READS", input_schema = { type = "object",
        properties = { path = { type = "string" } } } } }),
      messages = A({
        { role = "user", content = "USER-ONE" },
        { role = "assistant", content = A({ { type = "tool_use", id = "toolu_1", name = "read_file",
          input = { path = "/tmp/x" } } }) },
        { role = "user", content = A({ { type = "tool_result", tool_use_id = "toolu_1", content = "RESULT-TEXT" } }) },
      }),
    }
    local t = count.text_of("claude", body)
    for _, needle in ipairs({ "SYSTEM-TEXT", "USER-ONE", "read_file", "/tmp/x", "RESULT-TEXT", "READS", '"path"' }) do
      assert.truthy(t:find(needle, 1, true), needle .. " missing from: " .. t)
    end
  end)

  it("estimate equals the tokenizer's count of that text", function()
    local body = { model = "gpt-4o", messages = A({ { role = "user", content = "hello world, how are you today?" } }) }
    local n = assert(count.estimate("openai_chat", body, "gpt-4o"))
    assert.are.equal(cpx.tokens.count(count.text_of("openai_chat", body), "o200k_base"), n)
    assert.is_true(n > 5)
  end)
end)

describe("rt.count.count_text", function()
  local saved
  before_each(function() saved = count.MAX_BYTES end)
  after_each(function() count.MAX_BYTES = saved end)

  it("counts exactly below the bound and scales above it", function()
    local text = string.rep("lorem ipsum dolor sit amet ", 400)
    local exact = assert(count.count_text(text, "o200k_base"))
    count.MAX_BYTES = #text / 4
    local scaled = assert(count.count_text(text, "o200k_base"))
    assert.is_true(math.abs(scaled - exact) / exact < 0.05, exact .. " vs " .. scaled)
  end)

  it("counts short texts on the loop and long ones in the threadpool", function()
    local used = {}
    local real_async = cpx.tokens.count_async
    cpx.tokens.count_async = function(t, e)
      used[#used + 1] = #t
      return cpx.tokens.count(t, e)
    end
    local ok, err = pcall(function()
      local short = string.rep("a b ", count.SYNC_BYTES / 4)
      local long = short .. "c"
      assert.equal(cpx.tokens.count(short, "o200k_base"), count.count_text(short, "o200k_base"))
      assert.same({}, used)
      assert.equal(cpx.tokens.count(long, "o200k_base"), count.count_text(long, "o200k_base"))
      assert.same({ #long }, used)
    end)
    cpx.tokens.count_async = real_async
    assert(ok, err)
  end)
end)

describe("rt.count.estimate options", function()
  local body = { model = "gpt-4",
                 messages = A({ { role = "user", content = "the quick brown fox jumps over the lazy dog" } }) }
  it("uses the model's encoding on auto and a fixed one when configured", function()
    local text = count.text_of("openai_chat", body)
    assert.are.equal(cpx.tokens.count(text, "cl100k_base"),
      count.estimate("openai_chat", body, "gpt-4", { encoding = "auto" }))
    assert.are.equal(cpx.tokens.count(text, "o200k_base"),
      count.estimate("openai_chat", body, "gpt-4", { encoding = "o200k_base" }))
  end)
  it("scales by the factor", function()
    local base = count.estimate("openai_chat", body, "gpt-4", { encoding = "cl100k_base" })
    assert.are.equal(math.floor(base * 1.15 + 0.5),
      count.estimate("openai_chat", body, "gpt-4", { encoding = "cl100k_base", factor = 1.15 }))
  end)
  it("refuses when off", function()
    local n, err = count.estimate("openai_chat", body, "gpt-4", { encoding = "off" })
    assert.is_nil(n)
    assert.matches("disabled", err)
  end)
end)
