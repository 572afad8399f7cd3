-- rt.validate: the one validator of config.yaml and middleware settings.
local json = require("lib.json")
local validate = require("rt.validate")
local config = require("rt.config")
local mw = require("rt.middleware")

local A = json.array

describe("rt.validate", function()
  it("coerces a scalar to text only where the spec says so", function()
    local strict, loose = { type = "string" }, { type = "string", coerce = true }
    local v, p, msg = validate.value(strict, 5, "k")
    assert.is_nil(v)
    assert.equal("k", p)
    assert.equal("expected a string, got number 5", msg)
    assert.equal("5", validate.value(loose, 5, "k"))
    assert.equal("true", validate.value(loose, true, "k"))
    -- a table is never text
    local _, _, m2 = validate.value(loose, A({ "a" }), "k")
    assert.equal("expected a string, got a list", m2)
  end)

  it("config strings coerce, middleware strings do not (the same validator)", function()
    local cfg = assert(config.validate({ ["api-keys"] = A({ 12345 }),
      ["claude-header-defaults"] = { timeout = 600 } }, {}, "c.yaml"))
    assert.equal("12345", cfg["api-keys"][1])
    assert.equal("600", cfg["claude-header-defaults"].timeout)
    local chain, err = mw.load({ lua = { middleware = A({ { name = "request_id", header = 5 } }) } }, {})
    assert.is_nil(chain)
    assert.equal("config.yaml: lua.middleware.1.header: expected a string, got number 5", err)
  end)

  it("validates a default like a given value and copies it", function()
    local spec = { type = "record", default = {}, fields = {
      n = { type = "integer", default = 3 },
      l = { type = "list", items = { type = "string" }, default = {} },
    } }
    local a = assert(validate.value(spec, nil, "r"))
    assert.equal(3, a.n)
    assert.is_true(json.is_array(a.l))
    local b = assert(validate.value(spec, nil, "r"))
    assert.are_not.equal(a.l, b.l)
    -- optional: absent stays absent
    spec.optional = true
    assert.is_nil((validate.value(spec, nil, "r")))
  end)

  it("unknown record fields: collected and kept, or an error", function()
    local spec = { type = "record", fields = { a = { type = "integer" } } }
    local seen = {}
    local out = assert(validate.value(spec, { a = 1, zz = 2, b = 3 }, "top", { unknown = seen }))
    assert.same({ "top.b", "top.zz" }, seen)
    assert.equal(2, out.zz)
    local v, p, msg = validate.value(spec, { a = "x", b = 3 }, "top", { unknown = "error" })
    assert.is_nil(v)
    assert.equal("top.b", p)
    assert.equal("unknown field", msg)
  end)

  it("enum values after coercion, strings quoted", function()
    local spec = { type = "string", coerce = true, enum = { "1", "2" } }
    assert.equal("2", validate.value(spec, 2, "e"))
    local _, _, msg = validate.value(spec, "x", "e")
    assert.equal('expected one of 1, 2, got "x"', msg)
    local _, _, m2 = validate.value({ type = "integer", enum = { 1, 2 } }, 3, "e")
    assert.equal("expected one of 1, 2, got number 3", m2)
  end)

  it("names the line of the path or its nearest parent", function()
    local lines = { a = 1, ["a.b"] = 4 }
    assert.equal("f.yaml:4: a.b.c: bad", validate.message("f.yaml", lines, "a.b.c", "bad"))
    assert.equal("f.yaml:1: a.x: bad", validate.message("f.yaml", lines, "a.x", "bad"))
    assert.equal("f.yaml: z: bad", validate.message("f.yaml", lines, "z", "bad"))
    assert.equal("f.yaml: (top): bad", validate.message("f.yaml", lines, "", "bad"))
  end)

  it("config's own schema is a well-formed spec", function()
    assert.is_true(validate.check_spec(config.schema, "schema"))
    local ok, err = validate.check_spec({ type = "map" }, "schema.x")
    assert.is_nil(ok)
    assert.equal("field 'schema.x.values' is required for a map", err)
  end)
end)
