-- rt.login_antigravity: `cliproxy login antigravity`: the Google code
-- flow on 51121 (no PKCE, the client secret in the exchange), then the
-- account's email and its Code Assist project (loadCodeAssist, onboarding
-- when the account has none yet; rt.login_gemini's steps), saved as
-- antigravity-<email>.json (cliproxyapi.md §3.4).
local gemini_login = require("rt.login_gemini")

local tostring = tostring
local format = string.format

local _M = {}

-- After the exchange (also the management API's /antigravity-auth-url login).
function _M.finish(f, args, io, lib, tokens)
  local token = tokens.access_token
  local email, err = gemini_login.email(f, io, lib, token)
  if not email then return nil, err end
  tokens.email = email
  local project, perr = gemini_login.onboard(f, io, lib, token, lib.nonempty(args.project_id))
  if project then
    io.say(format("Using project %s", project))
  else
    -- CLIProxyAPI saves the login anyway; requests then go without a project
    io.say(format("No Code Assist project (%s): the file is saved without project_id",
                  tostring(perr or "none named")))
  end
  return lib.save(f, io, tokens, { email = email, project_id = project or "" })
end

function _M.run(f, args, io, lib)
  return lib.code_flow(f, args, io, function(tokens) return _M.finish(f, args, io, lib, tokens) end)
end

return _M
