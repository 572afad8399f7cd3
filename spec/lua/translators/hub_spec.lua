-- The hub's rewrite hooks (what a rendering-only pair override uses).
local json = require("lib.json")
local tr = require("translators")

local chat_body = {
  id = "c1", object = "chat.completion", model = "up",
  choices = json.array({ { index = 0, message = { role = "assistant", content = "hello" }, finish_reason = "stop" } }),
  usage = { prompt_tokens = 1, completion_tokens = 1, total_tokens = 2 },
}

describe("translators.hub_response", function()
  it("applies the IR rewrite between decoding and encoding", function()
    local out = assert(tr.hub_response("claude", "openai_chat", chat_body, { model = "m" }, function(res)
      for _, p in ipairs(res.content) do if p.type == "text" then p.text = p.text:upper() end end
    end))
    assert.equal("HELLO", out.content[1].text)
    local plain = assert(tr.hub_response("claude", "openai_chat", chat_body, { model = "m" }))
    assert.equal("hello", plain.content[1].text)
  end)
end)

describe("translators.hub_stream", function()
  local function frames_of(rewrite)
    local s = tr.hub_stream("openai_chat", "openai_chat", { model = "m" }, rewrite)
    local out = {}
    for _, d in ipairs({ '{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"ab"}}]}',
                         '{"id":"c","choices":[{"index":0,"delta":{"content":"cd"}}]}',
                         '{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}' }) do
      for _, f in ipairs(s:feed({ data = d })) do out[#out + 1] = f end
    end
    for _, f in ipairs(s:finish()) do out[#out + 1] = f end
    local text = {}
    for _, f in ipairs(out) do
      local c = f:match("^data: ({.*})\n\n$") and json.decode(f:match("^data: ({.*})\n\n$"))
      local delta = c and c.choices and c.choices[1] and c.choices[1].delta
      if delta and type(delta.content) == "string" then text[#text + 1] = delta.content end
    end
    return table.concat(text)
  end

  it("passes events through without a rewrite", function()
    assert.equal("abcd", frames_of(nil))
  end)

  it("rewrites, expands and drops events", function()
    assert.equal("AB", frames_of(function(ev)
      if ev.t == "delta" and ev.text == "cd" then return nil end
      if ev.t == "delta" and ev.text then ev.text = ev.text:upper() end
      return ev
    end))
    assert.equal("ab!cd!", frames_of(function(ev)
      if ev.t == "delta" and ev.text then return { ev, { t = "delta", i = ev.i, text = "!" } } end
      return ev
    end))
  end)
end)
