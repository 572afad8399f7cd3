-- providers.claude: beta merge, body fix-ups, headers of logins and keys.
local claude = require("providers.claude")
local profile = require("providers.claude_profile")
local fixture = require("fixture")
local json = require("lib.json")

describe("claude.merge_betas", function()
  for _, c in ipairs(fixture.json("providers/betas.json")) do
    it(c.name, function()
      local function v(x) if x == json.null then return nil end return x end
      assert.are.equal(v(c.want), claude.merge_betas(profile, v(c.client), v(c.body), c.fp, c.oauth, c.one_m))
    end)
  end
end)

describe("claude.limit_breakpoints", function()
  local function count(body)
    local n = 0
    local function walk(t)
      if type(t) ~= "table" then return end
      for k, x in pairs(t) do
        if k == "cache_control" then n = n + 1 else walk(x) end
      end
    end
    walk(body)
    return n
  end
  for _, c in ipairs(fixture.json("providers/breakpoints.json")) do
    it(c.name, function()
      local before = json.encode(c.body)
      local body = json.shallow_copy(c.body)
      local out, dropped = claude.limit_breakpoints(body, 4)
      assert.are.same(c.dropped, dropped)
      assert.are.equal(math.min(count(c.body), 4), count(out))
      assert.are.equal(before, json.encode(c.body)) -- the caller's body is untouched
    end)
  end
end)

describe("claude.thinking_rules", function()
  local cases = {
    { "forced tool turns thinking off", { thinking = { type = "enabled", budget_tokens = 1024 },
      tool_choice = { type = "any" }, temperature = 0.2 }, nil, 0.2 },
    { "thinking forces temperature 1", { thinking = { type = "enabled", budget_tokens = 1024 }, temperature = 0.2 },
      "enabled", 1 },
    { "adaptive thinking too", { thinking = { type = "adaptive" }, temperature = 0 }, "adaptive", 1 },
    { "no thinking: temperature kept", { temperature = 0.3 }, nil, 0.3 },
    { "disabled thinking: temperature kept", { thinking = { type = "disabled" }, temperature = 0.3 }, "disabled", 0.3 },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local b = claude.thinking_rules(c[2])
      assert.are.equal(c[3], b.thinking and b.thinking.type)
      assert.are.equal(c[4], b.temperature)
    end)
  end
end)

