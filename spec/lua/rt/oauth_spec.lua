-- rt.oauth: the pure parts of the OAuth library (facts, PKCE, URLs, token
-- requests and answers, credential documents, times). The I/O parts
-- (request, refresh) are covered end to end by the login and refresh tests.
local cpx = require("cpx")
local json = require("lib.json")
local oauth = require("rt.oauth")

local function b64url_json(t)
  return cpx.base64.encode(json.encode(t), true)
end

local function jwt(claims)
  return b64url_json({ alg = "none" }) .. "." .. b64url_json(claims) .. ".sig"
end

describe("rt.oauth.facts", function()
  it("reads the provider's data and applies oauth-endpoints", function()
    local f = assert(oauth.facts("codex", { ["oauth-endpoints"] = { codex = {
      ["token-url"] = "http://127.0.0.1:9/token", ["device-url"] = "http://127.0.0.1:9/deviceauth/usercode",
    } } }))
    assert.equal("codex", f.type)
    assert.equal("app_EMoamEEZ73f0CkXaXp7hrann", f.client_id)
    assert.equal("http://127.0.0.1:9/token", f.token_url)
    assert.equal("https://auth.openai.com/oauth/authorize", f.auth_url)
    -- the poll URL follows the user-code URL when only that one moved
    assert.equal("http://127.0.0.1:9/deviceauth/token", f.device_token_url)
    assert.equal(5 * 86400, f.lead)
    local c = assert(oauth.facts("claude", {}))
    assert.equal(54545, c.redirect_port)
    assert.equal(4 * 3600, c.lead)
  end)

  it("names the provider without a login", function()
    local f, err = oauth.facts("kimi", {})
    assert.is_nil(f)
    assert.equal("no OAuth login for 'kimi'", err)
  end)

  it("knows Vertex service accounts: no login, a token by signed grant", function()
    local cfg = { ["oauth-endpoints"] = { vertex = { ["token-url"] = "http://127.0.0.1:9/t" } } }
    local f = assert(oauth.facts("vertex", cfg))
    assert.equal("vertex", f.type)
    assert.equal("http://127.0.0.1:9/t", f.token_url)
    assert.equal("function", type(f.refresh_grant))
    -- a document without a service account fails as a grant that needs a new file
    local d, e = oauth.refresh(f, { type = "vertex" })
    assert.is_nil(d)
    assert.equal("invalid_grant", e.kind)
    assert.matches("service_account", e.message)
  end)
end)

