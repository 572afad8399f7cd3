-- fuzz driver (runtime/fuzz/fuzz_lua.c): a credential file's text through
-- what reads it: the registry (which models an auth-dir file serves) and
-- the refresh arithmetic (expiry, due time, the rotated document). Any text
-- is skipped with a message or used; nothing raises.
local json = require("lib.json")
local config = require("rt.config")
local registry = require("rt.registry")
local oauth = require("rt.oauth")

local cfg = assert(config.validate({}, {}, "fuzz.yaml"))
local facts = { claude = assert(oauth.facts("claude", cfg)), codex = assert(oauth.facts("codex", cfg)) }

return function(s)
  local doc = json.decode(s)
  local t = type(doc) == "table" and type(doc.type) == "string" and doc.type or ""
  local disabled = type(doc) == "table" and doc.disabled == true
  local reg = registry.build(cfg, { { name = "fuzz-" .. t .. ".json", type = t, text = s, disabled = disabled } })
  assert(type(reg) == "table")
  local f = facts[t]
  if f and type(doc) == "table" then
    local due = oauth.due(f, doc, 1e9)
    assert(type(due) == "number", "due is not a number")
    local nd = oauth.credential(f, { access_token = "a", expires_in = 60 }, doc, 1e9)
    assert(json.decode(oauth.encode(nd)), "rotated document does not encode")
    assert(type(oauth.file_name(f, nd)) == "string")
  end
end
