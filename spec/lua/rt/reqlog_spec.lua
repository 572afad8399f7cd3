-- rt.reqlog's text (sections, redaction, names), cpx.reqlog's files
-- (write, prune, list, read, find, names refused) and the places
-- cpx.mgmt's file calls may touch.
local cpx = require("cpx")
local reqlog = require("rt.reqlog")

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. p .. "/logs && chmod 700 " .. p) == 0 or true)
  return p
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local t = f:read("*a")
  f:close()
  return t
end

describe("rt.reqlog", function()
  it("names files as CLIProxyAPI does", function()
    local rec = { endpoint = "/v1/chat/completions", time = 1700000000, request_id = "ab12cd34" }
    assert.equal("v1-chat-completions-2023-11-14T221320-ab12cd34.log", reqlog.file_name(rec, false))
    assert.equal("error-v1-chat-completions-2023-11-14T221320-ab12cd34.log", reqlog.file_name(rec, true))
    assert.equal("v1beta-models-gemini-pro-generateContent",
                 reqlog.sanitize("/v1beta/models/gemini-pro:generateContent"))
    assert.equal("root", reqlog.sanitize("/../"))
    rec.request_id = "../../etc"
    assert.equal("v1-chat-completions-2023-11-14T221320-etc.log", reqlog.file_name(rec, false))
  end)

  it("redacts credentials in headers, query, JSON fields and wherever they are echoed", function()
    local rec = {
      endpoint = "/v1/messages", method = "POST", time = 1700000000, request_id = "ab12cd34", status = 502,
      latency_ms = 12, error = "upstream said sk-upstream-123456 is bad",
      _info = { query = "key=sk-client-abcdef&x=1", remote = "127.0.0.1",
                headers = { ["x-api-key"] = "sk-client-abcdef", cookie = "s=cookie-value-99",
                            ["content-type"] = "application/json" },
                body = '{"model":"m","api_key":"sk-in-body-777777"}' },
      _attempts = {
        { url = "https://up.example/v1/messages", method = "POST",
          headers = { Authorization = "Bearer sk-upstream-123456", ["X-Custom-Token"] = "tok-custom-424242" },
          body = '{"model":"u"}', status = 401, resp_headers = { ["set-cookie"] = "a=b" },
          resp_body = '{"error":"bad key sk-upstream-123456","access_token":"at-zzzzzz"}' },
      },
      _response = '{"error":"bad key sk-upstream-123456"}',
    }
    local text = reqlog.format(rec)
    for _, s in ipairs({ "sk-client-abcdef", "cookie-value-99", "sk-upstream-123456", "tok-custom-424242",
                         "sk-in-body-777777", "at-zzzzzz" }) do
      assert.is_nil(text:find(s, 1, true), s .. " in\n" .. text)
    end
    for _, s in ipairs({ "=== REQUEST INFO ===", "=== HEADERS ===", "=== REQUEST BODY ===", "=== API REQUEST 1 ===",
                         "=== API RESPONSE 1 ===", "=== RESPONSE ===", "URL: /v1/messages?key=[redacted]&x=1",
                         "x-api-key: [redacted]", "content-type: application/json", "Status: 401", "Status: 502" }) do
      assert.truthy(text:find(s, 1, true), s .. " missing in\n" .. text)
    end
  end)

  it("cuts long bodies and says so", function()
    local big = string.rep("x", reqlog.BODY_MAX + 10)
    local text = reqlog.format({ endpoint = "/v1/x", time = 0, _info = { body = big } })
    assert.truthy(text:find("[... 10 more bytes not logged]", 1, true))
  end)
end)

describe("cpx.reqlog", function()
  it("writes 0600 files, prunes the oldest, lists, reads and finds; refuses other names", function()
    local d = tmpdir() .. "/logs/sub"
    for i = 1, 4 do
      assert(cpx.reqlog.write(d, ("error-v1-x-2026-01-01T00000%d-id%d.log"):format(i, i), "log " .. i, "error-", 3))
      local name = ("/error-v1-x-2026-01-01T00000%d-id%d.log"):format(i, i)
      os.execute("touch -d '2026-01-01 00:00:0" .. i .. "' " .. d .. name)
    end
    assert(cpx.reqlog.write(d, "error-v1-x-2026-01-01T000005-id5.log", "log 5", "error-", 3))
    local l = assert(cpx.reqlog.list(d, "error-"))
    assert.equal(3, #l)
    assert.equal("error-v1-x-2026-01-01T000005-id5.log", l[1].name)
    assert.equal(5, l[1].size)
    assert.is_nil(slurp(d .. "/error-v1-x-2026-01-01T000001-id1.log"))
    assert.equal("log 5", (cpx.reqlog.read(d, l[1].name)))
    local t, n = cpx.reqlog.find(d, "id4")
    assert.equal("log 4", t)
    assert.equal("error-v1-x-2026-01-01T000004-id4.log", n)
    assert.is_nil((cpx.reqlog.find(d, "../id4")))
    assert.is_nil((cpx.reqlog.read(d, "../logs/x.log")))
    assert.is_nil((cpx.reqlog.read(d, ".hidden.log")))
    assert.has_error(function() cpx.reqlog.write(d, "../escape.log", "x") end)
    local p = io.popen("stat -c %a " .. d .. "/" .. l[1].name)
    assert.equal("600", p:read("*l"))
    p:close()
  end)
end)

describe("cpx.mgmt file calls", function()
  it("only touch config.yaml and files directly inside the allowed directories", function()
    local root = tmpdir()
    local cfg = root .. "/config.yaml"
    local f = io.open(cfg, "w")
    f:write("port: 1\n")
    f:close()
    f = io.open(root .. "/secret.txt", "w")
    f:write("outside")
    f:close()
    f = io.open(root .. "/logs/main.log", "w")
    f:write("inside")
    f:close()
    os.execute("ln -s " .. root .. "/secret.txt " .. root .. "/logs/link.log")
    cpx.mgmt.allow({ cfg, root .. "/logs" })
    assert.equal("port: 1\n", (cpx.mgmt.read_file(cfg)))
    assert.equal("inside", (cpx.mgmt.read_file(root .. "/logs/main.log")))
    assert.equal("port: 1\n", (cpx.mgmt.read_file(root .. "/logs/../config.yaml")))
    for _, p in ipairs({ root .. "/secret.txt", root .. "/logs/../secret.txt", root .. "/logs/link.log", "/etc/passwd",
                         root .. "/logs/../../" .. root:match("[^/]+$") .. "/secret.txt" }) do
      local t, err = cpx.mgmt.read_file(p)
      assert.is_nil(t, p)
      assert.equal("path not allowed", err)
    end
    local ok, err = cpx.mgmt.write_file(root .. "/written.txt", "x")
    assert.is_nil(ok)
    assert.equal("path not allowed", err)
    assert.truthy(cpx.mgmt.write_file(root .. "/logs/new.log", "x"))
    cpx.mgmt.allow({})
    assert.equal("path not allowed", select(2, cpx.mgmt.read_file(cfg)))
  end)
end)
