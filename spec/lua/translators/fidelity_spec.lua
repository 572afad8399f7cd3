-- Issue 12: translation changes nothing it does not have to. Key order and
-- number text of what the client sent reach the upstream bytes unchanged,
-- whatever the hash seed (checked on the encoded upstream body).
package.path = "./lua/?/init.lua;" .. package.path
local tr = require("translators")
local json = require("lib.json")

local fixture = require("fixture")
local function load(name) return fixture.json("translators/fidelity/" .. name) end

local function new_ctx()
  local n = 0
  return { model = "client-model", upstream_model = "up-model", now = 1700000000,
           id_gen = function(p) n = n + 1; return p .. "id" .. n end }
end

local function upstream_bytes(client, up)
  local out, err = tr.request(client, up, load(client .. ".json"), new_ctx())
  assert.is_nil(err)
  return assert(json.encode(out))
end

local PROPS = '"properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"'
local function has(s, needle)
  assert(s:find(needle, 1, true), "missing " .. needle .. " in " .. s)
end

-- client format, upstream format, byte strings the upstream body must hold
local cases = {
  { "claude", "openai_chat", {
    PROPS .. ',"minimum":0},"reasoning":{"type":"string"},"answer":{"type":"object",'
      .. '"properties":{"why":{"type":"string"},"value":{"type":"number"}}}}',
    '"arguments":"{\\"n\\":12345678901234567891,\\"x\\":1.10}"',
  } },
  { "claude", "openai_responses", {
    PROPS,
    '"arguments":"{\\"n\\":12345678901234567891,\\"x\\":1.10}"',
  } },
  { "claude", "gemini", {
    -- the Gemini schema cleaner rebuilds the schema but keeps property order
    '"properties":{"zeta":{',
    '"args":{"n":12345678901234567891,"x":1.10}',
  } },
  { "openai_chat", "claude", {
    PROPS .. '},"reasoning":{"type":"string"},"answer":{"type":"string"}}',
    -- OpenAI arguments are a JSON string, decoded to the Anthropic input
    '"input":{"zeta":"z","n":12345678901234567891,"x":1.10,"alpha":-0}',
  } },
  { "openai_chat", "gemini", {
    '"args":{"zeta":"z","n":12345678901234567891,"x":1.10,"alpha":-0}',
  } },
}

describe("translation fidelity", function()
  for _, c in ipairs(cases) do
    it(c[1] .. " -> " .. c[2] .. " keeps key order and number text", function()
      local s = upstream_bytes(c[1], c[2])
      for _, needle in ipairs(c[3]) do has(s, needle) end
      -- the same every time: nothing depends on hash order
      assert.equal(s, upstream_bytes(c[1], c[2]))
    end)
  end

  it("same format passes the body through unchanged", function()
    local s = fixture.raw("translators/fidelity/claude.json"):gsub("\n$", "")
    local body = json.decode(s)
    assert.equal(s, json.encode(body))
    assert.equal(s, json.encode(json.deep_copy(body)))
  end)
end)
