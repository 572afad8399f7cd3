-- rt.access_log: the access log as a reader of the request record.
--
-- Every request a handler serves ends in one record (rt.record), on the
-- Lua path and on the C lane alike; this subscriber names the request to
-- C (cpx.access_log), which writes its line from what the server knows:
-- status sent, bytes in and out, client address, "| fast" for the lane,
-- "| client closed" when the client left (runtime/net/cpx_access_log.h).
-- Answers no handler saw (400/408/413/431/503 from the HTTP layer) are
-- written by C alone.
local cpx = require("cpx")
local record = require("rt.record")

local type = type
local access_log = cpx.access_log

local _M = {}

local function subscriber(rec)
  local id = rec.request_id
  if type(id) == "string" then access_log(id) end
end
_M.subscriber = subscriber

function _M.configure(app)
  -- Outside a server (busted, `cliproxy check`) there is no log to write.
  if access_log then record.subscribe("access_log", subscriber, "access_log") end
  return app
end

return _M
