-- rt.pool / lib.cooldown / rt.payload / rt.registry against the real C pool
-- (cpx.pool from build/cpx.so) with an injected clock.
local cpx = require("cpx")
local cooldown = require("lib.cooldown")
local payload = require("rt.payload")
local registry = require("rt.registry")
local pool = require("rt.pool")
local json = cpx.json

local function cfg(over)
  local c = {
    ["openai-compatibility"] = json.array({}),
    ["request-retry"] = 0, ["max-retry-credentials"] = 0, ["max-retry-interval"] = 0,
    ["disable-cooling"] = false, ["force-model-prefix"] = false,
    routing = { strategy = "round-robin" },
  }
  for k, v in pairs(over or {}) do c[k] = v end
  return c
end

local function compat(name, keys, models, extra)
  local e = { name = name, ["base-url"] = "http://up/" .. name, ["api-key-entries"] = {}, models = {} }
  for _, k in ipairs(keys) do e["api-key-entries"][#e["api-key-entries"] + 1] = { ["api-key"] = k } end
  for _, m in ipairs(models) do
    e.models[#e.models + 1] = type(m) == "table" and m or { name = m, alias = m }
  end
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local providers = { openai_compat = require("providers.openai_compat"), claude = require("providers.claude"),
                    codex = require("providers.codex"), gemini = require("providers.gemini") }

local function app_for(c, creds)
  return { config = c, providers = providers, registry = registry.build(c, creds or {}) }
end

describe("lib.cooldown", function()
  local real_now = cooldown.now
  before_each(function() cooldown.now = function() return 1767225600 end end) -- 2026-01-01T00:00:00Z
  after_each(function() cooldown.now = real_now end)

  it("parses times and durations", function()
    assert.equal(1767225600, cooldown.parse_rfc3339("2026-01-01T00:00:00Z"))
    assert.equal(1767225600 - 3600, cooldown.parse_rfc3339("2026-01-01T00:00:00+01:00"))
    assert.equal(1445412480, cooldown.parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"))
    assert.equal(360, cooldown.parse_duration("6m0s"))
    assert.equal(3723.5, cooldown.parse_duration("1h2m3.5s"))
    assert.equal(0.02, cooldown.parse_duration("20ms"))
    assert.near(57.238747106, cooldown.parse_duration("57.238747106s"), 1e-9)
    assert.is_nil(cooldown.parse_duration("soon"))
    assert.equal("1m2s", cooldown.go_duration(62))
    assert.equal("1h0m0s", cooldown.go_duration(3600))
    assert.equal("30s", cooldown.go_duration(30))
  end)

  it("reads each upstream's reset hint", function()
    assert.equal(7, cooldown.retry_after({ ["retry-after"] = "7" }))
    assert.equal(1.5, cooldown.retry_after({ ["retry-after-ms"] = "1500", ["retry-after"] = "9" }))
    assert.equal(60, cooldown.retry_after({ ["retry-after"] = "Thu, 01 Jan 2026 00:01:00 GMT" }))
    assert.equal(30, cooldown.anthropic_reset({
      ["anthropic-ratelimit-requests-reset"] = "2026-01-01T00:00:30Z",
      ["anthropic-ratelimit-requests-remaining"] = "0",
      ["anthropic-ratelimit-tokens-reset"] = "2026-01-01T00:05:00Z",
      ["anthropic-ratelimit-tokens-remaining"] = "900" }))
    assert.equal(20, cooldown.openai_reset({ ["x-ratelimit-reset-requests"] = "20s",
      ["x-ratelimit-remaining-requests"] = "0", ["x-ratelimit-reset-tokens"] = "6m0s" }))
    local gem = [[{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
      {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"57s"}]}}]]
    assert.equal(57, cooldown.gemini_reset(gem))
    local daily = [[{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure",
      "violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
      {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"5s"}]}}]]
    assert.equal(8 * 3600, cooldown.gemini_reset(daily)) -- midnight Pacific = 08:00 UTC
    assert.equal(100, cooldown.codex_reset({}, [[{"error":{"type":"usage_limit_reached","resets_at":1767225700}}]]))
    assert.equal(42, cooldown.codex_reset({}, [[{"error":{"type":"usage_limit_reached","resets_in_seconds":42}}]]))
  end)

  it("classifies by the issue's rules", function()
    local function c(status, body, h) return { cooldown.classify(status, h or {}, body or "") } end
    assert.same({ "success", "ok" }, c(200))
    assert.same({ "retry", "quota", 3 }, c(429, "", { ["retry-after"] = "3" }))
    assert.same({ "retry", "auth" }, c(401))
    assert.same({ "retry", "auth" }, c(403))
    assert.same({ "retry", "not_found" }, c(404))
    assert.same({ "retry", "not_found" }, c(400, [[{"error":{"message":"The model x is not supported"}}]]))
    assert.same({ "fatal", "neutral" }, c(400, [[{"error":{"type":"invalid_request_error"}}]]))
    assert.same({ "fatal", "neutral" }, c(422))
    for _, s in ipairs({ 408, 500, 502, 503, 504 }) do assert.same({ "retry", "transient" }, c(s)) end
    assert.same({ "retry", "overloaded" }, c(529))
    assert.same({ "retry", "overloaded" }, c(503, [[{"error":{"code":503,"message":"The model is overloaded."}}]]))
    assert.same({ "retry", "transient" }, { cooldown.classify(nil) })
  end)
