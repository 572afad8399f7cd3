-- rt.mgmt.reqlogs: the per-request log files rt.reqlog writes, in
-- CLIProxyAPI v6's shapes:
--   GET /request-error-logs          {"files": [{name, size, modified}]}, newest first
--   GET /request-error-logs/:name    one error log (error-*.log), as a download
--   GET /request-log-by-id/:id       the newest log (request or error) of that request id
-- Names are plain *.log names checked in C (no path, no dot first, no
-- symlink); the files are read in the threadpool.
local cpx = require("cpx")
local json = require("lib.json")
local reqlog = require("rt.reqlog")

local ipairs = ipairs
local floor = math.floor

local _M = { name = "reqlogs" }

local function dir(ctx)
  return reqlog.log_dir(ctx.config or (ctx.app and ctx.app.config))
end

local function list(_, ctx)
  local files = json.array()
  local v = cpx.reqlog.list(dir(ctx), "error-")
  for _, f in ipairs(v or {}) do
    files[#files + 1] = json.object({ { "name", f.name }, { "size", f.size }, { "modified", floor(f.modified) } })
  end
  return 200, { files = files }
end

local function attachment(text, name)
  return 200, text, { ["Content-Type"] = "text/plain; charset=utf-8",
                      ["Content-Disposition"] = 'attachment; filename="' .. name .. '"' }
end

local function download(req, ctx)
  local name = req.params.name or ""
  if name:sub(1, 6) ~= "error-" then return 400, { error = "invalid log file name" } end
  local text = cpx.reqlog.read(dir(ctx), name)
  if not text then return 404, { error = "log file not found" } end
  return attachment(text, name)
end

local function by_id(req, ctx)
  local id = req.params.id or ""
  if not id:match("^[A-Za-z0-9]+$") or #id > 64 then return 400, { error = "invalid request id" } end
  local text, name = cpx.reqlog.find(dir(ctx), id)
  if not text then return 404, { error = "log not found for request id " .. id } end
  return attachment(text, name)
end

_M.routes = {
  { method = "GET", path = "/request-error-logs", handler = list },
  { method = "GET", path = "/request-error-logs/:name", handler = download },
  { method = "GET", path = "/request-log-by-id/:id", handler = by_id },
}

return _M
