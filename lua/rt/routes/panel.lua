-- rt.routes.panel: what the browser reaches on the main port without a
-- client key: the web control panel's static files (rt.panel) and the
-- OAuth starters' callbacks (rt.mgmt.oauth). The management API itself is
-- mounted by rt.server (/v0/management, its own keys and errors).
local panel = require("rt.panel")
local mgmt_oauth = require("rt.mgmt.oauth")

local ipairs = ipairs

local _M = {}

local function panel_file(app, req, info)
  return panel.serve(app.config, req, info)
end
local panel_route = { panel_file, public = true }

local routes = {
  ["GET /management.html"] = panel_route,
  ["HEAD /management.html"] = panel_route,
}
-- The browser's redirect comes without a key; only a state a starter
-- handed out is acted on.
for _, p in ipairs(mgmt_oauth.callback_paths()) do routes["GET " .. p] = { mgmt_oauth.callback, public = true } end
_M.routes = routes

_M.prefixes = {
  { "^/panel/", panel_route },
}

return _M
