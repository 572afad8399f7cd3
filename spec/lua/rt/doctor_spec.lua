-- rt.doctor: RFC 3339 times and the credential verdicts.
local doctor = require("rt.doctor")

describe("rt.doctor.parse_time", function()
  local cases = {
    { "1970-01-01T00:00:00Z", 0 },
    { "2000-03-01T00:00:00Z", 951868800 },
    { "2026-12-07T10:00:00Z", 1796637600 },
    { "2026-12-07T10:00:00.5Z", 1796637600.5 },
    { "2026-12-07T18:00:00+08:00", 1796637600 },
    { "2026-12-07T05:30:00-04:30", 1796637600 },
    { "2024-02-29T12:00:00Z", 1709208000 },
  }
  for _, c in ipairs(cases) do
    it(c[1], function() assert.equal(c[2], doctor.parse_time(c[1])) end)
  end
  for _, bad in ipairs({ "2026-12-07", "yesterday", "2026-12-07T10:00:00+8", 42 }) do
    it("refuses " .. tostring(bad), function() assert.is_nil(doctor.parse_time(bad)) end)
  end
end)

describe("rt.doctor.report", function()
  local now = 1796637600
  local function run(creds, order)
    local app = { config = { ["api-keys"] = { "k" } }, providers = {},
                  registry = { order = order or {}, models = {} } }
    return doctor.report(app, creds, now).checks
  end

  it("judges each file, sorted by name", function()
    local checks = run({
      { name = "z.json", type = "claude", text = '{"access_token":"t","expired":"2026-12-07T09:00:00Z"}' },
      { name = "a.json", type = "codex", text = '{"access_token":"t","expired":"2026-12-07T10:30:00Z","email":"e@x"}' },
      { name = "m.json", type = "claude", text = '{"access_token":"t","expired":"2026-12-09T10:00:00Z"}' },
      { name = "n.json", type = "claude", text = '{"refresh_token":"r"}' },
      { name = "q.json", type = "kimi", text = "{}" },
      { name = "r.json", type = "codex",
        text = '{"access_token":"t","refresh_token":"r","expired":"2026-12-07T09:00:00Z"}' },
    })
    assert.same({ "error", "no models are served" }, { checks[1][1], checks[1][2] })
    assert.same({ "warn", "a.json (e@x): access token expires in 30 min" }, { checks[2][1], checks[2][2] })
    assert.same({ "ok", "m.json: claude, valid for 2 days" }, { checks[3][1], checks[3][2] })
    assert.same({ "error", "n.json: no access_token" }, { checks[4][1], checks[4][2] })
    assert.same({ "warn", "q.json: type 'kimi' is not served yet; it is skipped" }, { checks[5][1], checks[5][2] })
    -- a refresh token means the proxy renews it; without one only a new login helps
    assert.same({ "warn", "r.json: access token expired 60 min ago (at 2026-12-07T09:00:00Z)" },
                { checks[6][1], checks[6][2] })
    assert.matches("refreshes it with its refresh token", checks[6][3], 1, true)
    assert.same({ "error", "z.json: access token expired 60 min ago (at 2026-12-07T09:00:00Z)" },
                { checks[7][1], checks[7][2] })
    assert.equal("no refresh token: log in again with `cliproxy login claude`", checks[7][3])
  end)

  it("takes a Vertex service account without a token as ready", function()
    local checks = run({ { name = "vertex-p.json", type = "vertex",
      text = '{"service_account":{"type":"service_account"},"project_id":"p","email":"s@p.iam","type":"vertex"}' } })
    assert.same({ "ok", "vertex-p.json (s@p.iam): vertex service account (project p): tokens are minted when needed" },
                { checks[2][1], checks[2][2] })
  end)
end)