describe("claude.prepare and fixup", function()
  local function ctx_for(entry, headers, fmt, cfg)
    return { info = { headers = headers or {} }, client_format = fmt or "openai_chat", config = cfg or {},
             target = { entry = entry, key = { ["api-key"] = entry["api-key"] or "tok" } } }
  end

  it("a login gets Bearer, the fingerprint, a stable session id and the defaults of claude-header-defaults", function()
    local entry = { oauth = true, file = "claude-a@example.com.json" }
    local cfg = { ["claude-header-defaults"] = { ["user-agent"] = "claude-cli/9.9.9 (external, cli)", os = "Linux" } }
    local ctx = ctx_for(entry, { ["user-agent"] = "OpenAI/Python 1.0", ["x-stainless-os"] = "Windows" }, nil, cfg)
    claude.fixup({ messages = { { role = "user", content = "hi" } } }, ctx)
    local r = claude.prepare(ctx, ctx.target, "{}", true)
    assert.are.equal("Bearer tok", r.headers.Authorization)
    assert.is_nil(r.headers["X-Api-Key"])
    assert.are.equal("claude-cli/9.9.9 (external, cli)", r.headers["User-Agent"])
    assert.are.equal("Linux", r.headers["X-Stainless-OS"])
    assert.are.equal(profile.headers.arch, r.headers["X-Stainless-Arch"])
    assert.are.equal("cli", r.headers["X-App"])
    assert.are.equal("identity", r.headers["Accept-Encoding"])
    assert.is_nil(r.headers["Anthropic-Dangerous-Direct-Browser-Access"])
    assert.matches("oauth%-2025%-04%-20", r.headers["Anthropic-Beta"])
    local sid = r.headers["X-Claude-Code-Session-Id"]
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", sid)
    local ctx2 = ctx_for(entry, { ["user-agent"] = "OpenAI/Python 1.0" }, nil, cfg)
    claude.fixup({ messages = { { role = "user", content = "other" } } }, ctx2)
    assert.are.equal(sid, claude.prepare(ctx2, ctx2.target, "{}", true).headers["X-Claude-Code-Session-Id"])
  end)

  it("Claude Code's own header values pass on a login, unless stabilize-device-profile", function()
    local entry = { oauth = true, file = "f.json" }
    local h = { ["user-agent"] = "claude-cli/2.1.197 (external, sdk-cli)", ["x-stainless-os"] = "Linux",
                ["x-claude-code-session-id"] = "4b2efcd1-a46a-4f03-b17f-fc5dc350427e",
                ["anthropic-beta"] = "claude-code-20250219,effort-2025-11-24" }
    local ctx = ctx_for(entry, h, "claude")
    local body = { system = "mine", messages = { { role = "user", content = "hi" } } }
    claude.fixup(body, ctx)
    assert.are.equal("mine", body.system) -- Claude Code itself is not cloaked (auto)
    local r = claude.prepare(ctx, ctx.target, "{}", false)
    assert.are.equal(h["user-agent"], r.headers["User-Agent"])
    assert.are.equal("Linux", r.headers["X-Stainless-OS"])
    assert.are.equal(h["x-claude-code-session-id"], r.headers["X-Claude-Code-Session-Id"])
    assert.are.equal("claude-code-20250219,effort-2025-11-24,oauth-2025-04-20,interleaved-thinking-2025-05-14",
                     r.headers["Anthropic-Beta"])
    local ctx2 = ctx_for(entry, h, "claude", { ["claude-header-defaults"] = { ["stabilize-device-profile"] = true } })
    local r2 = claude.prepare(ctx2, ctx2.target, "{}", false)
    assert.are.equal(profile.headers["user-agent"], r2.headers["User-Agent"])
  end)

  it("a plain API key keeps x-api-key and gets no fingerprint or cloak", function()
    local entry = { ["api-key"] = "sk-ant" }
    local ctx = ctx_for(entry, { ["user-agent"] = "curl/8" }, "claude")
    local body = { system = "s", betas = { "files-api-2025-04-14" }, messages = { { role = "user", content = "x" } } }
    claude.fixup(body, ctx)
    assert.are.equal("s", body.system)
    assert.is_nil(body.betas)
    assert.is_nil(body.metadata)
    local r = claude.prepare(ctx, ctx.target, "{}", false)
    assert.are.equal("sk-ant", r.headers["X-Api-Key"])
    assert.are.equal("files-api-2025-04-14", r.headers["Anthropic-Beta"])
    assert.is_nil(r.headers["X-Stainless-OS"])
    assert.is_nil(r.headers["X-Claude-Code-Session-Id"])
  end)

  -- As rt.pipeline calls them: fixup sees the pool's target (ctx.target),
  -- prepare a table of its own with the same entry and the attempt's key.
  local function as_pipeline(ctx, body, stream)
    local t = ctx.target
    body = claude.fixup(body, ctx)
    return body, claude.prepare(ctx, { entry = t.entry, key = { ["api-key"] = t.key["api-key"] },
                                       upstream_model = "claude-x" }, "{}", stream)
  end

  it("body betas reach Anthropic-Beta when prepare gets its own target table (the pipeline's call)", function()
    local ctx = ctx_for({ ["api-key"] = "sk-ant" }, { ["anthropic-beta"] = "b-client, files-api-2025-04-14" }, "claude")
    local body, r = as_pipeline(ctx, { betas = { "files-api-2025-04-14", "b-body" }, max_tokens = 1, messages = {} })
    assert.is_nil(body.betas)
    assert.are.equal("b-client,files-api-2025-04-14,b-body", r.headers["Anthropic-Beta"])
  end)

  it("a login's Anthropic-Beta: the client's, the profile's, the body's, then the 1M beta, each once", function()
    local h = { ["user-agent"] = "claude-cli/2.1.197 (external, sdk-cli)", ["anthropic-beta"] = "b-client",
                [profile.context_1m_header] = "1" }
    local ctx = ctx_for({ oauth = true, file = "f.json" }, h, "claude")
    local _, r = as_pipeline(ctx, { betas = { "b-body", "oauth-2025-04-20" }, max_tokens = 1, messages = {} }, true)
    local want = { "b-client" }
    for _, b in ipairs(profile.always_betas) do want[#want + 1] = b end
    want[#want + 1] = "b-body"
    want[#want + 1] = profile.context_1m_beta
    assert.are.equal(table.concat(want, ","), r.headers["Anthropic-Beta"])
  end)

  it("another account's prepare does not get this attempt's body betas", function()
    local ctx = ctx_for({ ["api-key"] = "sk-a" }, {}, "claude")
    claude.fixup({ betas = { "b-body" }, max_tokens = 1, messages = {} }, ctx)
    local r = claude.prepare(ctx, { entry = { ["api-key"] = "sk-b" }, key = { ["api-key"] = "sk-b" } }, "{}", false)
    assert.is_nil(r.headers["Anthropic-Beta"])
  end)

  it("a cloaked API key gets the fingerprint and the browser-access header", function()
    local entry = { ["api-key"] = "sk-ant", cloak = { mode = "always" } }
    local ctx = ctx_for(entry, {}, "openai_chat")
    local body = { system = "s", tools = { { name = "bash", input_schema = {} } },
                   messages = { { role = "user", content = "x" } } }
    body = claude.fixup(body, ctx)
    assert.are.equal("Bash", body.tools[1].name)
    assert.is_true(ctx.fixup_response)
    local r = claude.prepare(ctx, ctx.target, "{}", false)
    assert.are.equal("true", r.headers["Anthropic-Dangerous-Direct-Browser-Access"])
    assert.is_string(r.headers["X-Client-Request-Id"])
    local resp = claude.response_fixup({ content = { { type = "tool_use", name = "Bash" } } }, ctx)
    assert.are.equal("bash", resp.content[1].name)
  end)

  it("a body without max_tokens gets the model's output limit, else 1024", function()
    local ctx = ctx_for({ ["api-key"] = "k" }, {}, "claude")
    ctx.upstream_model = "claude-sonnet-4-5-20250929"
    assert.are.equal(64000, claude.fixup({ messages = {} }, ctx).max_tokens)
    local ctx2 = ctx_for({ ["api-key"] = "k" }, {}, "claude")
    ctx2.upstream_model = "some-claude"
    assert.are.equal(1024, claude.fixup({ messages = {} }, ctx2).max_tokens)
    assert.are.equal(5, claude.fixup({ max_tokens = 5, messages = {} }, ctx2).max_tokens)
  end)

  it("a count_tokens body is not cloaked and gets no metadata", function()
    local entry = { oauth = true, file = "f.json" }
    local ctx = ctx_for(entry, {}, "claude")
    ctx.endpoint = "count_tokens"
    local body = claude.fixup({ system = "s", messages = { { role = "user", content = "x" } } }, ctx)
    assert.are.equal("s", body.system)
    assert.is_nil(body.metadata)
  end)
end)

describe("claude.fixup fidelity", function()
  -- What the fix-ups do not change keeps its bytes: key order, number text.
  local text = fixture.raw("translators/fidelity/claude.json"):gsub("%s+$", "")
  local cases = {
    { "a plain API key", { ["api-key"] = "sk" }, {} },
    { "a login used by Claude Code", { oauth = true, file = "f.json" },
      { ["user-agent"] = "claude-cli/2.1.197 (external, sdk-cli)" } },
  }
  for _, c in ipairs(cases) do
    it(c[1] .. ": the body re-encodes byte for byte", function()
      local ctx = { info = { headers = c[3] }, client_format = "claude", config = {},
                    target = { entry = c[2], key = { ["api-key"] = "k" } } }
      local body = json.shallow_copy(json.decode(text))
      assert.are.equal(text, json.encode(claude.fixup(body, ctx)))
    end)
  end
end)

describe("claude.raw_ok", function()
  local function ctx_for(entry, ua)
    return { info = { headers = { ["user-agent"] = ua } }, client_format = "claude", config = {} },
           { entry = entry, key = { ["api-key"] = "k" } }
  end
  local cc = "claude-cli/2.1.197 (external, sdk-cli)"
  local bp = '{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}'
  local cases = {
    { "a plain body on an API key", { ["api-key"] = "k" }, "curl/8", '{"model":"m","max_tokens":9,"messages":[]}',
      true },
    { "no max_tokens", { ["api-key"] = "k" }, "curl/8", '{"model":"m","messages":[]}', false },
    { "Claude Code on a login", { oauth = true, file = "f" }, cc,
      '{"model":"m","max_tokens":9,"thinking":{"type":"adaptive"},"messages":[]}', true },
    { "another client on a login (cloaked)", { oauth = true, file = "f" }, "curl/8", '{"model":"m"}', false },
    { "body betas", { ["api-key"] = "k" }, cc, '{"model":"m","betas":["x"]}', false },
    { "thinking with temperature", { ["api-key"] = "k" }, cc,
      '{"thinking":{"type":"enabled"},"temperature":0.5}', false },
    { "thinking with tool_choice", { ["api-key"] = "k" }, cc,
      '{"thinking":{"type":"enabled"},"tool_choice":{"type":"any"}}', false },
    { "body betas that are null", { ["api-key"] = "k" }, cc, '{"model":"m","max_tokens":1,"betas":null}', false },
    { "the words only in text", { ["api-key"] = "k" }, cc,
      '{"max_tokens":1,"messages":[{"role":"user","content":"\\"betas\\" \\"thinking\\" \\"temperature\\""}]}',
      true },
    { "thinking in a block, temperature at the top", { ["api-key"] = "k" }, cc,
      '{"max_tokens":1,"temperature":0.5,"messages":[{"role":"assistant","content":[{"type":"thinking"}]}]}', true },
    { "malformed", { ["api-key"] = "k" }, cc, '{"max_tokens":1,', false },
    { "four breakpoints", { ["api-key"] = "k" }, cc, '{"max_tokens":1,"system":[' .. (bp .. ","):rep(3) .. bp .. ']}',
      true },
    { "five breakpoints", { ["api-key"] = "k" }, cc, '{"max_tokens":1,"system":[' .. (bp .. ","):rep(4) .. bp .. ']}',
      false },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local ctx, target = ctx_for(c[2], c[3])
      ctx.target = target
      assert.are.equal(c[5], claude.raw_ok(ctx, target, c[4]))
    end)
  end
end)
