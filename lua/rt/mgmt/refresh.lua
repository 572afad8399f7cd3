-- rt.mgmt.refresh: the refresh engine's per-account state for the
-- management API (a route module of rt.management: append "refresh" to its
-- MODULES to mount it).
--
--   GET /v0/management/oauth-refresh
--     -> { accounts = { [file] = { type, email, last_refresh, expires,
--          next_due, last_error, error_kind, needs_login, failures,
--          retry_at } } }   (times in epoch seconds)
--
-- The state is process-wide (cpx.shared), so any worker answers the same.
local refresh = require("rt.refresh")

local function list()
  return 200, { accounts = refresh.state() }
end

return {
  name = "refresh",
  routes = {
    { method = "GET", path = "/oauth-refresh", handler = list },
  },
}