end)

describe("rt.payload", function()
  it("applies default, override, raw and filter rules by model and protocol", function()
    local conf = {
      default = { { models = { { name = "gpt-*", protocol = "openai" } },
                    params = { temperature = 0.5, ["a.b"] = 1 } } },
      ["default-raw"] = { { models = { { name = "*" } }, params = { extra = '{"x":[1,2]}' } } },
      override = { { models = { { name = "gpt-4*" } }, params = { max_tokens = 10 } },
                   { models = { { name = "gpt-*", protocol = "claude" } }, params = { never = true } } },
      filter = { { params = { "drop.me", "messages.0.name" } } },
    }
    local body = { temperature = 1, max_tokens = 99, drop = { me = 1, keep = 2 },
                   messages = json.array({ { role = "user", name = "n" } }) }
    payload.apply(conf, body, "gpt-4o(high)", "up-model", "openai_chat")
    assert.equal(1, body.temperature)          -- default: present, kept
    assert.equal(1, body.a.b)                  -- default: missing, set (objects created)
    assert.same({ 1, 2 }, body.extra.x)        -- raw JSON
    assert.equal(10, body.max_tokens)          -- override
    assert.is_nil(body.never)                  -- protocol mismatch
    assert.same({ keep = 2 }, body.drop)       -- filter
    assert.is_nil(body.messages[1].name)
    assert.truthy(payload.active(conf))
    assert.falsy(payload.active({ default = {} }))
  end)

  it("splits escaped paths", function()
    assert.same({ "a", "b.c", "0" }, payload.split("a.b\\.c.0"))
  end)
end)

