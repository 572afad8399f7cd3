-- rt.mgmt.system: GET /latest-version. CLIProxyAPI asks GitHub for its
-- latest release; cliproxy does not reach the internet on its own, so it
-- answers its own version with "no update information" instead of failing
-- (a panel then shows it as current):
--   {"latest-version": "<own>", "current-version": "<own>",
--    "update-available": false, "message": "..."}
local cpx = require("cpx")
local json = require("lib.json")

local _M = { name = "system" }

local function latest(_, _)
  local v = cpx.mgmt.version
  return 200, json.object({
    { "latest-version", v }, { "current-version", v }, { "update-available", false },
    { "message", "no update information: cliproxy does not check for releases" },
  })
end

_M.routes = {
  { method = "GET", path = "/latest-version", handler = latest },
}

return _M
