-- Bad client bodies name the client's own field and say what is wrong.
local translators = require("translators")

describe("decode_request errors", function()
  local cases = {
    { "openai_chat", "claude", {}, "messages: field required" },
    { "openai_chat", "claude", { messages = "hi" }, "messages: expected an array" },
    { "claude", "openai_chat", {}, "messages: field required" },
    { "claude", "openai_chat", { messages = "hi" }, "messages: expected an array" },
    { "gemini", "openai_chat", {}, "contents: field required" },
    { "gemini", "openai_chat", { contents = "hi" }, "contents: expected an array" },
  }
  for _, c in ipairs(cases) do
    it(c[1] .. " " .. c[4], function()
      local tb, err = translators.request(c[1], c[2], c[3], { upstream_model = "m" })
      assert.is_nil(tb)
      assert.equals(c[4], err)
    end)
  end
end)
