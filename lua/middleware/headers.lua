-- middleware/headers: sets and removes headers of the upstream request
-- (after the provider built it: credentials included). Names are
-- case-insensitive; `set` replaces any spelling of the same name.
local pairs = pairs
local ipairs = ipairs
local lower = string.lower

local _M = {
  name = "headers",
  priority = 500,
  version = "1.0",
  schema = {
    set = { type = "map", values = { type = "string" }, default = {} },
    remove = { type = "list", items = { type = "string" }, default = {} },
  },
  hooks = {},
}

local function drop(h, name)
  local n = lower(name)
  for k in pairs(h) do
    if lower(k) == n then h[k] = nil end
  end
end

function _M.hooks.before_upstream(conf, ctx, ureq)
  local h = ureq.headers
  if not h then
    h = {}
    ureq.headers = h
  end
  for _, name in ipairs(conf.remove) do drop(h, name) end
  for name, v in pairs(conf.set) do
    drop(h, name)
    h[name] = v
  end
end

return _M
