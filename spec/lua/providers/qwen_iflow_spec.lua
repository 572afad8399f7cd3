-- providers.qwen and providers.iflow: headers, base URLs, the iFlow
-- signature (the fixture value was computed with node's crypto:
-- createHmac("sha256", key).update("iFlow-Cli:<session>:<ms>")), the
-- Qwen limiter and the OAuth facts both logins read.
local cpx = require("cpx")
local json = require("lib.json")
local oauth = require("rt.oauth")
local ratelimit = require("rt.ratelimit")
local qwen = require("providers.qwen")
local iflow = require("providers.iflow")
local boot = require("rt.boot")

describe("providers.iflow", function()
  it("signs iFlow-Cli:<session-id>:<ms> with HMAC-SHA256 keyed by the API key", function()
    assert.equal("ddc32465ddd2bf5f6966b7a2a8ea8d65d888aeb3d05223b777f05e2e3f645bde",
                 iflow.sign("sk-iflow-test", "session-1234", 1700000000000))
  end)

  it("sends the API key with the signature headers of this request", function()
    local r = iflow.prepare({}, { entry = {}, key = { ["api-key"] = "sk-if" } }, "{}", true)
    local h = r.headers
    assert.equal("https://apis.iflow.cn/v1/chat/completions", r.url)
    assert.equal("Bearer sk-if", h.Authorization)
    assert.equal("iFlow-Cli", h["User-Agent"])
    assert.matches("^session%-%x+%-%x+%-%x+%-%x+%-%x+$", h["session-id"])
    assert.matches("^%d+$", h["x-iflow-timestamp"])
    assert.equal(iflow.sign("sk-if", h["session-id"], h["x-iflow-timestamp"]), h["x-iflow-signature"])
    assert.equal("text/event-stream", h.Accept)
    local r2 = iflow.prepare({}, { entry = {}, key = { ["api-key"] = "sk-if" } }, "{}", false)
    assert.are_not.equal(h["session-id"], r2.headers["session-id"])
  end)

  it("turns reasoning_effort into chat_template_kwargs for GLM", function()
    local b = iflow.fixup({ model = "glm-4.6", reasoning_effort = "high", stream = true })
    assert.same({ enable_thinking = true, clear_thinking = false }, b.chat_template_kwargs)
    assert.is_nil(b.reasoning_effort)
    assert.is_true(b.stream_options.include_usage)
    local off = iflow.fixup({ model = "minimax-m2", reasoning_effort = "none" })
    assert.is_false(off.chat_template_kwargs.enable_thinking)
    assert.is_false(off.reasoning_split)
    local other = iflow.fixup({ model = "deepseek-r1", reasoning_effort = "high" })
    assert.equal("high", other.reasoning_effort)
  end)

  it("has facts for its own authorize page, Basic auth and the key lookup", function()
    local f = assert(oauth.facts("iflow", { ["oauth-endpoints"] = { iflow = { ["auth-url"] = "http://m/oauth",
      ["api-key-url"] = "http://m/apikey" } } }))
    assert.equal(24 * 3600, f.lead)
    assert.equal("http://m/apikey", f.api_key_url)
    local url = oauth.authorize_url(f, { state = "st", challenge = "c",
                                         redirect_uri = "http://localhost:11451/oauth2callback" })
    assert.equal("http://m/oauth?loginMethod=phone&type=phone&redirect=http%3A%2F%2Flocalhost%3A11451%2Foauth2callback"
                 .. "&state=st&client_id=10009311001", url)
    local req = oauth.exchange_request(f, { code = "k", verifier = "v", redirect_uri = "http://cb" })
    assert.equal("grant_type=authorization_code&code=k&redirect_uri=http%3A%2F%2Fcb&client_id=10009311001"
                 .. "&client_secret=" .. f.client_secret, req.body)
    assert.equal("Basic " .. cpx.base64.encode("10009311001:" .. f.client_secret), req.headers.Authorization)
  end)

  it("writes CLIProxyAPI's fields in its order", function()
    local f = assert(oauth.facts("iflow", {}))
    local doc = oauth.credential(f, { access_token = "a", refresh_token = "r", expires_in = 60, api_key = "k",
                                      email = "e@x", token_type = "bearer", scope = "s" }, nil, 1000)
    assert.equal('{"access_token":"a","refresh_token":"r","last_refresh":"1970-01-01T00:16:40Z",'
                 .. '"expired":"1970-01-01T00:17:40Z","api_key":"k","email":"e@x","token_type":"bearer",'
                 .. '"scope":"s","cookie":"","type":"iflow"}', oauth.encode(doc))
  end)
end)

