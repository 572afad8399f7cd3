-- Providers build the upstream request as each API expects it: URL, auth
-- header, stream accept, entry headers, per-entry proxy.
local providers = {
  openai_compat = require("providers.openai_compat"),
  claude = require("providers.claude"),
  gemini = require("providers.gemini"),
  codex = require("providers.codex"),
  vertex = require("providers.vertex"),
}

local function prep(name, entry, stream, ctx)
  ctx = ctx or { info = { headers = {} }, client_format = "openai_chat" }
  return providers[name].prepare(ctx, { entry = entry, key = { ["api-key"] = entry["api-key"] or "k" },
                                        upstream_model = "up-model" }, "{}", stream)
end

describe("providers.prepare", function()
  local cases = {
    { "openai_compat",
      { ["base-url"] = "https://or.example/api/v1/", headers = { ["X-Title"] = "t" }, ["proxy-url"] = "" },
      false, "https://or.example/api/v1/chat/completions", "Authorization", "Bearer k" },
    { "claude", { ["api-key"] = "sk-ant", ["proxy-url"] = "" }, true,
      "https://api.anthropic.com/v1/messages?beta=true", "X-Api-Key", "sk-ant" },
    { "claude", { ["api-key"] = "sk-ant", ["base-url"] = "https://gw.example", ["proxy-url"] = "" }, false,
      "https://gw.example/v1/messages?beta=true", "Authorization", "Bearer sk-ant" },
    { "gemini", { ["api-key"] = "AIza", ["proxy-url"] = "" }, true,
      "https://generativelanguage.googleapis.com/v1beta/models/up-model:streamGenerateContent?alt=sse",
      "X-Goog-Api-Key", "AIza" },
    { "vertex", { ["api-key"] = "AQ.v", ["proxy-url"] = "" }, false,
      "https://aiplatform.googleapis.com/v1/publishers/google/models/up-model:generateContent",
      "X-Goog-Api-Key", "AQ.v" },
    { "vertex",
      { ["api-key"] = "AQ.v", ["base-url"] = "https://zen.example", ["proxy-url"] = "socks5://127.0.0.1:1" }, true,
      "https://zen.example/v1/publishers/google/models/up-model:streamGenerateContent?alt=sse",
      "X-Goog-Api-Key", "AQ.v" },
    { "codex", { ["api-key"] = "sk-x", ["proxy-url"] = "" }, false,
      "https://chatgpt.com/backend-api/codex/responses", "Authorization", "Bearer sk-x" },
  }
  for i, c in ipairs(cases) do
    it(c[1] .. " case " .. i, function()
      local r = prep(c[1], c[2], c[3])
      assert.are.equal("POST", r.method)
      assert.are.equal(c[4], r.url)
      assert.are.equal(c[6], r.headers[c[5]])
      assert.are.equal("{}", r.body)
      if c[2].headers then assert.are.equal("t", r.headers["X-Title"]) end
      if c[2]["proxy-url"] ~= "" then assert.are.equal(c[2]["proxy-url"], r.proxy) else assert.is_nil(r.proxy) end
    end)
  end

  it("counts against the count endpoints", function()
    local ctx = { endpoint = "count_tokens", info = { headers = {} }, client_format = "claude" }
    local url = prep("claude", { ["api-key"] = "a", ["proxy-url"] = "" }, false, ctx).url
    assert.matches("/v1/messages/count_tokens", url)
    assert.matches(":countTokens$", prep("vertex", { ["api-key"] = "a", ["proxy-url"] = "" }, false, ctx).url)
  end)
end)
