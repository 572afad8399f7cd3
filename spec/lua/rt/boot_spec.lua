-- rt.boot checks every provider field the engine reads, naming file and field.
local boot = require("rt.boot")

local function prov(over)
  local p = { name = "x", format = "openai_chat", prepare = function() end }
  for k, v in pairs(over) do p[k] = v end
  return p
end

describe("rt.boot.check_provider", function()
  local bad = {
    { prov({ name = 1 }), "field 'name' must be a string, not a number" },
    { prov({ format = "grpc" }), "field 'format' must be one of openai_chat, openai_responses, claude, gemini" },
    { prov({ prepare = "yes" }), "field 'prepare' must be a function, not a string" },
    { prov({ classify = {} }), "field 'classify' must be a function, not a table" },
    { prov({ fixup = true }), "field 'fixup' must be a function, not a boolean" },
    { prov({ force_stream = "true" }), "field 'force_stream' must be a boolean, not a string" },
    { prov({ fast_path = 1 }), "field 'fast_path' must be a boolean, not a number" },
    { prov({ raw_ok = true }), "field 'raw_ok' must be a function, not a boolean" },
    { prov({ response_fixup = "x" }), "field 'response_fixup' must be a function, not a string" },
    { prov({ stream_fixup = {} }), "field 'stream_fixup' must be a function, not a table" },
    { prov({ error_status = 429 }), "field 'error_status' must be a function, not a number" },
    { prov({ relay = true }), "field 'relay' must be a table" },
    { prov({ relay = { unles = {} } }),
      "field 'relay.unles' must be one of unless, require, at_most, headers, lua_headers, account" },
    { prov({ relay = { unless = { "betas", 3 } } }),
      "field 'relay.unless[2]' must be a member name or a list of member names" },
    { prov({ relay = { require = "max_tokens" } }), "field 'relay.require' must be a list of member names" },
    { prov({ relay = { at_most = { { "_control", -1 } } } }),
      "field 'relay.at_most[1]' must be { text, count } with a non-empty text and a whole count" },
    { prov({ relay = { headers = { { "anthropic-version" } } } }),
      "field 'relay.headers[1]' must be { client-header, Upstream-Header } (header names)" },
    { prov({ relay = { lua_headers = { 1 } } }), "field 'relay.lua_headers' must be a list of header names" },
    { prov({ relay = { account = true } }), "field 'relay.account' must be a function" },
    { "not a table", "module must return a table" },
  }
  for i, c in ipairs(bad) do
    it("refuses case " .. i .. ": " .. c[2], function()
      local ok, err = boot.check_provider("x", c[1])
      assert.is_nil(ok)
      assert.equal("providers/x.lua: " .. c[2], err)
    end)
  end

  it("refuses a missing required field", function()
    local p = prov({})
    p.prepare = nil
    local ok, err = boot.check_provider("x", p)
    assert.is_nil(ok)
    assert.equal("providers/x.lua: field 'prepare' must be a function, not a nil", err)
  end)

  it("accepts every built-in provider", function()
    for _, name in ipairs({ "openai_compat", "claude", "gemini", "codex", "vertex", "gemini_cli", "antigravity" }) do
      assert.is_true(boot.check_provider(name, require("providers." .. name)))
    end
  end)
end)
