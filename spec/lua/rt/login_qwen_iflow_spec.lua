-- rt.login_qwen and rt.login_iflow against a scripted io: the device poll's
-- answers (network errors retried, denied, a bad answer) and the cookie
-- login's failures. The whole logins with the real io are
-- spec/e2e/qwen_iflow.test.mjs.
local json = require("lib.json")
local oauth = require("rt.oauth")
local lib = require("rt.login").lib
local lq = require("rt.login_qwen")
local li = require("rt.login_iflow")

local function io_with(answers, lines)
  local t = 0
  local io = { said = {}, slept = {}, requests = {}, written = {} }
  function io.say(s) io.said[#io.said + 1] = s end
  function io.now() return t end
  function io.sleep(s) io.slept[#io.slept + 1] = s; t = t + s end
  function io.watch_stdin() return true end
  function io.wait()
    local l = table.remove(lines or {}, 1)
    if l then return { kind = "line", text = l } end
    return { kind = "eof" }
  end
  function io.dir() return "/auth" end
  function io.write(name, text) io.written[name] = text; return true end
  function io.request(req)
    io.requests[#io.requests + 1] = req
    local a = table.remove(answers, 1)
    if not a then return nil, "Couldn't connect to server" end
    return a[1], {}, type(a[2]) == "table" and json.encode(a[2]) or a[2]
  end
  return io
end

local qf = assert(oauth.facts("qwen", {}))
local DEVICE = { 200, { device_code = "d", user_code = "U-1", verification_uri = "https://v", interval = 2,
                        expires_in = 600 } }

describe("rt.login_qwen", function()
  it("retries a poll that met a network error, then saves the named account", function()
    local io = io_with({ DEVICE, { 400, { error = "authorization_pending" } } }, { "  me@x  " })
    -- the third and fourth polls: no answer scripted (a network error), then the tokens
    local orig = io.request
    local n = 0
    io.request = function(req)
      n = n + 1
      if n == 3 then io.requests[#io.requests + 1] = req; return nil, "Connection reset" end
      if n == 4 then
        io.requests[#io.requests + 1] = req
        return 200, {}, json.encode({ access_token = "a", refresh_token = "r", expires_in = 60, resource_url = "h" })
      end
      return orig(req)
    end
    local info, err = lq.run(qf, { browser = false }, io, lib)
    assert.is_nil(err)
    assert.equal("qwen-me@x.json", info.name)
    local doc = json.decode(io.written["qwen-me@x.json"])
    assert.equal("h", doc.resource_url)
    assert.equal("me@x", doc.email)
    assert.matches("Polling failed %(network error: Connection reset%); trying again in 2 s",
                   table.concat(io.said, "\n"))
    local body = oauth.parse_query(io.requests[4].body)
    assert.equal("urn:ietf:params:oauth:grant-type:device_code", body.grant_type)
    assert.equal("d", body.device_code)
    assert.equal(43, #body.code_verifier)
  end)

  it("names the file by the time when nobody answers the question", function()
    local io = io_with({ DEVICE, { 200, { access_token = "a", refresh_token = "r" } } })
    local info = assert(lq.run(qf, { browser = false }, io, lib))
    assert.matches("^qwen%-%d+%.json$", info.name)
  end)

  it("says access denied, and gives up after the network failed too often", function()
    local io = io_with({ DEVICE, { 400, { error = "access_denied" } } })
    local info, err = lq.run(qf, { browser = false }, io, lib)
    assert.is_nil(info)
    assert.equal("access denied: the device login was declined", err)
    io = io_with({ DEVICE })
    info, err = lq.run(qf, { browser = false }, io, lib)
    assert.is_nil(info)
    assert.matches("^network error: https://chat%.qwen%.ai/api/v1/oauth2/token: ", err)
    assert.equal(1 + lib.POLL_RETRIES + 1, #io.requests)
  end)

  it("reports a device code request the server refused", function()
    local io = io_with({ { 400, { error = "invalid_client", error_description = "bad id" } } })
    local info, err = lq.run(qf, { browser = false }, io, lib)
    assert.is_nil(info)
    assert.equal("the device code request failed: https://chat.qwen.ai/api/v1/oauth2/device/code answered "
                 .. "400: invalid_client (bad id)", err)
  end)
end)

describe("rt.login_iflow --cookie", function()
  local f = assert(oauth.facts("iflow", {}))
  it("fails on stdin closed, and on a refused cookie without echoing it", function()
    local info, err = li.run(f, { cookie = true }, io_with({}), lib)
    assert.is_nil(info)
    assert.equal("no cookie pasted (stdin closed)", err)
    local io = io_with({ { 401, { success = false, message = "not logged in" } } }, { "BXAuth=SECRET" })
    info, err = li.run(f, { cookie = true }, io, lib)
    assert.is_nil(info)
    assert.equal("the API-key request failed: https://platform.iflow.cn/api/openapi/apikey answered 401: not logged in",
                 err)
    assert.equal("BXAuth=SECRET", io.requests[1].headers.Cookie)
    assert.not_matches("SECRET", table.concat(io.said, "\n") .. err)
  end)
end)
