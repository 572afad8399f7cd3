-- Spec helper: the files under spec/fixtures/, as bytes or decoded JSON.
local json = require("lib.json")

local root = (os.getenv("CPX_ROOT") or ".") .. "/spec/fixtures/"

local _M = {}

function _M.raw(name)
  local f = assert(io.open(root .. name, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function _M.json(name)
  return assert(json.decode(_M.raw(name)))
end

return _M
