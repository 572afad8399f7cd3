-- rt.login_gemini: `cliproxy login gemini [--project-id ID|all]`: the
-- Google code flow (rt.login's code_flow on 8085), then what CLIProxyAPI's
-- login does after the exchange (cliproxyapi.md §3.3):
--   1. the account's email (userinfo),
--   2. Code Assist: loadCodeAssist, and onboardUser with the default tier,
--      asked again every onboard_interval s until its operation is done,
--   3. the project: the one given, else the account's (loadCodeAssist's
--      or the onboarding's), else the first of the account's projects;
--      with `all` every project gets its own file,
--   4. for a project the user named: its Code Assist API on (serviceusage;
--      turned on when off), `checked` in the file.
-- Each step is printed; a failure names the step, the URL and the answer.
-- The Code Assist steps are shared with rt.login_antigravity.
local json = require("lib.json")
local oauth = require("rt.oauth")

local type = type
local ipairs = ipairs
local tostring = tostring
local format = string.format

local _M = {}

local METADATA = { { "ideType", "IDE_UNSPECIFIED" }, { "platform", "PLATFORM_UNSPECIFIED" },
                   { "pluginType", "GEMINI" } }

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

local function bearer(token)
  return { ["Authorization"] = "Bearer " .. token, ["Accept"] = "application/json" }
end

-- GET/POST with the access token -> decoded answer | nil, message
local function call(io, lib, what, req)
  local status, headers, body = io.request(req)
  if not status then return nil, format("network error: %s: %s", req.url, tostring(headers)) end
  local d = lib.decode(body)
  if status ~= 200 then
    return nil, format("%s failed: %s answered %s", what, req.url, lib.error_text(status, d, body))
  end
  if not d then return nil, format("%s failed: %s answered no JSON object", what, req.url) end
  return d
end

local function post(token, url, doc)
  local h = bearer(token)
  h["Content-Type"] = "application/json"
  return { method = "POST", url = url, headers = h, body = json.encode(doc) }
end

function _M.email(f, io, lib, token)
  io.say(format("Looking up the account at %s ...", f.userinfo_url))
  local d, err = call(io, lib, "the account lookup", { method = "GET", url = f.userinfo_url, headers = bearer(token) })
  if not d then return nil, err end
  local email = nonempty(d.email)
  if not email then return nil, format("%s answered without an email", f.userinfo_url) end
  return email
end

local function code_assist(f, method)
  return (f.api_base_url:gsub("/$", "")) .. "/v1internal:" .. method
end

local function project_of(v)
  if type(v) == "string" then return nonempty(v) end
  if type(v) == "table" then return nonempty(v.id) end
  return nil
end

-- The account's projects (cloudresourcemanager), active ones, in order.
function _M.projects(f, io, lib, token)
  io.say(format("Listing the account's projects at %s ...", f.projects_url))
  local d, err = call(io, lib, "the project list", { method = "GET", url = f.projects_url, headers = bearer(token) })
  if not d then return nil, err end
  local out = {}
  for _, p in ipairs(type(d.projects) == "table" and d.projects or {}) do
    if type(p) == "table" and nonempty(p.projectId)
        and (p.lifecycleState == nil or p.lifecycleState == "ACTIVE") then
      out[#out + 1] = p.projectId
    end
  end
  return out
end

-- loadCodeAssist, then onboardUser until done. project: the one to use,
-- or nil (the account's). -> the project id (nil when none is known) |
-- nil, message
function _M.onboard(f, io, lib, token, project)
  local meta = json.object(METADATA)
  local url = code_assist(f, "loadCodeAssist")
  io.say(format("Loading Code Assist%s at %s ...", project and (" for project " .. project) or "", url))
  local load, err = call(io, lib, "loadCodeAssist", post(token, url, json.object({
    { "metadata", meta }, { "cloudaicompanionProject", project } })))
  if not load then return nil, err end
  local known = project or project_of(load.cloudaicompanionProject)
  if type(load.currentTier) == "table" and known then
    io.say(format("Code Assist is set up (%s)", tostring(load.currentTier.id or "tier")))
    return known
  end
  local tier = "legacy-tier"
  for _, t in ipairs(type(load.allowedTiers) == "table" and load.allowedTiers or {}) do
    if type(t) == "table" and t.isDefault == true and nonempty(t.id) then
      tier = t.id
      break
    end
  end
  url = code_assist(f, "onboardUser")
  local req = post(token, url, json.object({ { "tierId", tier }, { "metadata", meta },
                                             { "cloudaicompanionProject", known } }))
  local tries = f.onboard_tries or 30
  local every = f.onboard_interval or 2
  io.say(format("Onboarding the account (tier %s) at %s ...", tier, url))
  for i = 1, tries do
    local op, oerr = call(io, lib, "onboardUser", req)
    if not op then return nil, oerr end
    if op.done == true then
      if type(op.error) == "table" then
        return nil, format("onboardUser failed: %s", tostring(op.error.message or op.error.code))
      end
      local got = type(op.response) == "table" and project_of(op.response.cloudaicompanionProject)
      io.say("Onboarding done")
      return got or known
    end
    if i < tries then
      io.say(format("Onboarding is still running; asking again in %d s", every))
      io.sleep(every)
    end
  end
  return nil, format("onboardUser did not finish after %d tries (%d s): run the login again", tries, tries * every)
end

-- Whether the project has the Code Assist API (serviceusage) on; when it
-- is off it is turned on. -> true | nil, message
function _M.check_api(f, io, lib, token, project)
  local url = format("%s/v1/projects/%s/services/%s", (f.service_usage_url:gsub("/$", "")),
                     oauth.pct(project), f.service)
  io.say(format("Checking that %s is enabled on %s ...", f.service, project))
  local d, err = call(io, lib, "the API check", { method = "GET", url = url, headers = bearer(token) })
  if not d then return nil, err end
  if d.state == "ENABLED" then return true end
  io.say(format("%s is %s on %s: enabling it ...", f.service, tostring(d.state or "not enabled"), project))
  local e, eerr = call(io, lib, "enabling the API", post(token, url .. ":enable", json.object({})))
  if not e then return nil, eerr end
  return true
end

-- The file's fields besides the tokens (CLIProxyAPI's GeminiTokenStorage).
local function extra(email, project, auto, checked)
  return { email = email, project_id = project, auto = auto, checked = checked == true }
end

-- After the exchange: the email, Code Assist and the project(s), the files.
-- Also what the management API's /gemini-cli-auth-url login runs (with a
-- server-side io: see rt.mgmt.oauth).
function _M.finish(f, args, io, lib, tokens)
  local want = nonempty(args.project_id)
  local token = tokens.access_token
  local email, err = _M.email(f, io, lib, token)
  if not email then return nil, err end
  tokens.email = email
  local list = {}
  if want and want:lower() == "all" then
    local all, perr = _M.projects(f, io, lib, token)
    if not all then return nil, perr end
    if #all == 0 then return nil, "the account has no active Google Cloud project to use with --project-id all" end
    for i, p in ipairs(all) do list[i] = { id = p, auto = false } end
  elseif want then
    for p in want:gmatch("[^,%s]+") do list[#list + 1] = { id = p, auto = false } end
  else
    list[1] = { auto = true }
  end
  local saved = {}
  for _, p in ipairs(list) do
    local id, oerr = _M.onboard(f, io, lib, token, p.id)
    if not id and oerr then return nil, oerr end
    if not id then
      -- no project from Code Assist: the account's first one
      local all, perr = _M.projects(f, io, lib, token)
      if not all then return nil, perr end
      if #all == 0 then
        return nil, "no project: Code Assist named none and the account has none (pass --project-id ID)"
      end
      id, oerr = _M.onboard(f, io, lib, token, all[1])
      if not id then return nil, oerr end
    end
    io.say(format("Using project %s", id))
    -- A project the user named is checked; a managed or automatic one
    -- is Google's to set up (checked stays false, as in CLIProxyAPI's
    -- files for those).
    local checked = false
    if not p.auto then
      local ok, cerr = _M.check_api(f, io, lib, token, id)
      if not ok then return nil, cerr end
      checked = true
    end
    local info, serr = lib.save(f, io, tokens, extra(email, id, p.auto, checked))
    if not info then return nil, serr end
    saved[#saved + 1] = info
  end
  local first = saved[1]
  first.files = saved
  return first
end

function _M.run(f, args, io, lib)
  return lib.code_flow(f, args, io, function(tokens) return _M.finish(f, args, io, lib, tokens) end)
end

return _M
