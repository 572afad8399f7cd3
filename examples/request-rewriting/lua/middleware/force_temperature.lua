-- middleware/force_temperature (user middleware): every request is sent
-- with the same temperature, whatever the client asked for. It edits the
-- client's body in the rewrite phase, so it works for every client format
-- and the translation carries the value to any upstream.
local cpx = require("cpx")

local type = type
local ipairs = ipairs
local cpx_log = cpx.log

local _M = {
  name = "force_temperature",
  priority = 750,
  version = "1.0",
  schema = {
    value = { type = "number", required = true, min = 0, max = 2 },
    -- Lua patterns (anchored) of the models it applies to; none = all.
    models = { type = "list", items = { type = "string" }, default = {} },
  },
  hooks = {},
}

local function applies(conf, model)
  if #conf.models == 0 then return true end
  for _, pat in ipairs(conf.models) do
    if type(model) == "string" and model:match("^" .. pat .. "$") then return true end
  end
  return false
end

function _M.hooks.rewrite(conf, ctx, body)
  if not applies(conf, ctx.model) then return end
  if ctx.client_format == "gemini" then
    body.generationConfig = type(body.generationConfig) == "table" and body.generationConfig or {}
    body.generationConfig.temperature = conf.value
  else
    body.temperature = conf.value
  end
  ctx.plugin.forced = conf.value
end

-- Shows the per-request state: what rewrite decided is visible in log.
function _M.hooks.log(conf, ctx, res)
  if ctx.plugin.forced then
    cpx_log("info", "force_temperature: sent temperature", ctx.plugin.forced, "for", ctx.model)
  end
end

return _M