describe("providers.qwen", function()
  it("takes the base from resource_url, else the default", function()
    assert.equal("https://portal.qwen.ai/v1", qwen.base_of({}))
    assert.equal("https://dashscope.example/v1", qwen.base_of({ resource_url = "dashscope.example" }))
    assert.equal("http://127.0.0.1:9/v1", qwen.base_of({ resource_url = "http://127.0.0.1:9/" }))
    assert.equal("http://h/v1", qwen.base_of({ ["base-url"] = "http://h/v1/" }))
  end)

  it("sends QwenCode's headers", function()
    local target = { entry = { resource_url = "portal.qwen.ai" }, key = { ["api-key"] = "tok" } }
    local r = qwen.prepare({}, target, "{}", false)
    assert.equal("https://portal.qwen.ai/v1/chat/completions", r.url)
    assert.equal("Bearer tok", r.headers.Authorization)
    assert.equal("QwenCode/0.14.2 (darwin; arm64)", r.headers["User-Agent"])
    assert.equal(r.headers["User-Agent"], r.headers["X-Dashscope-Useragent"])
    assert.equal("qwen-oauth", r.headers["X-Dashscope-Authtype"])
    assert.equal("enable", r.headers["X-Dashscope-Cachecontrol"])
    assert.equal("5.11.0", r.headers["X-Stainless-Package-Version"])
  end)

  it("forces usage into streams", function()
    local b = qwen.fixup({ stream = true, stream_options = { foo = 1 } })
    assert.same({ foo = 1, include_usage = true }, b.stream_options)
    assert.is_nil(qwen.fixup({}).stream_options)
  end)

  it("refuses the 61st request of a minute with a 429 and Retry-After", function()
    local target = { account = "auth:spec-" .. cpx.uuid() }
    for i = 1, 60 do assert.is_nil(qwen.admit({}, target), "request " .. i) end
    local deny = qwen.admit({}, target)
    assert.equal(429, deny.status)
    local wait = tonumber(deny.headers["retry-after"])
    assert.is_true(wait >= 1 and wait <= 60)
    assert.equal("rate_limit_exceeded", json.decode(deny.body).error.code)
    local action = qwen.classify(deny.status, deny.headers, deny.body)
    assert.are_not.equal("fatal", action)
    -- another account has its own window
    assert.is_nil(qwen.admit({}, { account = "auth:other-" .. cpx.uuid() }))
  end)

  it("has the device flow facts, a 20 min lead, and keeps resource_url", function()
    local f = assert(oauth.facts("qwen", { ["oauth-endpoints"] = { qwen = { ["device-url"] = "http://m/device/code",
      ["device-token-url"] = "http://m/token" } } }))
    assert.equal(20 * 60, f.lead)
    assert.equal("http://m/token", f.device_token_url)
    -- Qwen polls its token endpoint: a moved token-url moves the poll too
    local g = assert(oauth.facts("qwen", { ["oauth-endpoints"] = { qwen = { ["device-url"] = "http://m/device/code",
      ["token-url"] = "http://m/tok2" } } }))
    assert.equal("http://m/tok2", g.device_token_url)
    assert.equal("http://m/device/code", g.device_url)
    local doc = oauth.credential(f, { access_token = "a", refresh_token = "r", resource_url = "portal.qwen.ai",
                                      email = "me", expires_in = 10 }, nil, 0)
    assert.equal('{"access_token":"a","refresh_token":"r","last_refresh":"1970-01-01T00:00:00Z",'
                 .. '"resource_url":"portal.qwen.ai","email":"me","type":"qwen","expired":"1970-01-01T00:00:10Z"}',
                 oauth.encode(doc))
    assert.equal("qwen-me.json", oauth.file_name(f, doc))
  end)

  it("passes the provider contract check", function()
    assert.is_true(boot.check_provider("qwen", qwen))
    assert.is_true(boot.check_provider("iflow", iflow))
  end)
end)

describe("rt.ratelimit", function()
  it("frees a slot when the oldest request leaves the window", function()
    local key = "spec-" .. cpx.uuid()
    assert.is_true(ratelimit.take(key, 2, 3600))
    assert.is_true(ratelimit.take(key, 2, 3600))
    local ok, wait = ratelimit.take(key, 2, 3600)
    assert.is_false(ok)
    assert.is_true(wait > 3590 and wait <= 3600, "wait " .. tostring(wait))
    assert.equal(2, ratelimit.count(key, 3600))
    assert.has_error(function() ratelimit.take(key, "2", 60) end)
  end)
end)
