-- rt.login: the flows against a scripted io (a fake clock, scripted events
-- and token answers), so every branch runs without sockets or timers. The
-- real io (runtime/app/cpx_login.c) is covered by spec/e2e/login.test.mjs.
local json = require("lib.json")
local oauth = require("rt.oauth")
local login = require("rt.login")

-- io whose wait/sleep advance a fake clock and whose answers are scripted:
-- events = { ev, ... } for io.wait, answers = { {status, body}, ... } for
-- io.request in order.
local function fake_io(script)
  local io = { t = 1796119200, said = {}, requests = {}, written = {}, answered = {}, slept = {} }
  local events, answers = script.events or {}, script.answers or {}
  function io.say(s) io.said[#io.said + 1] = s end
  function io.now() return io.t end
  function io.listen(port, path)
    io.port, io.path = port, path
    if script.listen_error then return nil, "address already in use", script.listen_error end
    return true
  end
  function io.watch_stdin() io.stdin = true end
  function io.open_browser(url) io.opened = url return script.browser ~= false or nil, "xdg-open: not found" end
  function io.wait(s)
    local ev = table.remove(events, 1)
    if type(ev) == "function" then ev = ev(io) end
    if not ev then
      io.t = io.t + s
      return { kind = "timeout" }
    end
    io.t = io.t + 1
    return ev
  end
  function io.answer(status, html) io.answered[#io.answered + 1] = { status, html } end
  function io.sleep(s)
    io.slept[#io.slept + 1] = s
    io.t = io.t + s
  end
  function io.request(req)
    io.requests[#io.requests + 1] = req
    local a = table.remove(answers, 1)
    if type(a) == "function" then a = a(req, io) end
    if not a then return nil, "Couldn't connect to server" end
    return a[1], {}, type(a[2]) == "table" and json.encode(a[2]) or a[2]
  end
  function io.write(name, text)
    io.written[name] = text
    return true
  end
  function io.dir() return "/auths" end
  return io
end

local function url_state(io)
  for _, s in ipairs(io.said) do
    local st = s:match("[?&]state=([^&]+)")
    if st then return oauth.parse_query("s=" .. st).s end
  end
end

local CLAUDE_TOKENS = { access_token = "at-1", refresh_token = "rt-1", expires_in = 3600,
                        account = { email_address = "me@example.com" } }

describe("rt.login.parse_input", function()
  it("takes a redirect URL, its query and code#state", function()
    assert.same({ code = "c1", state = "s1" },
                login.parse_input("http://localhost:1455/auth/callback?code=c1&scope=x&state=s1"))
    assert.same({ code = "c%2", state = "s 2" }, login.parse_input("  ?code=c%252&state=s+2  "))
    assert.same({ code = "c3", state = "s3" }, login.parse_input("code=c3&state=s3"))
    assert.same({ code = "abc_DEF-1", state = "st" }, login.parse_input("abc_DEF-1#st"))
    local e = login.parse_input("http://localhost:54545/callback?error=access_denied&state=s")
    assert.equal("access_denied", e.error)
  end)

  it("says why it refuses", function()
    assert.same({ nil, "nothing pasted" }, { login.parse_input("   ") })
    assert.same({ nil, "not a redirect URL or code#state" }, { login.parse_input("hello world") })
    assert.same({ nil, "not a redirect URL or code#state" }, { login.parse_input("justacode") })
    assert.same({ nil, "the pasted URL has no code" }, { login.parse_input("http://localhost:1455/auth/callback") })
    assert.same({ nil, "the pasted URL has no code" }, { login.parse_input("https://x/cb?state=s") })
  end)
end)

describe("rt.login.judge and page", function()
  it("checks the state and names the refusal", function()
    assert.equal("c", login.judge({ code = "c", state = "s" }, "s"))
    assert.matches("^state mismatch", select(2, login.judge({ code = "c", state = "x" }, "s")))
    assert.matches("^state mismatch", select(2, login.judge({ code = "c" }, "s")))
    assert.matches("^access denied", select(2, login.judge({ error = "access_denied" }, "s")))
    assert.equal("the authorization server refused: invalid_scope (bad scope)",
                 select(2, login.judge({ error = "invalid_scope", error_description = "bad scope" }, "s")))
  end)

  it("escapes what it shows", function()
    local html = login.page(false, "<script>x</script> & 'y'")
    assert.truthy(html:find("&lt;script&gt;x&lt;/script&gt; &amp; &#39;y&#39;", 1, true))
    assert.falsy(html:find("<script>", 1, true))
  end)
end)

describe("rt.login.run: code flow", function()
  it("waits through unusable pastes, exchanges the code and saves the file", function()
    local io
    io = fake_io({
      events = {
        { kind = "line", text = "" },
        { kind = "line", text = "what?" },
        function(i) return { kind = "line", text = "the-code#" .. url_state(i) } end,
      },
      answers = { function(req) io.exchange = json.decode(req.body) return { 200, CLAUDE_TOKENS } end },
    })
    local info, err = login.run({ provider = "claude", browser = false, config = {} }, io)
    assert.is_nil(err)
    assert.equal("claude-me@example.com.json", info.name)
    assert.equal(54545, io.port)
    assert.equal("/callback", io.path)
    assert.truthy(io.stdin)
    assert.is_nil(io.opened)
    assert.equal("the-code", io.exchange.code)
    assert.equal(url_state(io), io.exchange.state)
    assert.equal("http://localhost:54545/callback", io.exchange.redirect_uri)
    local doc = json.decode(io.written["claude-me@example.com.json"])
    assert.equal("at-1", doc.access_token)
    assert.equal("claude", doc.type)
    local said = table.concat(io.said, "\n")
    assert.truthy(said:find("not a redirect URL or code#state: paste", 1, true))
    assert.truthy(said:find("Saved /auths/claude-me@example.com.json (me@example.com)", 1, true))
    assert.falsy(said:find("at-1", 1, true))
  end)

  it("answers the browser and honours --callback-port", function()
    local io = fake_io({
      events = { function(i) return { kind = "callback", query = "code=c&state=" .. url_state(i) } end },
      answers = { { 200, CLAUDE_TOKENS } },
    })
    assert.truthy(login.run({ provider = "codex", port = 4242, config = {} }, io))
    assert.equal(4242, io.port)
    assert.equal("/auth/callback", io.path)
    assert.truthy(io.opened:find("redirect_uri=http%3A%2F%2Flocalhost%3A4242%2Fauth%2Fcallback", 1, true))
    assert.equal(200, io.answered[1][1])
    -- answered once, after the exchange, with its outcome
    assert.equal(1, #io.answered)
    assert.truthy(io.answered[1][2]:find("Login successful", 1, true))
    assert.truthy(io.answered[1][2]:find("Saved codex-me@example.com.json (me@example.com).", 1, true))
  end)

  it("fails with one line: port in use, timeout, token error, network error, a browser that will not open", function()
    local _, err = login.run({ provider = "claude", port = 5000, config = {} },
                             fake_io({ listen_error = "EADDRINUSE" }))
    assert.equal("port 5000 is in use (another login or program?): pass --callback-port N to use another port", err)

    local io = fake_io({ browser = false })
    _, err = login.run({ provider = "claude", timeout = 30, config = {} }, io)
    assert.equal("timed out after 30 s waiting for the browser or a pasted code (--timeout SECONDS waits longer)", err)
    assert.truthy(table.concat(io.said, "\n"):find("Could not open a browser (xdg-open: not found)", 1, true))

    local paste = function(i) return { kind = "line", text = "c#" .. url_state(i) } end
    _, err = login.run({ provider = "codex", config = {} }, fake_io({
      events = { paste }, answers = { { 400, { error = "invalid_grant", error_description = "Code expired" } } } }))
    assert.equal("the token exchange failed: token endpoint answered 400: invalid_grant (Code expired)", err)

    _, err = login.run({ provider = "claude", config = { ["oauth-endpoints"] = { claude = {
      ["token-url"] = "http://127.0.0.1:9/t" } } } }, fake_io({ events = { paste } }))
    assert.equal("network error: http://127.0.0.1:9/t: Couldn't connect to server", err)

    io = fake_io({ events = { function(i)
      return { kind = "callback", query = "code=c&state=" .. url_state(i) .. "x" }
    end } })
    _, err = login.run({ provider = "claude", config = {} }, io)
    assert.matches("^state mismatch", err)
    assert.equal(400, io.answered[1][1])
    assert.equal(0, #io.requests)
  end)
end)

describe("rt.login.run: Codex device flow", function()
  local function grant()
    local verifier, challenge = oauth.pkce()
    return { 200, { authorization_code = "ac", code_verifier = verifier, code_challenge = challenge } }
  end
  local ID_TOKEN = "e30." .. require("cpx").base64.encode(json.encode({ email = "d@example.com",
    ["https://api.openai.com/auth"] = { chatgpt_plan_type = "pro", chatgpt_account_id = "a1" } }), true) .. ".s"

  it("polls at the server's interval, slows down, and exchanges with the device redirect", function()
    local io = fake_io({ answers = {
      { 200, { device_auth_id = "d1", user_code = "UC-1", interval = "3" } },
      { 403, "" }, { 404, "" }, { 400, { error = "slow_down" } }, { 400, { error = "authorization_pending" } },
      grant(),
      function(req, i)
        i.exchange = oauth.parse_query(req.body)
        return { 200, { access_token = "x", id_token = ID_TOKEN } }
      end,
    } })
    local info, err = login.run({ provider = "codex", device = true, config = {} }, io)
    assert.is_nil(err)
    assert.is_nil(io.opened) -- the device flow is for a browser elsewhere
    assert.equal("codex-d@example.com-pro.json", info.name)
    assert.equal("device", json.decode(io.written[info.name]).codex_login_mode)
    assert.same({ 3, 3, 3, 8, 8 }, io.slept)
    assert.same({ client_id = "app_EMoamEEZ73f0CkXaXp7hrann" }, json.decode(io.requests[1].body))
    assert.same({ device_auth_id = "d1", user_code = "UC-1" }, json.decode(io.requests[2].body))
    assert.equal("https://auth.openai.com/deviceauth/callback", io.exchange.redirect_uri)
    assert.equal("ac", io.exchange.code)
    local said = table.concat(io.said, "\n")
    assert.truthy(said:find("Open https://auth.openai.com/codex/device and enter the code UC-1", 1, true))
    assert.truthy(said:find("polling every 3 s", 1, true))
    assert.truthy(said:find("slow down: polling every 8 s", 1, true))
  end)

  it("reports expiry, denial, timeouts and server errors", function()
    local pending = function() return { 403, "" } end
    local function answers(first, n)
      local a = { first }
      for i = 1, n do a[i + 1] = pending end
      return a
    end
    local _, err = login.run({ provider = "codex", device = true, config = {} }, fake_io({
      answers = answers({ 200, { device_auth_id = "d", usercode = "U", interval = 5, expires_in = 20 } }, 10) }))
    assert.equal("the device code expired after 20 s without an approval: run the login again", err)

    local io = fake_io({ answers = answers({ 200, { device_auth_id = "d", user_code = "U" } }, 400) })
    _, err = login.run({ provider = "codex", device = true, config = {} }, io)
    assert.equal("the device code expired after 15 min without an approval: run the login again", err)
    assert.equal(5, io.slept[1]) -- no interval given: 5 s

    _, err = login.run({ provider = "codex", device = true, timeout = 12, config = {} }, fake_io({
      answers = answers({ 200, { device_auth_id = "d", user_code = "U", interval = "2" } }, 10) }))
    assert.equal("timed out after 12 s waiting for the device approval (--timeout SECONDS waits longer)", err)

    _, err = login.run({ provider = "codex", device = true, config = {} }, fake_io({ answers = {
      { 200, { device_auth_id = "d", user_code = "U" } }, { 400, { error = "access_denied" } } } }))
    assert.equal("access denied: the device login was declined", err)

    _, err = login.run({ provider = "codex", device = true, config = {} }, fake_io({ answers = {
      { 500, { error = { message = "backend down" } } } } }))
    assert.equal("the device code request failed: https://auth.openai.com/api/accounts/deviceauth/usercode "
                 .. "answered 500: backend down", err)

    _, err = login.run({ provider = "claude", device = true, config = {} }, fake_io({}))
    assert.equal("--device is for codex only", err)

    _, err = login.run({ provider = "codex", device = true, config = {} }, fake_io({ answers = {
      { 502, "<html>\r\n<b>Bad gateway</b>\n</html>" } } }))
    assert.equal("the device code request failed: https://auth.openai.com/api/accounts/deviceauth/usercode "
                 .. "answered 502: <html> <b>Bad gateway</b> </html>", err)

    io = fake_io({})
    io.dir = function() return nil end
    _, err = login.run({ provider = "codex", device = true, config = { ["auth-dir"] = "/nope" } }, io)
    assert.equal("auth-dir /nope cannot be opened (see the warning above): fix auth-dir in the config", err)
    assert.equal(0, #io.requests)
  end)
end)
