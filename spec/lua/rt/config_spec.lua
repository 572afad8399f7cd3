-- rt.config: the schema validator. Errors name file, line and key; defaults
-- are filled; CLIProxyAPI's legacy keys are migrated.
local json = require("lib.json")
local config = require("rt.config")

local A = json.array

local cases = {
  { name = "port as a string", doc = { port = "abc" }, lines = { port = 3 },
    err = "^cfg%.yaml:3: port: expected an integer, got string \"abc\"$" },
  { name = "port out of range", doc = { port = 70000 }, lines = { port = 2 },
    err = "^cfg%.yaml:2: port: must be at most 65535, got 70000$" },
  { name = "api-keys not a list", doc = { ["api-keys"] = "k" },
    err = "^cfg%.yaml: api%-keys: expected a list, got string" },
  { name = "openai-compatibility without base-url",
    doc = { ["openai-compatibility"] = A({ { name = "x" } }) },
    lines = { ["openai-compatibility.1"] = 7 },
    err = "openai%-compatibility%.1%.base%-url: is required" },
  { name = "bad base-url", doc = { ["openai-compatibility"] = A({ { name = "x", ["base-url"] = "ftp://x" } }) },
    lines = { ["openai-compatibility.1.base-url"] = 9 },
    err = "^cfg%.yaml:9: openai%-compatibility%.1%.base%-url: expected an http:// or https:// URL$" },
  { name = "bad proxy-url", doc = { ["proxy-url"] = "gopher://x" },
    err = "proxy%-url: expected http://, https://, socks5://" },
  { name = "routing strategy", doc = { routing = { strategy = "random" } },
    err = "routing%.strategy: expected one of round%-robin, fill%-first, weighted%-round%-robin" },
  { name = "tls without cert", doc = { tls = { enable = true } }, lines = { ["tls.enable"] = 4 },
    err = "^cfg%.yaml:4: tls: enable needs both cert and key$" },
  { name = "debug not boolean", doc = { debug = "yes" }, err = "debug: expected true or false" },
  { name = "limits water marks", doc = { limits = { ["write-buffer-low-bytes"] = 300000 } },
    err = "write%-buffer%-low%-bytes: must be below" },
  { name = "workers zero", doc = { workers = 0 }, err = "workers: must be at least 1" },
  { name = "max-connections-per-ip negative", doc = { limits = { ["max-connections-per-ip"] = -1 } },
    err = "limits%.max%-connections%-per%-ip: must be at least 0, got %-1" },
  { name = "a cloak mode out of the list",
    doc = { ["claude-api-key"] = A({ { ["api-key"] = "k", cloak = { mode = "sometimes" } } }) },
    lines = { ["claude-api-key.1.cloak.mode"] = 12 },
    err = "^cfg%.yaml:12: claude%-api%-key%.1%.cloak%.mode: expected one of auto, always, never, got \"sometimes\"$" },
  { name = "cloak sensitive-words not a list",
    doc = { ["claude-api-key"] = A({ { ["api-key"] = "k", cloak = { ["sensitive-words"] = "x" } } }) },
    err = "claude%-api%-key%.1%.cloak%.sensitive%-words: expected a list" },
  { name = "claude-header-defaults with a list", doc = { ["claude-header-defaults"] = { os = A({ "a" }) } },
    err = "claude%-header%-defaults%.os: expected a string, got a list" },
  { name = "stabilize-device-profile not boolean",
    doc = { ["claude-header-defaults"] = { ["stabilize-device-profile"] = "yes" } },
    err = "claude%-header%-defaults%.stabilize%-device%-profile: expected true or false" },
}

describe("rt.config cloak", function()
  it("leaves an absent cloak block absent and keeps a present one", function()
    local cfg = assert(config.validate({ ["claude-api-key"] = A({ { ["api-key"] = "a" },
      { ["api-key"] = "b", cloak = { mode = "always", ["sensitive-words"] = A({ "w" }) } } }) }, {}, "c.yaml"))
    assert.is_nil(cfg["claude-api-key"][1].cloak)
    assert.are.equal("always", cfg["claude-api-key"][2].cloak.mode)
    assert.are.same({ "w" }, cfg["claude-api-key"][2].cloak["sensitive-words"])
    assert.is_false(cfg["claude-api-key"][2].cloak["strict-mode"])
  end)
end)

