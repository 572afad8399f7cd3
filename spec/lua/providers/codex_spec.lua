-- providers.codex: body fix-ups, cache key / Session_id, headers, errors.
local codex = require("providers.codex")
local util = require("lib.provider_util")
local fixture = require("fixture")
local json = require("lib.json")

describe("codex.fixup", function()
  for _, c in ipairs(fixture.json("providers/codex_fixup.json")) do
    it(c.name, function()
      local text = json.encode(c["in"])
      local before = json.encode(c["in"])
      local body = json.shallow_copy(json.decode(text))
      local out = codex.fixup(body, { client_format = "openai_responses", info = { headers = {} } })
      assert.are.same(c.out, json.decode(json.encode(out)))
      if c.text then assert.are.equal(c.text, json.encode(out)) end
      assert.are.equal(before, json.encode(c["in"]))
    end)
  end
end)

describe("codex.raw_fixup", function()
  local function ctx() return { client_format = "openai_responses", info = { headers = {} } } end
  -- the table path of rt.pipeline: copy, model and stream, fixup, encode
  local function table_path(text, set)
    local b = json.shallow_copy(json.decode(text))
    for k, v in pairs(set) do b[k] = v end
    return json.encode(codex.fixup(b, ctx()))
  end
  for _, c in ipairs(fixture.json("providers/codex_fixup.json")) do
    it("gives the table path's bytes: " .. c.name, function()
      local text = json.encode(c["in"])
      local set = { model = "up-model", stream = true }
      assert.are.equal(table_path(text, set), codex.raw_fixup(text, ctx(), set))
    end)
  end
  it("copies members it does not touch byte for byte, in their order", function()
    local text = [[{"zeta":{"b":1,"a":[1.10,-0,1e-7,12345678901234567891]},"model":"m","input":[{"type":"message",]]
      .. [["content":"caf\u00e9 \ud83d\ude00 \/"}],"temperature":0.5,"alpha":"x","reasoning":{"effort":"high"},]]
      .. [["tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{"z":{},"a":{}}}}]}]]
    local out = codex.raw_fixup(text, ctx(), { model = "up-model", stream = true })
    assert.are.equal(table_path(text, { model = "up-model", stream = true }), out)
    assert.truthy(out:find('{"zeta":{"b":1,"a":[1.10,-0,1e-7,12345678901234567891]},"model":"up-model",', 1, true))
    assert.truthy(out:find([["content":"caf\u00e9 \ud83d\ude00 \/"]], 1, true))
    assert.truthy(out:find('"properties":{"z":{},"a":{}}', 1, true))
    assert.is_nil(out:find('"temperature"', 1, true))
    assert.truthy(out:find('"reasoning":{"effort":"high","summary":"auto"}', 1, true))
  end)
  it("keeps unchanged top-level members as written, null included", function()
    local text = [[{"model":"m","instructions":"caf\u00e9 \/","parallel_tool_calls":null,"include":["x"],"store":true}]]
    local out = codex.raw_fixup(text, ctx(), { model = "up-model", stream = true })
    assert.are.equal(table_path(text, { model = "up-model", stream = true }), out)
    assert.truthy(out:find([["instructions":"caf\u00e9 \/"]], 1, true))
    assert.truthy(out:find([["parallel_tool_calls":null]], 1, true))
    assert.truthy(out:find([["store":false]], 1, true))
  end)
  it("leaves an escaped top-level key or a broken body to the table path", function()
    assert.is_nil(codex.raw_fixup([[{"\u006dodel":"m"}]], ctx(), {}))
    local out, err = codex.raw_fixup('{"model":"m",', ctx(), {})
    assert.is_nil(out)
    assert.truthy(err:find("malformed", 1, true))
  end)
end)

describe("json.edit", function()
  it("replaces in place, drops, and appends new keys in byte order", function()
    local out = json.edit('{"b":1,"a":2,"c":{"x":[1, 2]},"b":3}', { b = "B", z = 1, y = json.null }, { "a" })
    assert.are.equal('{"b":"B","c":{"x":[1, 2]},"y":null,"z":1}', out)
    assert.are.equal("{}", json.edit("{}", {}, {}))
    assert.are.equal('{"k":true}', json.edit(' { } ', { k = true }))
  end)
  it("refuses keys it would have to escape and non-objects", function()
    assert.has_error(function() json.edit("{}", { ['a"b'] = 1 }) end)
    assert.is_nil(json.edit("[1]", {}))
  end)
end)

describe("codex.cache_key", function()
  local info = { headers = { authorization = "Bearer sk-client-1" } }
  it("takes the Responses body's prompt_cache_key", function()
    local ctx = { client_format = "openai_responses", info = info }
    assert.are.equal("pck", codex.cache_key({ prompt_cache_key = "pck" }, ctx))
  end)
  it("derives one from a Claude client's metadata.user_id", function()
    local ctx = { client_format = "claude", info = info, body = { metadata = { user_id = "user_abc" } } }
    local k = codex.cache_key({}, ctx)
    assert.are.equal(util.uuid5(util.NS_OID, "cli-proxy-api:codex:prompt-cache:claude:user_abc"), k)
    assert.are.equal(k, codex.cache_key({}, ctx))
    -- the translated body's `user` carries it when the decoded client body is not at hand
    assert.are.equal(k, codex.cache_key({}, { client_format = "claude", info = info }, "user_abc"))
    local b = codex.fixup({ user = "user_abc" }, { client_format = "claude", info = info })
    assert.are.equal(k, b.prompt_cache_key)
    assert.is_nil(b.user)
  end)
  it("is a UUIDv5 of the client key for chat and Gemini clients", function()
    local want = util.uuid5(util.NS_OID, "cli-proxy-api:codex:prompt-cache:sk-client-1")
    assert.are.equal(want, codex.cache_key({}, { client_format = "openai_chat", info = info }))
    assert.are.equal(want, codex.cache_key({}, { client_format = "gemini",
                                               info = { headers = { ["x-goog-api-key"] = "sk-client-1" } } }))
    assert.matches("^%x+%-%x+%-5%x+%-[89ab]%x+%-%x+$", want)
  end)
  it("is absent without a key", function()
    assert.is_nil(codex.cache_key({}, { client_format = "openai_chat", info = { headers = {} } }))
  end)
end)

describe("codex.prepare", function()
  local function run(entry, headers, body, cfg)
    local ctx = { info = { headers = headers }, client_format = "openai_chat", config = cfg or {} }
    local target = { entry = entry, key = { ["api-key"] = "tok" } }
    codex.fixup(body or {}, ctx)
    return codex.prepare(ctx, target, "{}", true).headers
  end

  it("a login: Originator, Chatgpt-Account-Id, Session_id = prompt_cache_key, pass-through headers", function()
    local h = run({ oauth = true, account_id = "acc-1" },
                  { authorization = "Bearer ck", version = "0.171.0", ["x-codex-turn-metadata"] = "{}",
                    ["x-client-request-id"] = "rid", ["user-agent"] = "codex_exec/0.171.0" })
    assert.are.equal("codex-tui", h.Originator)
    assert.are.equal("acc-1", h["Chatgpt-Account-Id"])
    assert.are.equal(util.uuid5(util.NS_OID, "cli-proxy-api:codex:prompt-cache:ck"), h.Session_id)
    assert.are.equal("0.171.0", h.Version)
    assert.are.equal("{}", h["X-Codex-Turn-Metadata"])
    assert.are.equal("rid", h["X-Client-Request-Id"])
    assert.are.equal("codex_exec/0.171.0", h["User-Agent"])
    assert.are.equal("Bearer tok", h.Authorization)
  end)

  it("the client's Originator wins; the user-agent falls back to codex-header-defaults", function()
    local h = run({ oauth = true }, { originator = "codex_exec" }, {},
                  { ["codex-header-defaults"] = { ["user-agent"] = "my-ua/1" } })
    assert.are.equal("codex_exec", h.Originator)
    assert.are.equal("my-ua/1", h["User-Agent"])
    assert.is_nil(h.Session_id)
  end)

  it("an API key gets no Originator nor account header", function()
    local h = run({ ["api-key"] = "k", account_id = nil }, {})
    assert.is_nil(h.Originator)
    assert.is_nil(h["Chatgpt-Account-Id"])
    assert.matches("^codex%-tui/", h["User-Agent"])
    assert.is_string(h.Session_id) -- the default user-agent says Mac OS
  end)
end)

describe("codex errors", function()
  it("a model-capacity answer is a 429", function()
    local body = '{"error":{"message":"Selected model is at capacity. Please try a different model."}}'
    assert.are.equal(429, codex.error_status(500, {}, body))
    assert.are.equal(400, codex.error_status(400, {}, '{"error":{"message":"bad"}}'))
    local action, kind = codex.classify(500, {}, body)
    assert.are.equal("retry", action)
    assert.are.equal("quota", kind)
  end)
  it("resets_in_seconds is the cooldown hint", function()
    local body = '{"error":{"type":"usage_limit_reached","resets_in_seconds":1234}}'
    local action, kind, hint = codex.classify(429, {}, body)
    assert.are.equal("retry", action)
    assert.are.equal("quota", kind)
    assert.are.equal(1234, hint)
  end)
end)

describe("lib.provider_util ids", function()
  it("uuid5 matches RFC 9562's name-based UUIDs (Python's uuid5 of python.org in the DNS space)", function()
    assert.are.equal("886313e1-3b8a-5372-9b90-0c9aee199e5d", util.uuid5(util.NS_DNS, "python.org"))
  end)
  it("stable_uuid is stable, version 4 shaped, and hides its seed", function()
    local a = util.stable_uuid("secret-seed")
    assert.are.equal(a, util.stable_uuid("secret-seed"))
    assert.are_not.equal(a, util.stable_uuid("secret-seed2"))
    assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", a)
  end)
  it("client_key reads the client's key from any of its places", function()
    assert.are.equal("k1", util.client_key({ headers = { authorization = "Bearer k1" } }))
    assert.are.equal("k2", util.client_key({ headers = { ["x-api-key"] = "k2" } }))
    assert.are.equal("k3", util.client_key({ headers = {}, query = "alt=sse&key=k3" }))
    assert.is_nil(util.client_key({ headers = {} }))
  end)
end)
