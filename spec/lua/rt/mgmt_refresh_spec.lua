-- rt.mgmt.refresh: the route module's shape (rt.management's contract) and
-- its answer, rt.refresh.state().
local cpx = require("cpx")
local oauth = require("rt.oauth")
local mod = require("rt.mgmt.refresh")
local refresh = require("rt.refresh")

describe("rt.mgmt.refresh", function()
  it("is a route module: name and GET /oauth-refresh", function()
    assert.equal("refresh", mod.name)
    assert.equal(1, #mod.routes)
    assert.equal("GET", mod.routes[1].method)
    assert.equal("/oauth-refresh", mod.routes[1].path)
    assert.equal("function", type(mod.routes[1].handler))
  end)

  it("answers the refresh state of every OAuth account", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(cpx.store.open(dir))
    local exp = math.floor(cpx.now()) + 7200
    assert(cpx.store.write("claude-m@example.com.json", cpx.json.encode({
      type = "claude", access_token = "at", refresh_token = "rt", email = "m@example.com",
      expired = oauth.format_time(exp) })))
    refresh.init_worker({ config = {} }) -- remembers the config state() reads
    local status, body = mod.routes[1].handler({ method = "GET", path = "/oauth-refresh" }, {})
    assert.equal(200, status)
    local a = body.accounts["claude-m@example.com.json"]
    assert.equal("m@example.com", a.email)
    assert.equal(exp, a.expires)
    assert.equal(exp - 4 * 3600, a.next_due)
    assert.equal(false, a.needs_login)
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)