describe("rt.oauth PKCE and the authorize URL", function()
  it("makes an RFC 7636 S256 pair", function()
    local v, c = oauth.pkce()
    assert.equal(43, #v)
    assert.truthy(v:match("^[%w%-_]+$"))
    assert.equal(cpx.base64.encode(cpx.sha256(v), true), c)
    local v2 = oauth.pkce()
    assert.not_equal(v, v2)
  end)

  it("builds Claude's URL with code=true first and the state last", function()
    local f = assert(oauth.facts("claude", {}))
    local u = oauth.authorize_url(f, { state = "st", challenge = "ch", redirect_uri = oauth.redirect_uri(f) })
    assert.equal("https://claude.ai/oauth/authorize?code=true&client_id=9d1c250a-e61b-44d9-88ed-5944d1962f5e"
      .. "&response_type=code&redirect_uri=http%3A%2F%2Flocalhost%3A54545%2Fcallback"
      .. "&scope=user%3Aprofile%20user%3Ainference%20user%3Asessions%3Aclaude_code%20user%3Amcp_servers"
      .. "%20user%3Afile_upload&code_challenge=ch&code_challenge_method=S256&state=st", u)
  end)

  it("adds Codex's extra parameters and honours a callback port", function()
    local f = assert(oauth.facts("codex", {}))
    local u = oauth.authorize_url(f, { state = "s", challenge = "c", redirect_uri = oauth.redirect_uri(f, 1999) })
    local q = oauth.parse_query(u:match("%?(.*)$"))
    assert.equal("http://localhost:1999/auth/callback", q.redirect_uri)
    assert.equal("login", q.prompt)
    assert.equal("true", q.codex_cli_simplified_flow)
    assert.equal("openid email profile offline_access", q.scope)
  end)

  it("refuses misuse", function()
    local f = assert(oauth.facts("codex", {}))
    assert.has_error(function() oauth.authorize_url(f, {}) end)
    assert.has_error(function() oauth.refresh_request(f, "") end)
  end)
end)

describe("rt.oauth token requests", function()
  it("sends Claude's exchange as JSON in Claude Code's key order", function()
    local f = assert(oauth.facts("claude", {}))
    local req = oauth.exchange_request(f, { code = "abc", verifier = "ver", state = "st",
                                            redirect_uri = "http://localhost:54545/callback" })
    assert.equal("POST", req.method)
    assert.equal("https://platform.claude.com/v1/oauth/token", req.url)
    assert.equal("application/json", req.headers["Content-Type"])
    assert.equal('{"grant_type":"authorization_code","code":"abc","redirect_uri":"http://localhost:54545/callback",'
      .. '"client_id":"9d1c250a-e61b-44d9-88ed-5944d1962f5e","code_verifier":"ver","state":"st"}', req.body)
    local r = oauth.refresh_request(f, "rt-1")
    assert.equal('{"grant_type":"refresh_token","refresh_token":"rt-1",'
      .. '"client_id":"9d1c250a-e61b-44d9-88ed-5944d1962f5e","scope":"' .. f.scopes .. '"}', r.body)
  end)

  it("sends Codex's as a form", function()
    local f = assert(oauth.facts("codex", {}))
    local req = oauth.exchange_request(f, { code = "a b", verifier = "v",
                                            redirect_uri = "http://localhost:1455/auth/callback" })
    assert.equal("application/x-www-form-urlencoded", req.headers["Content-Type"])
    assert.equal("grant_type=authorization_code&client_id=app_EMoamEEZ73f0CkXaXp7hrann&code=a%20b"
      .. "&redirect_uri=http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback&code_verifier=v", req.body)
    local r = oauth.refresh_request(f, "r/1")
    assert.equal("grant_type=refresh_token&client_id=app_EMoamEEZ73f0CkXaXp7hrann&refresh_token=r%2F1"
      .. "&scope=openid%20profile%20email", r.body)
  end)

  it("splits a pasted code#state", function()
    assert.same({ "c0de", "st" }, { oauth.split_code("c0de#st") })
    assert.same({ "c0de" }, { oauth.split_code("c0de") })
  end)
end)

describe("rt.oauth.parse_token_response", function()
  local codex = assert(oauth.facts("codex", {}))
  local claude = assert(oauth.facts("claude", {}))

  it("reads Codex's account facts from the id_token", function()
    local id = jwt({ email = "me@example.com", ["https://api.openai.com/auth"] = {
      chatgpt_account_id = "acc-1", chatgpt_plan_type = "plus" } })
    local t = assert(oauth.parse_token_response(codex, 200, {}, json.encode({
      access_token = "at", refresh_token = "rt", id_token = id, expires_in = 3600 })))
    assert.equal("me@example.com", t.email)
    assert.equal("acc-1", t.account_id)
    assert.equal("plus", t.plan)
    assert.equal(3600, t.expires_in)
  end)

  it("reads Claude's account object", function()
    local t = assert(oauth.parse_token_response(claude, 200, {}, json.encode({
      access_token = "at", refresh_token = "rt", expires_in = 28800,
      account = { uuid = "u-1", email_address = "c@example.com" }, organization = { uuid = "o-1", name = "Org" } })))
    assert.equal("c@example.com", t.email)
    assert.equal("u-1", t.account_uuid)
    assert.equal("Org", t.organization_name)
  end)

  local cases = {
    { 400, '{"error":"invalid_grant","error_description":"Refresh token revoked"}', "invalid_grant",
      "token endpoint answered 400: invalid_grant (Refresh token revoked)" },
    { 401, '{"error":{"code":"refresh_token_reused","message":"already used"}}', "invalid_grant",
      "token endpoint answered 401: refresh_token_reused (already used)" },
    { 429, '{"error":"rate_limited"}', "rate_limited", "token endpoint answered 429: rate_limited" },
    { 500, "upstream broke", "http", "token endpoint answered 500: upstream broke" },
    { 200, '{"token_type":"bearer"}', "bad_response", "token endpoint answer has no access_token" },
    { 200, "not json", "bad_response", "token endpoint answer has no access_token" },
  }
  for _, c in ipairs(cases) do
    it("classifies " .. c[1] .. " " .. c[3], function()
      local t, err = oauth.parse_token_response(codex, c[1], { ["retry-after"] = "7" }, c[2])
      assert.is_nil(t)
      assert.equal(c[3], err.kind)
      assert.equal(c[4], err.message)
      if c[1] ~= 200 then assert.equal(7, err.retry_after) end
    end)
  end
end)

describe("rt.oauth times", function()
  it("parses RFC 3339 in any offset and formats UTC", function()
    assert.equal(1796119200, oauth.parse_time("2026-12-01T10:00:00Z"))
    assert.equal(1796119200, oauth.parse_time("2026-12-01T18:00:00+08:00"))
    assert.equal(1796119200, math.floor(oauth.parse_time("2026-12-01T10:00:00.123456789Z")))
    assert.equal(951782400, oauth.parse_time("2000-02-29T00:00:00Z"))
    assert.is_nil(oauth.parse_time("yesterday"))
    assert.equal("2026-12-01T10:00:00Z", oauth.format_time(1796119200))
    assert.equal("2000-02-29T00:00:00Z", oauth.format_time(951782400))
    for _, t in ipairs({ 0, 86399, 1e9, 1796119200, 4102444800 }) do
      assert.equal(t, oauth.parse_time(oauth.format_time(t)))
    end
  end)

  it("schedules by expiry minus lead, else last refresh plus lead", function()
    local f = assert(oauth.facts("claude", {}))
    assert.equal(1796119200 - 4 * 3600, oauth.due(f, { expired = "2026-12-01T10:00:00Z" }, 0))
    assert.equal(1796119200 + 4 * 3600, oauth.due(f, { last_refresh = "2026-12-01T10:00:00Z" }, 0))
    assert.equal(1796119200 + 600, oauth.due(f, { last_refresh = "2026-12-01T10:00:00Z",
                                                  refresh_interval_seconds = 600,
                                                  expired = "2027-01-01T00:00:00Z" }, 0))
    assert.equal(42, oauth.due(f, {}, 42))
  end)
end)

describe("rt.oauth credential files", function()
  local codex = assert(oauth.facts("codex", {}))
  local claude = assert(oauth.facts("claude", {}))

  it("writes a new Claude file in CLIProxyAPI's field order", function()
    local doc = oauth.credential(claude, { access_token = "at", refresh_token = "rt", expires_in = 3600,
                                           email = "c@example.com" }, nil, 1796119200)
    assert.equal('{"id_token":"","access_token":"at","refresh_token":"rt","last_refresh":"2026-12-01T10:00:00Z",'
      .. '"email":"c@example.com","type":"claude","expired":"2026-12-01T11:00:00Z"}', oauth.encode(doc))
    assert.equal("claude-c@example.com.json", oauth.file_name(claude, doc))
  end)

  it("rotates in place: unknown fields, their order and number text stay", function()
    local old = json.decode('{"type":"codex","email":"me@example.com","priority":1.50,"note":"work",'
      .. '"access_token":"old","refresh_token":"r-old","account_id":"acc","expired":"2026-01-01T00:00:00Z"}')
    local doc = oauth.credential(codex, { access_token = "new", refresh_token = "r-new", expires_in = 60 },
                                 old, 1796119200)
    assert.equal('{"type":"codex","email":"me@example.com","priority":1.50,"note":"work","access_token":"new",'
      .. '"refresh_token":"r-new","account_id":"acc","expired":"2026-12-01T10:01:00Z",'
      .. '"id_token":"","last_refresh":"2026-12-01T10:00:00Z"}', oauth.encode(doc))
    -- a server that does not rotate keeps the old refresh token valid
    local kept = oauth.credential(codex, { access_token = "n2" }, doc, 1796119200)
    assert.equal("r-new", kept.refresh_token)
    assert.equal("2026-12-01T10:01:00Z", kept.expired)
  end)

  it("names Codex files by email and plan, team files with the account hash", function()
    local plus = { email = "me@example.com", id_token = jwt({ ["https://api.openai.com/auth"] = {
      chatgpt_plan_type = "plus" } }) }
    assert.equal("codex-me@example.com-plus.json", oauth.file_name(codex, plus))
    local team = { email = "me@example.com", account_id = "acc-9" }
    assert.equal("codex-" .. cpx.sha256_hex("acc-9"):sub(1, 8) .. "-me@example.com-team.json",
                 oauth.file_name(codex, team, { plan = "team" }))
    assert.equal("codex-a_b@example.com.json", oauth.file_name(codex, { email = "a/b@example.com" }))
  end)
end)
