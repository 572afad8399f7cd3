-- rt.access: which key a request presents; the header rule is
-- cpx.client_key (runtime/core/cpx_access.c), the C relay's as well.
local access = require("rt.access")
local cpx = require("cpx")

describe("cpx.client_key / rt.access.presented", function()
  local cases = {
    { "a Bearer token", { authorization = "Bearer sk-1" }, "sk-1", "authorization" },
    { "lower-case bearer, a tab and spaces", { authorization = "bearer \t  sk-2" }, "sk-2", "authorization" },
    { "trailing text is the key's", { authorization = "Bearer sk 3 " }, "sk 3 ", "authorization" },
    { "Bearer and nothing: the next header", { authorization = "Bearer   ", ["x-api-key"] = "xk" }, "xk", "x-api-key" },
    { "not a Bearer", { authorization = "Basic Zm9v", ["x-goog-api-key"] = "gk" }, "gk", "x-goog-api-key" },
    { "Bearer glued to the key", { authorization = "Bearersk" }, nil, nil },
    { "x-goog-api-key before x-api-key", { ["x-goog-api-key"] = "gk", ["x-api-key"] = "xk" }, "gk", "x-goog-api-key" },
    { "an empty x-api-key is presented (and fails the compare)", { ["x-api-key"] = "" }, "", "x-api-key" },
    { "nothing", {}, nil, nil },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local h = c[2]
      local k, where = cpx.client_key(h.authorization, h["x-goog-api-key"], h["x-api-key"])
      assert.equal(c[3], k)
      assert.equal(c[4], where)
      local pk, pw = access.presented({ headers = h })
      assert.equal(c[3], pk)
      assert.equal(c[4], pw)
    end)
  end

  it("falls back to ?key= and ?auth_token=", function()
    assert.same({ "q k", "query-key" }, { access.presented({ headers = {}, query = "a=1&key=q+k" }) })
    assert.same({ "t", "query-auth-token" }, { access.presented({ headers = {}, query = "auth_token=t" }) })
  end)
end)

describe("cpx.json.first_event", function()
  local fe = cpx.json.first_event
  local cases = {
    { "claude", "message_start", '{"type":"message_start"}', "handshake" },
    { "claude", "ping", '{"type":"ping"}', "handshake" },
    { "claude", "error", '{"type":"error","error":{"type":"overloaded_error"}}', "error" },
    { "claude", "", '{"type":"error","error":{}}', "error" },
    { "claude", "content_block_delta", '{"type":"content_block_delta","error":1}', false },
    { "claude", "error", "not json", false },
    { "openai_responses", "response.created", '{"type":"response.created"}', "handshake" },
    { "openai_responses", "response.failed", '{"type":"response.failed"}', "error" },
    { "openai_responses", "", '{"type":"response.failed","response":{}}', "error" },
    { "openai_responses", "error", '{"type":"error","code":"x"}', "error" },
    { "openai_responses", "response.output_text.delta", '{"delta":"x"}', false },
    { "openai_chat", "", '{"error":{"message":"x"}}', "error" },
    { "openai_chat", "", '{"choices":[{"delta":{"content":"error"}}]}', false },
    { "openai_chat", "", "[DONE]", false },
    { "gemini", "", '{"error":{"code":429}}', "error" },
    { "gemini", "", '{"candidates":[]}', false },
  }
  for _, c in ipairs(cases) do
    it(c[1] .. " " .. c[2] .. " " .. c[3], function()
      assert.equal(c[4], fe(c[1], c[2], c[3]))
    end)
  end
end)