describe("rt.config.validate", function()
  for _, c in ipairs(cases) do
    it("rejects " .. c.name, function()
      local cfg, err = config.validate(c.doc, c.lines or {}, "cfg.yaml")
      assert.is_nil(cfg)
      assert.matches(c.err, err)
    end)
  end

  it("fills defaults for an empty document", function()
    local cfg = assert(config.validate({}, {}, "cfg.yaml"))
    assert.are.equal(8317, cfg.port)
    assert.are.equal("", cfg.host)
    assert.are.equal(3, cfg["request-retry"])
    assert.are.equal("round-robin", cfg.routing.strategy)
    assert.are.equal(65536, cfg.limits["max-header-bytes"])
    assert.are.equal(33554432, cfg.limits["max-body-bytes"])
    assert.are.equal(0, cfg.limits["max-connections-per-ip"]) -- off
    assert.are.equal(1, cfg.workers)
    assert.is_true(json.is_array(cfg["api-keys"]))
    assert.are.equal("[]", json.encode(cfg["api-keys"]))
  end)

  it("keeps a full CLIProxyAPI-style config", function()
    local cfg = assert(config.validate({
      host = "0.0.0.0", port = 8080, ["api-keys"] = A({ "a", "b" }), debug = true,
      ["openai-compatibility"] = A({ {
        name = "openrouter", ["base-url"] = "https://openrouter.ai/api/v1",
        headers = { ["X-Title"] = "t" },
        ["api-key-entries"] = A({ { ["api-key"] = "k1", ["proxy-url"] = "socks5://127.0.0.1:1080" } }),
        models = A({ { name = "up", alias = "down" } }),
      } }),
      ["claude-api-key"] = A({ { ["api-key"] = "sk-ant", priority = 2 } }),
    }, {}, "cfg.yaml"))
    local e = cfg["openai-compatibility"][1]
    assert.are.equal("down", e.models[1].alias)
    assert.are.equal("socks5://127.0.0.1:1080", e["api-key-entries"][1]["proxy-url"])
    assert.are.equal(2, cfg["claude-api-key"][1].priority)
  end)

  it("migrates legacy api-keys of an openai-compatibility entry", function()
    local cfg = assert(config.validate({ ["openai-compatibility"] = A({
      { name = "x", ["base-url"] = "http://h/v1", ["api-keys"] = A({ "k1", "k2" }) } }) }, {}, "c"))
    local ents = cfg["openai-compatibility"][1]["api-key-entries"]
    assert.are.equal(2, #ents)
    assert.are.equal("k2", ents[2]["api-key"])
  end)

  it("migrates generative-language-api-key into gemini-api-key", function()
    local cfg = assert(config.validate({ ["generative-language-api-key"] = A({ "AIzaX" }) }, {}, "c"))
    assert.are.equal("AIzaX", cfg["gemini-api-key"][1]["api-key"])
  end)

  it("validates ampcode and migrates the amp-* keys of before v6 into it", function()
    local cfg = assert(config.validate({ ["amp-upstream-url"] = "https://old.example",
      ["amp-model-mappings"] = A({ { from = "a", to = "b" } }),
      ampcode = { ["upstream-url"] = "https://new.example", ["upstream-api-key"] = "k" } }, {}, "c"))
    assert.are.equal("https://new.example", cfg.ampcode["upstream-url"], "ampcode's own value wins")
    assert.are.equal("b", cfg.ampcode["model-mappings"][1].to)
    assert.are.equal("k", cfg.ampcode["upstream-api-key"])
    assert.is_false(cfg.ampcode["force-model-mappings"])
    assert.is_nil(cfg["amp-upstream-url"])
    local _, err = config.validate({ ampcode = { ["model-mappings"] = A({ { from = "a" } }) } }, {}, "c")
    assert.matches("ampcode.model-mappings.1.to: is required", err, 1, true)
    _, err = config.validate({ ampcode = { ["upstream-url"] = "ftp://x" } }, {}, "c")
    assert.matches("ampcode.upstream-url", err, 1, true)
  end)

  it("reports unknown keys without failing", function()
    local cfg = assert(config.validate({ ["no-such-key"] = 1, tls = { bogus = true } }, {}, "c"))
    table.sort(cfg._unknown)
    assert.are.same({ "no-such-key", "tls.bogus" }, cfg._unknown)
  end)
end)
