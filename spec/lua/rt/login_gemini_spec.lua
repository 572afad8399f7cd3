-- rt.login_gemini's Code Assist steps against scripted answers: the
-- onboarding poll (pending, done, an operation error, never done), project
-- choice and the failure messages. The whole login with the real io is
-- spec/e2e/google.test.mjs.
local json = require("lib.json")
local oauth = require("rt.oauth")
local lg = require("rt.login_gemini")
local lib = require("rt.login").lib

local function io_with(answers)
  local io = { said = {}, slept = {}, requests = {} }
  function io.say(s) io.said[#io.said + 1] = s end
  function io.sleep(s) io.slept[#io.slept + 1] = s end
  function io.request(req)
    io.requests[#io.requests + 1] = req
    local a = table.remove(answers, 1)
    if not a then return nil, "Couldn't connect to server" end
    return a[1], {}, type(a[2]) == "table" and json.encode(a[2]) or a[2]
  end
  return io
end

local f = assert(oauth.facts("gemini", { ["oauth-endpoints"] = { gemini = { ["api-base-url"] = "http://ca/" } } }))

describe("rt.login_gemini.onboard", function()
  it("polls onboardUser with the default tier until done and takes the managed project", function()
    local io = io_with({
      { 200, { allowedTiers = { { id = "legacy-tier" }, { id = "free-tier", isDefault = true } } } },
      { 200, { name = "operations/1", done = false } },
      { 200, { name = "operations/1", done = false } },
      { 200, { name = "operations/1", done = true, response = { cloudaicompanionProject = { id = "m-1" } } } },
    })
    assert.equal("m-1", lg.onboard(f, io, lib, "tok", nil))
    assert.equal("http://ca/v1internal:loadCodeAssist", io.requests[1].url)
    assert.equal("Bearer tok", io.requests[1].headers.Authorization)
    assert.equal('{"metadata":{"ideType":"IDE_UNSPECIFIED","platform":"PLATFORM_UNSPECIFIED","pluginType":"GEMINI"}}',
                 io.requests[1].body)
    assert.equal("http://ca/v1internal:onboardUser", io.requests[2].url)
    assert.equal('{"tierId":"free-tier","metadata":{"ideType":"IDE_UNSPECIFIED","platform":"PLATFORM_UNSPECIFIED",'
                 .. '"pluginType":"GEMINI"}}', io.requests[2].body)
    assert.are.same({ 2, 2 }, io.slept)
  end)

  it("keeps a given project, and skips onboarding when the account has a tier", function()
    local io = io_with({ { 200, { currentTier = { id = "standard-tier" } } } })
    assert.equal("p-9", lg.onboard(f, io, lib, "tok", "p-9"))
    assert.equal(1, #io.requests)
    assert.equal("p-9", json.decode(io.requests[1].body).cloudaicompanionProject)
  end)

  it("legacy-tier without a default; the given project goes to onboardUser", function()
    local io = io_with({ { 200, {} }, { 200, { done = true, response = {} } } })
    assert.equal("p-2", lg.onboard(f, io, lib, "tok", "p-2"))
    local b = json.decode(io.requests[2].body)
    assert.equal("legacy-tier", b.tierId)
    assert.equal("p-2", b.cloudaicompanionProject)
  end)

  it("says which step failed, where, and what came back", function()
    local _, e1 = lg.onboard(f, io_with({ { 403, { error = { code = 403, message = "PERMISSION_DENIED" } } } }),
                             lib, "tok")
    assert.equal("loadCodeAssist failed: http://ca/v1internal:loadCodeAssist answered 403: 403 (PERMISSION_DENIED)", e1)
    local _, e2 = lg.onboard(f, io_with({}), lib, "tok")
    assert.equal("network error: http://ca/v1internal:loadCodeAssist: Couldn't connect to server", e2)
    local _, e3 = lg.onboard(f, io_with({ { 200, {} }, { 200, { done = true, error = { message = "no tier" } } } }),
                             lib, "tok")
    assert.equal("onboardUser failed: no tier", e3)
    local pending = { { 200, {} } }
    for i = 1, f.onboard_tries do pending[i + 1] = { 200, { done = false } } end
    local io = io_with(pending)
    local _, e4 = lg.onboard(f, io, lib, "tok")
    assert.equal("onboardUser did not finish after 30 tries (60 s): run the login again", e4)
    assert.equal(f.onboard_tries - 1, #io.slept)
  end)
end)

describe("rt.login_gemini.email and projects", function()
  it("reads the email and the active projects", function()
    local io = io_with({ { 200, { email = "u@example.com" } },
      { 200, { projects = { { projectId = "a", lifecycleState = "ACTIVE" }, { projectId = "gone",
        lifecycleState = "DELETE_REQUESTED" }, { projectId = "b" } } } } })
    assert.equal("u@example.com", lg.email(f, io, lib, "tok"))
    assert.are.same({ "a", "b" }, lg.projects(f, io, lib, "tok"))
    assert.equal("GET", io.requests[2].method)
    local _, err = lg.email(f, io_with({ { 200, { id = "1" } } }), lib, "tok")
    assert.matches("answered without an email", err)
  end)
end)

describe("rt.login_gemini.check_api", function()
  it("passes an enabled API, turns a disabled one on, says which step failed", function()
    local io = io_with({ { 200, { state = "ENABLED" } } })
    assert.is_true(lg.check_api(f, io, lib, "tok", "p 1"))
    assert.equal("https://serviceusage.googleapis.com/v1/projects/p%201/services/cloudaicompanion.googleapis.com",
                 io.requests[1].url)
    local io2 = io_with({ { 200, { state = "DISABLED" } }, { 200, { done = true } } })
    assert.is_true(lg.check_api(f, io2, lib, "tok", "p"))
    assert.equal("POST", io2.requests[2].method)
    assert.matches(":enable$", io2.requests[2].url)
    local _, err = lg.check_api(f, io_with({ { 200, { state = "DISABLED" } },
                                             { 403, { error = { message = "no permission" } } } }), lib, "tok", "p")
    assert.matches("^enabling the API failed: .* answered 403: no permission", err)
  end)
end)