describe("rt.registry", function()
  before_each(function() cpx.pool.reset() end)

  it("matches excluded-models patterns", function()
    local ex = registry.excluded
    assert.truthy(ex({ "gpt-4" }, "gpt-4"))
    assert.truthy(ex({ "gpt-*" }, "gpt-5"))
    assert.truthy(ex({ "*-mini" }, "o4-mini"))
    assert.truthy(ex({ "*preview*" }, "gemini-3-pro-preview-x"))
    assert.falsy(ex({ "gpt-*" }, "claude"))
  end)

  it("registers prefixes, aliases and credential files", function()
    local c = cfg({ ["openai-compatibility"] = { compat("or", { "k1" }, { { name = "up-1", alias = "m" } },
      { prefix = "team" }) } })
    local reg = registry.build(c, { { name = "claude-a.json", type = "claude",
      text = '{"type":"claude","access_token":"t","excluded_models":["*haiku*"],"prefix":"me"}' },
      { name = "off.json", type = "claude", text = '{"type":"claude","access_token":"t","disabled":true}' },
      { name = "g.json", type = "antigravity", text = "{}" } })
    assert.truthy(reg:lookup("m"))
    assert.truthy(reg:lookup("team/m"))
    assert.truthy(reg:lookup("m(high)"))
    local t = reg:lookup("me/claude-sonnet-4-5-20250929")
    assert.truthy(t)
    assert.equal("auth:claude-a.json", t[1].account)
    assert.is_true(t[1].entry.oauth)
    assert.is_nil(reg:lookup("claude-haiku-4-5-20251001"))
    assert.equal(1, #reg:lookup("claude-sonnet-4-5-20250929")) -- off.json skipped
    -- force-model-prefix: a prefixed credential serves only the prefixed name
    c["force-model-prefix"] = true
    reg = registry.build(c, {})
    assert.is_nil(reg:lookup("m"))
    assert.truthy(reg:lookup("team/m"))
  end)
end)

describe("rt.pool.run", function()
  local now = 5e6
  before_each(function()
    cpx.pool.reset()
    now = 5e6
    cpx.pool.fake_clock(now)
  end)
  after_each(function() cpx.pool.fake_clock(nil) end)

  local function run(app, model, answers, calls)
    return pool.run(app, {}, model, function(t)
      calls[#calls + 1] = t.key["api-key"] .. ":" .. t.upstream_model
      local a = answers[t.key["api-key"] .. ":" .. t.upstream_model] or answers[t.key["api-key"]] or { ok = true }
      return a
    end)
  end

  it("fails over on 429 and skips the cooled account until its reset", function()
    local app = app_for(cfg({ ["openai-compatibility"] = { compat("x", { "a", "b" }, { "m" }) } }))
    local calls = {}
    local first
    local out = pool.run(app, {}, "m", function(t)
      local k = t.key["api-key"]
      calls[#calls + 1] = k
      first = first or k
      if k == first then return { status = 429, headers = { ["retry-after"] = "5" }, body = "" } end
      return { ok = true }
    end)
    assert.is_true(out.ok)
    assert.equal(2, #calls)
    for _ = 1, 3 do
      calls = {}
      run(app, "m", {}, calls)
      assert.is_true(calls[1] ~= first .. ":m")
    end
    now = now + 5000
    cpx.pool.fake_clock(now)
    local seen = {}
    for _ = 1, 2 do
      calls = {}
      run(app, "m", {}, calls)
      seen[calls[1]] = true
    end
    assert.is_true(seen[first .. ":m"])
  end)

  it("answers model_cooldown when every account is cooling", function()
    local app = app_for(cfg({ ["openai-compatibility"] = { compat("x", { "a", "b" }, { "m" }) } }))
    local calls = {}
    local out = run(app, "m", { a = { status = 429, headers = {}, body = "" },
                                b = { status = 429, headers = { ["retry-after"] = "62" }, body = "" } }, calls)
    assert.equal(429, out.status)
    assert.is_nil(out.own)
    calls = {}
    out = run(app, "m", {}, calls)
    assert.equal(0, #calls)
    assert.equal(429, out.status)
    assert.equal("1", out.extra["Retry-After"]) -- a's 1 s backoff is the soonest
    local b = json.decode(out.raw_body)
    assert.equal("model_cooldown", b.error.code)
    assert.equal("All credentials for model m are cooling down via provider x", b.error.message)
    assert.equal(1, b.error.reset_seconds)
    assert.equal("1s", b.error.reset_time)
  end)

  it("returns a 400 at once and retries a 500 elsewhere", function()
    local app = app_for(cfg({ ["openai-compatibility"] = { compat("x", { "a", "b" }, { "m" }) } }))
    local calls = {}
    local out = run(app, "m", { a = { status = 400, headers = {}, body = "{}" },
                                b = { status = 400, headers = {}, body = "{}" } }, calls)
    assert.equal(400, out.status)
    assert.equal(1, #calls)
    calls = {}
    out = run(app, "m", { a = { status = 500, headers = {}, body = "" } , b = { ok = true } }, calls)
    -- whichever came first: a 500 moves on, a success stops
    assert.is_true(out.ok)
    assert.is_true(#calls >= 1 and #calls <= 2)
  end)

  it("gives an entry its own request-retry rounds", function()
    local app = app_for(cfg({ ["disable-cooling"] = true, ["max-retry-interval"] = 30, ["openai-compatibility"] = {
      compat("x", { "a" }, { "m" }, { ["request-retry"] = 2 }), compat("y", { "b" }, { "m" }) } }))
    local calls = {}
    local out = run(app, "m", { a = { status = 500, headers = {}, body = "" },
                                b = { status = 500, headers = {}, body = "" } }, calls)
    assert.equal(500, out.status)
    local per = {}
    for _, c in ipairs(calls) do per[c] = (per[c] or 0) + 1 end
    assert.equal(3, per["a:m"], "entry x: 1 + its 2 retries")
    assert.equal(1, per["b:m"], "entry y: the global 0 retries")
  end)

  it("falls over inside an alias pool and honours max-retry-credentials", function()
    local app = app_for(cfg({ ["openai-compatibility"] = {
      compat("x", { "a" }, { { name = "up-1", alias = "m" }, { name = "up-2", alias = "m" } }) } }))
    local calls = {}
    local out = run(app, "m", { ["a:up-1"] = { err = "connection refused" } }, calls)
    assert.is_true(out.ok)
    assert.same({ "a:up-1", "a:up-2" }, calls)
    cpx.pool.clear()
    local c = cfg({ ["max-retry-credentials"] = 1, ["openai-compatibility"] = {
      compat("y", { "a" }, { { name = "up-1", alias = "n" }, { name = "up-2", alias = "n" } }) } })
    app = app_for(c)
    calls = {}
    out = run(app, "n", { ["a:up-1"] = { err = "x" }, ["a:up-2"] = { err = "x" } }, calls)
    assert.equal(1, #calls)
    assert.equal("x", out.err)
  end)

  it("prefers the higher priority and keeps session affinity", function()
    local c = cfg({ routing = { strategy = "round-robin", ["session-affinity"] = true,
                                ["session-affinity-ttl"] = "1h" },
      ["openai-compatibility"] = { compat("hi", { "h1", "h2" }, { "m" }, { priority = 5 }),
                                   compat("lo", { "l1" }, { "m" }) } })
    local app = app_for(c)
    local used = {}
    for _ = 1, 4 do
      local calls = {}
      run(app, "m", {}, calls)
      used[calls[1]] = true
    end
    assert.is_nil(used["l1:m"])
    local ctx = { info = { headers = { ["x-claude-code-session-id"] = "S1" } } }
    local function once()
      local k
      pool.run(app, ctx, "m", function(t) k = t.key["api-key"]; return { ok = true } end)
      return k
    end
    local bound = once()
    for _ = 1, 4 do assert.equal(bound, once()) end
  end)

  it("does not cool an account when the client left", function()
    local app = app_for(cfg({ ["openai-compatibility"] = { compat("x", { "a" }, { "m" }) } }))
    pool.run(app, { client_gone = function() return true end }, "m", function()
      return { err = "client closed request" }
    end)
    local st = cpx.pool.state("openai-compatibility:x:" .. cpx.sha256_hex("http://up/x\0a"):sub(1, 12), "m")
    assert.equal(0, st.remaining)
  end)

  it("treats 529 as the provider's overload: no cooldown, no more tries there, no more rounds", function()
    local c = cfg({ ["request-retry"] = 3, ["openai-compatibility"] = {
      compat("busy", { "a", "b" }, { "m" }), compat("calm", { "c" }, { "m" }, { priority = -1 }) } })
    local app = app_for(c)
    local calls = {}
    local out = pool.run(app, {}, "m", function(t)
      local k = t.key["api-key"]
      calls[#calls + 1] = k
      if k == "c" then return { status = 529, headers = {}, body = '{"type":"error"}' } end
      return { status = 529, headers = {}, body = '{"type":"error","error":{"type":"overloaded_error"}}' }
    end)
    assert.equal(529, out.status)
    -- one account per provider, one round (request-retry 3 notwithstanding)
    assert.equal(2, #calls)
    assert.truthy(calls[1] == "a" or calls[1] == "b")
    assert.equal("c", calls[2])
    for _, k in ipairs({ "a", "b" }) do
      local st = cpx.pool.state("openai-compatibility:busy:" .. cpx.sha256_hex("http://up/busy\0" .. k):sub(1, 12), "m")
      assert.equal(0, st.remaining)
    end
    -- the next request is not turned away: nothing is cooling
    calls = {}
    out = run(app, "m", {}, calls)
    assert.is_true(out.ok)
  end)

  it("moves on to another provider after an overload, and says 503 overloaded is one", function()
    local app = app_for(cfg({ ["request-retry"] = 0, ["openai-compatibility"] = {
      compat("busy", { "a", "b" }, { "m" }, { priority = 1 }), compat("calm", { "c" }, { "m" }) } }))
    local calls = {}
    local out = pool.run(app, {}, "m", function(t)
      local k = t.key["api-key"]
      calls[#calls + 1] = k
      local busy = '{"error":{"message":"The model is overloaded."}}'
      if k ~= "c" then return { status = 503, headers = {}, body = busy } end
      return { ok = true }
    end)
    assert.is_true(out.ok)
    assert.equal(2, #calls)
    assert.equal("c", calls[2])
    assert.same({ "retry", "transient" }, { cooldown.classify(503, {}, '{"error":"maintenance"}') })
  end)

  it("continues from the fast path's attempt (info.lane) without picking it again", function()
    local app = app_for(cfg({ ["openai-compatibility"] = { compat("x", { "a", "b" }, { "m" }) } }))
    local targets, _, group = app.registry:lookup("m")
    local member, handle = cpx.pool.pick(group)
    local lane_key = targets[member].key["api-key"]
    local ctx = { info = { lane = { member = member, handle = handle, group = group } } }
    local calls = {}
    local out = pool.run(app, ctx, "m", function(t)
      local k = t.key["api-key"]
      if ctx.lane_attempt then
        -- what rt.pipeline does: the fast path's answer is this attempt's
        calls[#calls + 1] = "lane:" .. k
        ctx.lane_attempt = nil
        return { status = 429, headers = { ["retry-after"] = "30" }, body = "" }
      end
      calls[#calls + 1] = k
      return { ok = true }
    end)
    assert.is_true(out.ok)
    local other = lane_key == "a" and "b" or "a"
    assert.same({ "lane:" .. lane_key, other }, calls)
    assert.is_nil(ctx.info.lane)
    -- the fast path's account cools like any other 429
    assert.equal(2, #ctx.attempts)
    assert.equal(30, ctx.attempts[1].cooldown)
  end)

  it("ignores a fast-path attempt from another group and releases its pick", function()
    local app = app_for(cfg({ ["openai-compatibility"] = { compat("x", { "a" }, { "m", "n" }) } }))
    local _, _, gm = app.registry:lookup("m")
    local _, _, gn = app.registry:lookup("n")
    local member, handle = cpx.pool.pick(gn)
    local ctx = { info = { lane = { member = member, handle = handle, group = gn } } }
    local out = pool.run(app, ctx, "m", function()
      assert.is_nil(ctx.lane_attempt)
      return { ok = true }
    end)
    assert.is_true(out.ok)
    assert.truthy(gm ~= gn)
    -- the stale pick was reported: the account is not stuck half-open
    local st = cpx.pool.state("openai-compatibility:x:" .. cpx.sha256_hex("http://up/x\0a"):sub(1, 12), "n")
    assert.equal(0, st.remaining)
    assert.equal(0, st.inflight)
  end)

  it("answers unknown provider for a model nobody serves", function()
    local app = app_for(cfg())
    local out = pool.run(app, {}, "nope", function() error("not called") end)
    assert.equal(502, out.status)
    assert.equal("unknown provider for model nope", out.message)
  end)
end)
