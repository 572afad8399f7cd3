-- providers.claude_cloak: table-driven over spec/fixtures/providers/.
local cloak = require("providers.claude_cloak")
local profile = require("providers.claude_profile")
local fixture = require("fixture")
local json = require("lib.json")
local cpx = require("cpx")

local function first_user(body)
  for _, m in ipairs(body.messages) do
    if m.role == "user" then return m end
  end
end

describe("claude_cloak.apply", function()
  for _, c in ipairs(fixture.json("providers/cloak_cases.json")) do
    it(c.name, function()
      local original = json.encode(c.body)
      local body = json.shallow_copy(c.body)
      local opts = { user_agent = c.opts.user_agent, strict = c.opts.strict == true, account_seed = "acct-1",
                     session_seed = "client-key" }
      local out, rev, session = cloak.apply(body, profile, opts)
      -- the caller's body is not edited below its top level
      assert.are.equal(original, json.encode(c.body))
      -- Claude Code's system blocks, the last one a cache breakpoint
      assert.are.equal(#profile.system, #out.system)
      assert.matches("^x%-anthropic%-billing%-header: cc_version=", out.system[1].text)
      assert.are.equal(profile.system[2], out.system[2].text)
      assert.are.same({ type = "ephemeral" }, out.system[#out.system].cache_control)
      -- tools, tool_choice and history renamed, the reverse exact
      local names = {}
      for i, t in ipairs(out.tools or {}) do names[i] = t.name end
      assert.are.same(c.tools, names)
      if c.tool_choice ~= json.null then assert.are.equal(c.tool_choice, out.tool_choice.name) end
      local hist = {}
      for _, m in ipairs(out.messages) do
        if m.role == "assistant" and type(m.content) == "table" then
          for _, p in ipairs(m.content) do if p.type == "tool_use" then hist[#hist + 1] = p.name end end
        end
      end
      assert.are.same(c.history, hist)
      assert.are.same(c.reverse, rev)
      -- the user's system text in the first user message (or dropped)
      local fu = first_user(out)
      local texts = {}
      if type(fu.content) == "table" then
        for i, p in ipairs(fu.content) do texts[i] = p.text end
      end
      if c.reminder ~= json.null then
        assert.are.equal(c.reminder, table.remove(texts, 1))
      end
      assert.are.same(c.first_user, type(fu.content) == "string" and { fu.content } or texts)
      -- metadata.user_id in Claude Code's JSON form, its session the one returned
      local uid = json.decode(out.metadata.user_id)
      assert.are.equal(session, uid.session_id)
      assert.matches("^%x+$", uid.device_id)
      assert.are.equal(64, #uid.device_id)
    end)
  end

  it("gives the same user id for the same account and session, another for another session", function()
    local a = cloak.user_id(profile, "acct", "s1")
    assert.are.equal(a, cloak.user_id(profile, "acct", "s1"))
    assert.are_not.equal(a, cloak.user_id(profile, "acct", "s2"))
    assert.are_not.equal(a, cloak.user_id(profile, "acct2", "s1"))
    assert.is_nil(a:find("acct", 1, true))
  end)

  it("writes the legacy user id format when the profile asks for it", function()
    local p = setmetatable({ user_id_format = "legacy" }, { __index = profile })
    local uid, session = cloak.user_id(p, "acct", "s1", "0d3e4f5a-0000-4000-8000-000000000001")
    assert.matches("^user_%x+_account_0d3e4f5a%-0000%-4000%-8000%-000000000001_session_", uid)
    assert.are.equal(session, uid:match("_session_(.*)$"))
  end)

  it("does not cloak a system that is already Claude Code's", function()
    local body = { system = { { type = "text", text = "x-anthropic-billing-header: cc_version=1" } },
                   messages = { { role = "user", content = "hi" } } }
    cloak.relocate_system(body, profile, {})
    assert.are.equal("x-anthropic-billing-header: cc_version=1", body.system[1].text)
    assert.are.equal("hi", body.messages[1].content)
  end)
end)

describe("claude_cloak mode", function()
  local cases = {
    -- entry, client headers, cloaked?
    { "login, other client", { oauth = true }, { ["user-agent"] = "Anthropic/JS 0.50" }, true },
    { "login, Claude Code", { oauth = true }, { ["user-agent"] = "claude-cli/2.1.197 (external, sdk-cli)" }, false },
    { "login, Claude Code by its session header", { oauth = true }, { ["x-claude-code-session-id"] = "s" }, false },
    { "login, always", { oauth = true, cloak = { mode = "always" } }, { ["user-agent"] = "claude-cli/2.1" }, true },
    { "login, never", { oauth = true, cloak = { mode = "never" } }, { ["user-agent"] = "curl/8" }, false },
    { "API key without a cloak block", {}, { ["user-agent"] = "curl/8" }, false },
    { "API key with a cloak block, mode unset: auto", { cloak = { ["strict-mode"] = true } },
      { ["user-agent"] = "curl/8" }, true },
    { "API key, auto, Claude Code", { cloak = { mode = "auto" } }, { ["user-agent"] = "claude-cli/2.1.63" }, false },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local s = cloak.settings(c[2])
      assert.are.equal(c[4], cloak.applies(s.mode, c[3], profile))
    end)
  end

  it("disable-claude-cloak-mode wins", function()
    assert.are.equal("never", cloak.settings({ oauth = true, cloak = { mode = "always" } }, true).mode)
  end)
end)

describe("claude_cloak reverse", function()
  local rev = { Bash = "bash" }

  it("renames tool_use blocks of a non-stream answer back", function()
    local body = { content = { { type = "text", text = "x" },
                               { type = "tool_use", id = "1", name = "Bash", input = {} },
                               { type = "tool_use", id = "2", name = "Other", input = {} } } }
    cloak.reverse_response(body, rev)
    assert.are.equal("bash", body.content[2].name)
    assert.are.equal("Other", body.content[3].name)
  end)

  it("renames tool_use content_block_start events of a stream, and only those", function()
    local frames = cpx.sse.new():feed(fixture.raw("providers/cloak_tool.sse"))
    local names, changed = {}, 0
    for _, ev in ipairs(frames) do
      local out = cloak.reverse_event(ev, rev)
      if out ~= ev then changed = changed + 1 end
      if out.event == "content_block_start" then names[#names + 1] = json.decode(out.data).content_block.name end
      if out.event ~= "content_block_start" then assert.are.equal(ev.data, out.data) end
    end
    assert.are.same({ "bash", "MyTool" }, names)
    assert.are.equal(1, changed)
  end)
end)

describe("claude_cloak.obfuscate", function()
  it("puts a zero-width space into each sensitive word of the user's text", function()
    local body = { messages = { { role = "user", content = "use Proxy and proxy" },
                                { role = "assistant", content = "Proxy" },
                                { role = "user", content = { { type = "text", text = "Proxy!" } } } } }
    local orig = body.messages
    cloak.obfuscate(body, { "Proxy" })
    assert.are.equal("use P\226\128\139roxy and proxy", body.messages[1].content)
    assert.are.equal("Proxy", body.messages[2].content)
    assert.are.equal("P\226\128\139roxy!", body.messages[3].content[1].text)
    assert.are.equal("use Proxy and proxy", orig[1].content)
  end)
end)
