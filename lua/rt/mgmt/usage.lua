-- rt.mgmt.usage: the usage routes of the management API (contract 2:
-- mounted by rt.management under /v0/management after its auth checks).
--
--   GET  /usage          CLIProxyAPI's document (fact sheet 6); with
--                        ?group_by=hour|day|model|account|client_key|provider
--                        (comma-separated, up to 3) the grouped sums instead;
--                        ?from= / ?to= (RFC 3339 or epoch seconds) bound the
--                        range, ?details=N the newest details listed (1000)
--   GET  /usage/export   every record in the range, CLIProxyAPI's export shape
--   POST /usage/import   an export (CLIProxyAPI's or ours), merged by id:
--                        {added, skipped, total_requests, failed_requests}
-- (usage-statistics-enabled GET/PUT/PATCH is one of rt.mgmt.config's
-- scalar settings.)
local json = require("lib.json")
local usage = require("rt.usage")
local access = require("rt.access")

local type = type
local tonumber = tonumber
local query_param = access.query_param

local function bad(msg) return 400, { error = msg } end

local function open()
  local st = usage.stats()
  return st and st.open
end

-- The document when nothing is stored (usage off): the same shape, zeros.
local function empty()
  return { usage = { total_requests = 0, success_count = 0, failure_count = 0, total_tokens = 0, apis = {},
                     requests_by_day = {}, requests_by_hour = {}, tokens_by_day = {}, tokens_by_hour = {} },
           failed_requests = 0, enabled = false }
end

local function range(q)
  local from, to = query_param(q, "from"), query_param(q, "to")
  if from and not usage.parse_time(from) then return nil, "from: expected RFC 3339 or epoch seconds" end
  if to and not usage.parse_time(to) then return nil, "to: expected RFC 3339 or epoch seconds" end
  return { from = from, to = to }
end

local function get_usage(req)
  local r, err = range(req.query)
  if not r then return bad(err) end
  local group_by = query_param(req.query, "group_by")
  if not open() then
    if group_by then return 200, { group_by = json.array(), rows = json.array(), enabled = false } end
    return 200, empty()
  end
  if group_by and group_by ~= "" then
    local res, qerr = usage.query({ from = r.from, to = r.to, group_by = group_by })
    if not res then return bad(qerr) end
    return 200, res
  end
  local details = query_param(req.query, "details")
  if details and not tonumber(details) then return bad("details: expected a number") end
  local doc, serr = usage.summary({ from = r.from, to = r.to, details = tonumber(details) })
  if not doc then return 500, { error = serr } end
  return 200, doc
end

local function export(req)
  local r, err = range(req.query)
  if not r then return bad(err) end
  if not open() then return 200, { version = 1, exported_at = usage.rfc3339(require("cpx").now()),
                                   usage = empty().usage } end
  local doc, eerr = usage.export(r)
  if not doc then return 500, { error = eerr } end
  return 200, doc
end

local function import(req)
  if not open() then
    return 409, { error = "usage statistics are disabled (usage.enabled, usage-statistics-enabled)" }
  end
  local doc, err = json.decode(req.body or "")
  if type(doc) ~= "table" then return bad("invalid JSON body: " .. (err or "expected an object")) end
  local res, ierr = usage.import(doc)
  if not res then return bad(ierr) end
  return 200, res
end

return {
  name = "usage",
  routes = {
    { method = "GET", path = "/usage", handler = get_usage },
    { method = "GET", path = "/usage/export", handler = export },
    { method = "POST", path = "/usage/import", handler = import },
  },
}
