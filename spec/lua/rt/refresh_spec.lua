-- rt.refresh: the parts that need no event loop (backoff, the state table
-- built from a credential store, the out-of-the-pool test). The refresh
-- itself (locks, the token server, rotation, concurrency, processes) is
-- covered end to end by spec/e2e/refresh.test.mjs.
local cpx = require("cpx")
local refresh = require("rt.refresh")
local oauth = require("rt.oauth")

describe("rt.refresh.backoff", function()
  it("starts at backoff-seconds, doubles, and stops at the cap", function()
    local cfg = {}
    assert.equal(300, refresh.backoff(cfg, 1))
    assert.equal(600, refresh.backoff(cfg, 2))
    assert.equal(1200, refresh.backoff(cfg, 3))
    assert.equal(3600, refresh.backoff(cfg, 10))
    cfg = { ["oauth-refresh"] = { ["backoff-seconds"] = 10, ["max-backoff-seconds"] = 25 } }
    assert.equal(20, refresh.backoff(cfg, 2))
    assert.equal(25, refresh.backoff(cfg, 3))
  end)

  it("takes a longer Retry-After, within the cap", function()
    assert.equal(900, refresh.backoff({}, 1, 900))
    assert.equal(300, refresh.backoff({}, 1, 5))
    assert.equal(3600, refresh.backoff({}, 1, 99999))
  end)
end)

describe("rt.refresh.state", function()
  local dir
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(cpx.store.open(dir))
  end)
  teardown(function()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("lists each OAuth credential with its expiry and next due time", function()
    local exp = math.floor(cpx.now()) + 86400
    assert(cpx.store.write("claude-a@example.com.json", cpx.json.encode({
      type = "claude", access_token = "at", refresh_token = "rt", email = "a@example.com",
      expired = oauth.format_time(exp), last_refresh = oauth.format_time(exp - 90000) })))
    assert(cpx.store.write("codex-b@example.com.json", cpx.json.encode({
      type = "codex", access_token = "at", email = "b@example.com" })))
    assert(cpx.store.write("kimi-c.json", cpx.json.encode({ type = "kimi", access_token = "x" })))
    local st = refresh.state({})
    local a = st["claude-a@example.com.json"]
    assert.equal("claude", a.type)
    assert.equal("a@example.com", a.email)
    assert.equal(exp, a.expires)
    assert.equal(exp - 4 * 3600, a.next_due)
    assert.equal(exp - 90000, a.last_refresh)
    assert.equal(false, a.needs_login)
    assert.equal(0, a.failures)
    -- no refresh token: nothing to schedule
    assert.is_nil(st["codex-b@example.com.json"].next_due)
    -- not an OAuth type refresh handles
    assert.is_nil(st["kimi-c.json"])
  end)

  it("a file is not blocked without an invalid_grant on record", function()
    assert.is_false(refresh.blocked("claude-a@example.com.json", "{}"))
  end)
end)
