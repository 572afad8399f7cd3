-- rt.management's pure parts: loopback detection, the route-module loader's
-- errors, and the auth-files multipart splitter and name check.
local management = require("rt.management")
local auth_files = require("rt.mgmt.auth_files")

local function app(secret)
  return { config = { ["remote-management"] = { ["secret-key"] = secret or "" }, _file = "/nonexistent.yaml" } }
end

describe("rt.management", function()
  it("knows loopback addresses", function()
    for _, a in ipairs({ "127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "127.0.0.1:5555" }) do
      assert.is_true(management.is_loopback(a), a)
    end
    for _, a in ipairs({ "192.0.2.2", "10.0.0.1", "::2", "fe80::1", "", "1127.0.0.1", "127.0.0.1.evil" }) do
      assert.is_false(management.is_loopback(a), a)
    end
  end)

  it("recognises bcrypt hashes", function()
    assert.is_true(management.is_bcrypt("$2b$10$abcdefghijklmnopqrstuv"))
    assert.is_true(management.is_bcrypt("$2a$04$x"))
    assert.is_false(management.is_bcrypt("plain"))
    assert.is_false(management.is_bcrypt("$1$abc"))
  end)

  it("is off without a secret and on with one", function()
    assert(management.init(app("")))
    assert.is_false(management.enabled())
    assert(management.init(app("$2b$10$abcdefghijklmnopqrstuv")))
    assert.is_true(management.enabled())
  end)

  it("mounts every built-in module's routes", function()
    assert(management.init(app("")))
    local routes = management._routes()
    for _, r in ipairs({ "GET /config", "PUT /config.yaml", "PATCH /debug", "DELETE /api-keys",
                         "PATCH /gemini-api-key", "DELETE /openai-compatibility", "PATCH /oauth-model-alias",
                         "POST /auth-files", "PATCH /auth-files/fields", "POST /reset-cooldown" }) do
      assert.truthy(routes:find(r, 1, true), r)
    end
  end)

  it("names the file and field of a malformed route module", function()
    local cases = {
      { { name = "x", routes = { { method = "get", path = "/a", handler = print } } }, "field 'method'" },
      { { name = "x", routes = { { method = "GET", path = "a", handler = print } } }, "field 'path'" },
      { { name = "x", routes = { { method = "GET", path = "/a" } } }, "field 'handler'" },
      { { routes = {} }, "field 'name'" },
      { "nope", "must return a table" },
    }
    for _, c in ipairs(cases) do
      package.loaded["rt.mgmt.spec_bad"] = c[1]
      management.MODULES[#management.MODULES + 1] = "spec_bad"
      local ok, err = management.init(app(""))
      table.remove(management.MODULES)
      assert.is_nil(ok)
      assert.matches("rt/mgmt/spec_bad.lua", err, 1, true)
      assert.matches(c[2], err, 1, true)
    end
    package.loaded["rt.mgmt.spec_bad"] = nil
  end)
end)

describe("rt.mgmt.auth_files", function()
  it("accepts plain .json names only", function()
    for _, n in ipairs({ "claude-a@b.com.json", "x.JSON" }) do assert.is_true(auth_files.valid_name(n), n) end
    for _, n in ipairs({ "../x.json", "a/b.json", ".hidden.json", "x.txt", "", "x.json\0.txt" }) do
      assert.is_false(auth_files.valid_name(n), n)
    end
  end)

  it("splits a multipart body into its parts", function()
    local b = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.json\"\r\n" ..
      "Content-Type: application/json\r\n\r\n{\"type\":\"claude\"}\r\n" ..
      "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\nworld\r\n--XyZ--\r\n"
    local parts = assert(auth_files.multipart(b, 'multipart/form-data; boundary="XyZ"'))
    assert.equal(2, #parts)
    assert.equal("a.json", parts[1].filename)
    assert.equal("file", parts[1].name)
    assert.equal('{"type":"claude"}', parts[1].data)
    assert.is_nil(parts[2].filename)
    assert.equal("hello\r\nworld", parts[2].data)
  end)

  it("refuses malformed multipart bodies", function()
    assert.is_nil(auth_files.multipart("x", "multipart/form-data"))
    assert.is_nil(auth_files.multipart("--B\r\nno headers end", "multipart/form-data; boundary=B"))
    assert.is_nil(auth_files.multipart("--B\r\nA: b\r\n\r\nunterminated", "multipart/form-data; boundary=B"))
  end)
end)
