-- rt.lane: which requests the C fast path may serve, compiled from the
-- config (the C side itself is covered by spec/e2e/fast_path.test.mjs).
local cpx = require("cpx")
local registry = require("rt.registry")
local lane = require("rt.lane")
local json = cpx.json

local providers = { openai_compat = require("providers.openai_compat"), claude = require("providers.claude"),
                    codex = require("providers.codex"), gemini = require("providers.gemini") }

local function compat(name, base, keys, models, extra)
  local e = { name = name, ["base-url"] = base, ["api-key-entries"] = {}, models = {} }
  for _, k in ipairs(keys) do e["api-key-entries"][#e["api-key-entries"] + 1] = { ["api-key"] = k } end
  for _, m in ipairs(models) do e.models[#e.models + 1] = { name = m[1], alias = m[2] } end
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function app_for(over, app_over)
  local c = { ["openai-compatibility"] = json.array({}), ["request-retry"] = 0, routing = {},
              ["api-keys"] = json.array({}) }
  for k, v in pairs(over or {}) do c[k] = v end
  local app = { config = c, providers = providers, registry = registry.build(c, {}),
                middleware = { hooks = {}, list = {} } }
  for k, v in pairs(app_over or {}) do app[k] = v end
  return app
end

-- The models of the table's route for format fmt (default Chat), by name.
local function by_name(t, fmt)
  local out = {}
  for _, rt in ipairs(t.routes) do
    if rt.format == (fmt or "openai_chat") then
      for _, m in ipairs(rt.models) do out[m.name] = m end
    end
  end
  return out
end

local function route_of(t, fmt)
  for _, rt in ipairs(t.routes) do
    if rt.format == fmt then return rt end
  end
end

describe("rt.lane.parse_url", function()
  local cases = {
    { "http://127.0.0.1:9000/v1/chat/completions", "127.0.0.1", 9000, "/v1/chat/completions", false },
    { "http://localhost/v1/chat/completions", "localhost", 80, "/v1/chat/completions", false },
    { "http://[::1]:8080/x", "::1", 8080, "/x", false },
    { "http://my-host.internal:1/a/b", "my-host.internal", 1, "/a/b", false },
    { "https://api.openai.com/v1/chat/completions", "api.openai.com", 443, "/v1/chat/completions", true },
    { "https://[::1]:8443/v1", "::1", 8443, "/v1", true },
    { "https://localhost:80/v1", "localhost", 80, "/v1", true },
    { "ftp://host/v1" },
    { "https://user:pw@host/v1" },
    { "http://user:pw@host/v1" },
    { "http://host:99999/v1" },
    { "http://host/v1?x=1", "host", 80, "/v1?x=1", false },
    { "http://host/v1?x=1/chat/completions" },
    { "http://host/v1 x" },
    { "http://host" },
    { 42 },
  }
  for _, c in ipairs(cases) do
    it(tostring(c[1]), function()
      local host, port, path, tls = lane.parse_url(c[1])
      assert.equal(c[2], host)
      assert.equal(c[3], port)
      assert.equal(c[4], path)
      assert.equal(c[5], tls)
    end)
  end
end)

describe("rt.lane.build", function()
  it("compiles every plain-http OpenAI-compatible account with its own head", function()
    local app = app_for({
      ["api-keys"] = json.array({ "client-1", "client-2" }),
      ["openai-compatibility"] = { compat("local", "http://127.0.0.1:9000/v1", { "k1", "k2" },
        { { "up-model", "m" } }, { headers = { ["X-Entry"] = "local" } }) },
    })
    local t = assert(lane.build(app))
    assert.equal("/v1/chat/completions", route_of(t, "openai_chat").path)
    assert.same({ "client-1", "client-2" }, t.keys)
    local m = by_name(t).m
    assert.equal(app.registry.groups.m, m.group)
    assert.equal(2, #m.targets)
    for i, key in ipairs({ "k1", "k2" }) do
      -- in pool member order
      assert.equal(key, app.registry.models.m[i].key["api-key"])
      local tg = m.targets[i]
      assert.equal("127.0.0.1", tg.host)
      assert.equal(9000, tg.port)
      assert.equal('"up-model"', tg.model)
      assert.truthy(tg.head:find("^POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"))
      assert.truthy(tg.head:find("\r\nAuthorization: Bearer " .. key .. "\r\n", 1, true))
      assert.truthy(tg.head:find("\r\nAccept: application/json\r\n", 1, true))
      assert.truthy(tg.head:find("\r\nX-Entry: local\r\n", 1, true))
      assert.truthy(tg.head_stream:find("\r\nAccept: text/event-stream\r\n", 1, true))
      assert.truthy(tg.head:sub(-2) == "\r\n" and tg.head:sub(-4) ~= "\r\n\r\n")
      assert.falsy(tg.head:lower():find("content-length", 1, true))
    end
  end)

  it("compiles https accounts with the tls flag and a Host without the default port", function()
    local app = app_for({
      ["openai-compatibility"] = {
        compat("tls", "https://api.example.com/v1", { "k" }, { { "c", "tls" }, { "d", "mixed" } }),
        compat("tls8443", "https://127.0.0.1:8443/v1", { "k" }, { { "e", "odd" } }),
        compat("plain", "http://127.0.0.1:9000/v1", { "k" }, { { "a", "mixed" } }),
      },
    })
    local names = by_name(assert(lane.build(app)))
    local t = names.tls.targets[1]
    assert.equal("api.example.com", t.host)
    assert.equal(443, t.port)
    assert.is_true(t.tls)
    assert.truthy(t.head:find("^POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\n"))
    t = names.odd.targets[1]
    assert.is_true(t.tls)
    assert.truthy(t.head:find("^POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n"))
    -- a model over http and https accounts: each member keeps its own flag
    local flags = {}
    for _, tg in ipairs(names.mixed.targets) do flags[tg.port] = tg.tls end
    assert.same({ [443] = true, [9000] = false }, flags)
  end)

  it("leaves out models with an account it cannot serve", function()
    local app = app_for({
      ["openai-compatibility"] = {
        compat("plain", "http://127.0.0.1:9000/v1", { "k" }, { { "a", "plain" }, { "b", "mixed" } }),
        compat("ws", "https://api.example.com/v1?x=1", { "k" }, { { "c", "query" }, { "d", "mixed" } }),
        compat("proxied", "http://127.0.0.1:9001/v1", { "k" }, { { "e", "proxied" } },
               { ["proxy-url"] = "socks5://127.0.0.1:1080" }),
        compat("badhdr", "http://127.0.0.1:9002/v1", { "k" }, { { "f", "badhdr" } },
               { headers = { ["X-Evil"] = "a\r\nInjected: 1" } }),
      },
      ["claude-api-key"] = { { ["api-key"] = "sk-ant", models = { { name = "claude-x", alias = "plain2" } } } },
    })
    local names = by_name(assert(lane.build(app)))
    assert.truthy(names.plain)
    assert.is_nil(names.mixed)   -- one of its accounts has a URL the lane cannot send
    assert.is_nil(names.query)
    assert.is_nil(names.proxied)
    assert.is_nil(names.badhdr)  -- a header that would split the request
    assert.is_nil(names.plain2)  -- a Claude account
  end)

  it("stays off for the whole generation when something must see the request", function()
    local base = { ["openai-compatibility"] = { compat("p", "http://127.0.0.1:9/v1", { "k" }, { { "a", "a" } }) } }
    local function with(over, app_over)
      local c = {}
      for k, v in pairs(base) do c[k] = v end
      for k, v in pairs(over or {}) do c[k] = v end
      return app_for(c, app_over)
    end
    assert.truthy(lane.build(with()))
    local cases = {
      { with({ ["fast-path"] = false }), "fast%-path is off" },
      { with(nil, { middleware = { hooks = { rewrite = { function() end } }, list = {} } }), "middleware" },
      { with({ routing = { ["session-affinity"] = true } }), "session affinity" },
      { with({ streaming = { ["keepalive-seconds"] = 15 } }), "keepalive" },
      { with({ ["proxy-url"] = "http://proxy:3128" }), "proxy%-url" },
      { with({ ["openai-compatibility"] = { compat("t", "https://x/v1?q", { "k" }, { { "a", "a" } }) } }),
        "no model" },
    }
    for _, c in ipairs(cases) do
      local t, why = lane.build(c[1])
      assert.is_nil(t)
      assert.truthy(why:find(c[2]), why)
    end
  end)

  it("leaves out exactly the models a payload rule applies to", function()
    local app = app_for({
      ["openai-compatibility"] = { compat("p", "http://127.0.0.1:9/v1", { "k" },
        { { "gpt-4o", "gpt-4o" }, { "up-x", "plain" }, { "up-y", "by-upstream" } }) },
      payload = {
        default = { { models = { { name = "gpt-*" } }, params = { temperature = 0.2 } } },
        filter = { { models = { { name = "up-y", protocol = "openai" } }, params = { "user" } } },
        override = { { models = { { name = "*", protocol = "claude" } }, params = { x = 1 } } },
      },
    }, { payload_active = true })
    local names = by_name(assert(lane.build(app)))
    assert.is_nil(names["gpt-4o"])      -- by the client's name
    assert.is_nil(names["by-upstream"]) -- by the upstream's name and protocol
    assert.truthy(names.plain)          -- the claude-only rule is not for it
  end)

  it("needs the provider's opt-in", function()
    local entry = compat("p", "http://127.0.0.1:9/v1", { "k" }, { { "a", "a" } })
    local app = app_for({ ["openai-compatibility"] = { entry } })
    -- a user's copy of the module without the field
    local own = {}
    for k, v in pairs(providers.openai_compat) do own[k] = v end
    own.fast_path = nil
    own.relay = nil
    app.providers = setmetatable({ openai_compat = own }, { __index = providers })
    local t, why = lane.build(app)
    assert.is_nil(t)
    assert.truthy(why:find("no model"))
  end)

  it("compiles a Claude API key for /v1/messages with its rules and header slots", function()
    local app = app_for({
      ["claude-api-key"] = {
        { ["api-key"] = "sk-plain", ["base-url"] = "http://127.0.0.1:9100",
          models = { { name = "claude-up", alias = "cl" } } },
        { ["api-key"] = "sk-cloak", ["base-url"] = "http://127.0.0.1:9101", cloak = { mode = "auto" },
          models = { { name = "claude-up", alias = "cloaked" } } },
      },
    })
    local t = assert(lane.build(app))
    local rt = route_of(t, "claude")
    assert.equal("/v1/messages", rt.path)
    assert.is_false(rt.model_in_path)
    local names = by_name(t, "claude")
    assert.is_nil(names.cloaked) -- cloaking may change its body
    local m = assert(names.cl)
    -- the members named by index into the route's list
    local function named(list)
      local o = {}
      for i, k in ipairs(list) do o[i] = rt.members[k] end
      return o
    end
    assert.same({ "max_tokens" }, named(m.require))
    assert.same({ { "betas" }, { "thinking", "temperature" }, { "thinking", "tool_choice" } },
                { named(m.unless[1]), named(m.unless[2]), named(m.unless[3]) })
    assert.same({ { text = '_control"', max = 4 } }, m.at_most)
    assert.same({ "x-cpa-claude-1m" }, m.lua_headers)
    assert.same({ { client = "anthropic-version", prefix = "Anthropic-Version: ", list = false },
                  { client = "anthropic-beta", prefix = "Anthropic-Beta: ", list = true } }, m.slots)
    local tg = m.targets[1]
    assert.truthy(tg.head:find("^POST /v1/messages%?beta=true HTTP/1.1\r\nHost: 127.0.0.1:9100\r\n"))
    assert.truthy(tg.head:find("\r\nAuthorization: Bearer sk-plain\r\n", 1, true))
    -- the slot headers are not in the fixed head; the account's own line is
    -- used when the client sent none
    assert.falsy(tg.head:lower():find("anthropic-version", 1, true))
    assert.same({ "Anthropic-Version: 2023-06-01\r\n", "" }, tg.slot_lines)
    assert.equal('"claude-up"', tg.model)
  end)

  it("compiles a Gemini key with the model in the path", function()
    local app = app_for({
      ["gemini-api-key"] = { { ["api-key"] = "g-key", ["base-url"] = "http://127.0.0.1:9200",
                               models = { { name = "gem-up", alias = "gem" } } } },
      ["codex-api-key"] = { { ["api-key"] = "c-key", ["base-url"] = "http://127.0.0.1:9300/v1",
                              models = { { name = "codex-up", alias = "cx" } } } },
    })
    local t = assert(lane.build(app))
    local rt = route_of(t, "gemini")
    assert.equal("/v1beta/models/", rt.path)
    assert.is_true(rt.model_in_path)
    local tg = by_name(t, "gemini").gem.targets[1]
    assert.truthy(tg.head:find("^POST /v1beta/models/gem%-up:generateContent HTTP/1.1\r\n"))
    assert.truthy(tg.head_stream:find("^POST /v1beta/models/gem%-up:streamGenerateContent%?alt=sse HTTP/1.1\r\n"))
    assert.truthy(tg.head:find("\r\nX-Goog-Api-Key: g-key\r\n", 1, true))
    assert.is_nil(tg.model)
    -- Codex rewrites every body (fixup, force_stream): no Responses route
    assert.is_nil(route_of(t, "openai_responses"))
  end)

  it("keeps an account whose prepare does not carry a declared header as it is", function()
    local own = {}
    for k, v in pairs(providers.openai_compat) do own[k] = v end
    own.relay = { headers = { { "x-team", "X-Team" } } } -- prepare never reads it
    local app = app_for({ ["openai-compatibility"] = {
      compat("p", "http://127.0.0.1:9/v1", { "k" }, { { "a", "a" } }) } })
    app.providers = setmetatable({ openai_compat = own }, { __index = providers })
    local t, why = lane.build(app)
    assert.is_nil(t)
    assert.truthy(why:find("no model"))
  end)
end)

describe("rt.lane list headers", function()
  -- A copy of the Claude provider whose prepare does something else with
  -- the client's Anthropic-Beta list.
  local function claude_with(edit)
    local own = {}
    for k, v in pairs(providers.claude) do own[k] = v end
    own.prepare = function(ctx, target, body, stream)
      local u = providers.claude.prepare(ctx, target, body, stream)
      if u.headers["Anthropic-Beta"] then u.headers["Anthropic-Beta"] = edit(u.headers["Anthropic-Beta"]) end
      return u
    end
    return own
  end
  local function build_with(p)
    local app = app_for({ ["claude-api-key"] = { { ["api-key"] = "sk-plain", ["base-url"] = "http://127.0.0.1:9100",
                                                   models = { { name = "claude-up", alias = "cl" } } } } })
    app.providers = setmetatable({ claude = p }, { __index = providers })
    local t = lane.build(app)
    return t and by_name(t, "claude").cl
  end

  it("relays Claude's API key: prepare sends a plain list as the client wrote it", function()
    assert.truthy(build_with(providers.claude))
    local ctx = { client_format = "claude", config = {},
                  info = { headers = { ["anthropic-beta"] = "b-one,b-two,b-three" } } }
    local u = providers.claude.prepare(ctx, { entry = { ["api-key"] = "k" }, key = { ["api-key"] = "k" } }, "{}", false)
    assert.equal("b-one,b-two,b-three", u.headers["Anthropic-Beta"])
  end)

  it("keeps an account in Lua whose prepare reorders a list or adds to it", function()
    local reversed = claude_with(function(v)
      local items = {}
      for b in v:gmatch("[^,]+") do table.insert(items, 1, b) end
      return table.concat(items, ",")
    end)
    assert.is_nil(build_with(reversed))
    assert.is_nil(build_with(claude_with(function(v) return v .. ",oauth-2025-04-20" end)))
  end)
end)

describe("rt.lane.body_ok", function()
  local claude = providers.claude
  local cases = {
    { '{"model":"m","max_tokens":9,"messages":[]}', true },
    { '{"model":"m","messages":[]}', false },
    { '{"model":"m","max_tokens":9,"betas":null}', false },
    { '{"max_tokens":9,"thinking":{},"temperature":1}', false },
    { '{"max_tokens":9,"thinking":{}}', true },
    { '{"max_tokens":9,"temperature":0.5,"tool_choice":{}}', true },
    { '{"max_tokens":9,', false },
    { '{"max_tokens":9,"s":"' .. ('_control"'):rep(4):gsub('"', '\\"') .. '"}', true },
  }
  for i, c in ipairs(cases) do
    it("case " .. i, function()
      assert.equal(c[2], lane.body_ok(claude.relay, c[1]))
    end)
  end
end)