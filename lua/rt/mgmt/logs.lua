-- rt.mgmt.logs: the main log written with logging-to-file (logs/main.log
-- beside config.yaml, rotated at 10 MiB into main-<unix>.log, capped by
-- logs-max-total-size-mb; runtime/core/cpx_log.c), in CLIProxyAPI v6's shapes:
--   GET    /logs?after=<unix>&limit=N  {"lines": [...], "line-count": N, "latest-timestamp": T}
--   DELETE /logs                       {"success": true, "message": ..., "removed": N}
local cpx = require("cpx")
local json = require("lib.json")
local access = require("rt.access")

local tonumber = tonumber
local os_time = os.time
local floor = math.floor
local tostring = tostring

local mgmt = cpx.mgmt
local query_param = access.query_param

-- Lines handed out at most (the file is at most 10 MiB before rotating).
local MAX_LINES = 10000

local _M = { name = "logs" }

local function log_dir(ctx)
  local path = ctx.mgmt.config_path() or "config.yaml"
  local dir = path:match("^(.*)/[^/]*$") or "."
  return dir .. "/logs"
end
_M.log_dir = log_dir

-- "[2026-12-07 08:07:58] ..." -> epoch seconds (the log writes local time).
local function stamp(line)
  local y, mo, d, h, mi, s = line:match("^%[(%d%d%d%d)%-(%d%d)%-(%d%d) (%d%d):(%d%d):(%d%d)%]")
  if not y then return nil end
  return os_time({ year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h),
                   min = tonumber(mi), sec = tonumber(s) })
end
_M.stamp = stamp

local function get_logs(req, ctx)
  local after = tonumber(query_param(req.query, "after") or "") or 0
  local limit = tonumber(query_param(req.query, "limit") or "") or MAX_LINES
  limit = floor(limit)
  if limit < 1 or limit > MAX_LINES then limit = MAX_LINES end
  local text = mgmt.read_file(log_dir(ctx) .. "/main.log") or ""
  local picked, latest = {}, 0
  local last_ts = nil
  for line in text:gmatch("[^\n]+") do
    -- a line without its own time (a traceback) belongs to the one before
    local t = stamp(line) or last_ts
    last_ts = t
    if t and t > after then
      picked[#picked + 1] = line
      if t > latest then latest = t end
    end
  end
  local out = json.array()
  local first = #picked - limit + 1
  if first < 1 then first = 1 end
  for i = first, #picked do out[#out + 1] = picked[i] end
  return 200, { lines = out, ["line-count"] = #out, ["latest-timestamp"] = latest }
end

local function delete_logs(req, ctx)
  local n, err = mgmt.clear_logs(log_dir(ctx))
  if not n then
    if tostring(err):find("No such file", 1, true) then
      return 200, { success = true, message = "Logs cleared successfully", removed = 0 }
    end
    return 500, { error = "failed to clear logs", message = err }
  end
  return 200, { success = true, message = "Logs cleared successfully", removed = n }
end

_M.routes = {
  { method = "GET", path = "/logs", handler = get_logs },
  { method = "DELETE", path = "/logs", handler = delete_logs },
}

return _M
