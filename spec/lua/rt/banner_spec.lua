-- rt.banner: the start-up lines, from the models served and the config.
local banner = require("rt.banner")

local function app(models, cfg)
  return { config = cfg or { ["api-keys"] = { "k" } },
           registry = { list = function() return models end } }
end

describe("rt.banner.lines", function()
  it("picks a model of each CLI's own provider when one is served", function()
    local lines = banner.lines(app({ { id = "gpt-5", provider = "codex" }, { id = "gem", provider = "gemini" },
                                     { id = "sonnet", provider = "claude" } }), "http://h:1")
    local text = table.concat(lines, "\n")
    assert.matches("models %(3%): gem, gpt%-5, sonnet", text)
    assert.matches("ANTHROPIC_MODEL=sonnet claude", text, 1, true)
    assert.matches("model gpt-5", text, 1, true)
    assert.is_nil(text:find("cliproxy login", 1, true)) -- accounts are there already
    assert.matches("gemini -m gem", text, 1, true)
  end)

  it("lists at most 12 models and says how many there are", function()
    local models = {}
    for i = 1, 20 do models[i] = { id = string.format("m%02d", i), provider = "openai_compat" } end
    local text = table.concat(banner.lines(app(models), "http://h:1"), "\n")
    assert.matches("models (20): m01, m02", text, 1, true)
    assert.matches("m12, ... (20 in all; GET /v1/models)", text, 1, true)
    assert.is_nil(text:find("m13", 1, true))
  end)

  it("never prints a key, and warns when access is open", function()
    local text = table.concat(banner.lines(app({}, { ["api-keys"] = { "sk-secret" } }), "http://h:1"), "\n")
    assert.is_nil(text:find("sk-secret", 1, true))
    assert.matches("no models are served yet", text, 1, true)
    assert.matches("cliproxy login claude | cliproxy login codex [--device]", text, 1, true)
    assert.is_nil(text:find("every client is accepted", 1, true))
    text = table.concat(banner.lines(app({}, { ["api-keys"] = {} }), "http://h:1"), "\n")
    assert.matches("every client is accepted", text, 1, true)
  end)

  it("names the control panel, and how to turn it on", function()
    local off = table.concat(banner.lines(app({}, { ["api-keys"] = {} }), "http://h:1"), "\n")
    assert.matches("control panel: http://h:1/management.html (set remote-management.secret-key", off, 1, true)
    local on = table.concat(banner.lines(app({}, { ["remote-management"] = { ["secret-key"] = "$2b$x" } }),
                                         "http://h:1"), "\n")
    assert.matches("control panel: http://h:1/management.html\n", on .. "\n", 1, true)
    assert.is_nil(on:find("$2b$x", 1, true))
    local none = banner.lines(app({}, { ["remote-management"] = { ["disable-control-panel"] = true } }), "http://h:1")
    assert.is_nil(table.concat(none, "\n"):find("control panel", 1, true))
  end)

  it("refuses misuse", function()
    assert.has_error(function() banner.lines(nil, "x") end)
  end)
end)
