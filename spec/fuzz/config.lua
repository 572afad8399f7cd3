-- fuzz driver (runtime/fuzz/fuzz_lua.c, FUZZ_YAML): the config validator on
-- whatever the YAML loader made of the input. It answers a config or
-- nil, "file[:line]: message"; it never raises.
local config = require("rt.config")

return function(doc, lines)
  if type(doc) ~= "table" then return end
  local cfg, err = config.validate(doc, lines, "fuzz.yaml")
  if cfg == nil then
    assert(type(err) == "string" and err:find("^fuzz%.yaml"), "error without the file name: " .. tostring(err))
  else
    assert(type(cfg) == "table")
  end
end
