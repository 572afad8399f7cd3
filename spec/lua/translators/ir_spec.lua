-- lib.ir and lib.schema units.
local ir = require("lib.ir")
local schema = require("lib.schema")
local json = require("lib.json")

describe("lib.ir", function()
  it("converts levels and budgets by the table", function()
    local cases = {
      { "none", 0 }, { "auto", -1 }, { "minimal", 512 }, { "low", 1024 }, { "medium", 8192 },
      { "high", 24576 }, { "xhigh", 32768 }, { "max", 128000 },
    }
    for _, c in ipairs(cases) do assert.equal(c[2], ir.level_to_budget(c[1])) end
    local back = { { 0, "none" }, { -1, "auto" }, { 1, "minimal" }, { 512, "minimal" }, { 513, "low" },
                   { 1024, "low" }, { 8192, "medium" }, { 8193, "high" }, { 24576, "high" },
                   { 24577, "xhigh" }, { 200000, "xhigh" } }
    for _, c in ipairs(back) do assert.equal(c[2], ir.budget_to_level(c[1])) end
  end)

  it("parses model suffixes", function()
    local cases = {
      { "gpt-5(high)", "gpt-5", { effort = "high" } },
      { "claude-sonnet-4-5(16384)", "claude-sonnet-4-5", { budget = 16384 } },
      { "gemini-2.5-pro(-1)", "gemini-2.5-pro", { effort = "auto", budget = -1 } },
      { "m(0)", "m", { effort = "none", budget = 0 } },
      { "m(XHigh)", "m", { effort = "xhigh" } },
      { "m(bogus)", "m(bogus)", nil },
      { "plain", "plain", nil },
    }
    for _, c in ipairs(cases) do
      local base, t = ir.parse_model(c[1])
      assert.equal(c[2], base)
      assert.same(c[3], t)
    end
  end)

  it("maps stop reasons", function()
    assert.equal("end_turn", ir.stop_from_openai("stop"))
    assert.equal("max_tokens", ir.stop_from_openai("length"))
    assert.equal("tool_use", ir.stop_from_openai("tool_calls"))
    assert.equal("tool_calls", ir.stop_to_openai("tool_use"))
    assert.equal("stop", ir.stop_to_openai("stop_sequence"))
    assert.equal("length", ir.stop_to_openai("max_tokens"))
    assert.equal("end_turn", ir.stop_to_claude("content_filter"))
    assert.equal("max_tokens", ir.stop_from_gemini("MAX_TOKENS"))
    assert.equal("content_filter", ir.stop_from_gemini("SAFETY"))
    assert.equal("MAX_TOKENS", ir.stop_to_gemini("max_tokens"))
  end)

  it("tags signatures by origin", function()
    local sig = { format = "gemini", value = "abc" }
    assert.equal("abc", ir.sig_out(sig, "gemini"))
    local wrapped = ir.sig_out(sig, "claude")
    assert.equal("cpx1.gemini.abc", wrapped)
    assert.same(sig, ir.sig_in(wrapped, "claude"))
    assert.same({ format = "claude", value = "zz" }, ir.sig_in("zz", "claude"))
    assert.is_nil(ir.sig_for(sig, "claude"))
    assert.equal("abc", ir.sig_for(sig, "gemini"))
  end)

  it("makes ids", function()
    local id = ir.new_id("toolu_")
    assert.truthy(id:match("^toolu_[%w]+$"))
    assert.equal(30, #id)
    assert.equal("x1", ir.new_id("x", { id_gen = function(p) return p .. "1" end }))
  end)

  it("parses data urls", function()
    assert.same({ "image/png", "AAA=" }, { ir.parse_data_url("data:image/png;base64,AAA=") })
    assert.is_nil(ir.parse_data_url("https://x/y.png"))
  end)
end)

describe("lib.schema", function()
  it("cleans schemas for Gemini", function()
    local src = json.decode([[{
      "$schema": "x", "type": "object", "title": "T", "additionalProperties": false,
      "properties": {
        "a": {"type": ["string", "null"], "minLength": 2, "description": "A"},
        "b": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"c": {"const": 3}}}]},
        "d": {"allOf": [{"type": "object", "properties": {"x": {"type": "integer"}}}, {"required": ["x", "y"]}]},
        "e": {"enum": [1, "two", true]},
        "f": {"$ref": "#/$defs/F"},
        "g": {"type": "array"},
        "x-ext": {"type": "string", "x-foo": 1}
      },
      "required": ["a", "zz"],
      "$defs": {"F": {"type": "string"}}
    }]])
    local before = json.encode(src)
    local out = schema.clean_for_gemini(src)
    assert.equal(before, json.encode(src)) -- input untouched
    assert.is_nil(out["$schema"]); assert.is_nil(out.title); assert.is_nil(out.additionalProperties)
    assert.is_nil(out["$defs"])
    assert.same({ "a" }, out.required)
    assert.equal("string", out.properties.a.type)
    assert.equal("A (minLength: 2)", out.properties.a.description)
    assert.equal("object", out.properties.b.type)
    assert.same({ "3" }, out.properties.b.properties.c.enum)
    assert.same({ "x" }, out.properties.d.required)
    assert.same({ "1", "two", "true" }, out.properties.e.enum)
    assert.equal("string", out.properties.e.type)
    assert.truthy(out.properties.f.description:find("#/$defs/F", 1, true))
    assert.same({ type = "string" }, out.properties.g.items)
    assert.is_nil(out.properties["x-ext"]["x-foo"])
    assert.same({ type = "object", properties = {} }, schema.clean_for_gemini(nil))
  end)

  it("sanitises names with a reverse map", function()
    local m = schema.name_mapper({ max = 64 })
    assert.equal("a_b_c", m:name("a b/c"))
    assert.equal("a b/c", m:orig("a_b_c"))
    assert.equal("_1tool", m:name("1tool"))
    local long = string.rep("x", 80)
    assert.equal(64, #m:name(long))
    assert.equal(long, m:orig(m:name(long)))
    assert.equal("Read", m:name("Read"))
    assert.equal("unknown", m:orig("unknown"))
    -- collisions stay unique
    local a, b = m:name("p q"), m:name("p/q")
    assert.are_not.equal(a, b)
    assert.equal("p/q", m:orig(b))
    local c = schema.name_mapper({ max = 64, mcp_shorten = true })
    local mcp = "mcp__" .. string.rep("server", 12) .. "__do_thing"
    assert.equal("mcp__do_thing", c:name(mcp))
    assert.equal(mcp, c:orig("mcp__do_thing"))
  end)
end)
