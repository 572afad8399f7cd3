-- middleware/model_alias: renames the model the client asked for before
-- the account pool looks it up ("gpt-4o" -> "claude-sonnet-4"). The suffix
-- of "model(high)" is kept: "gpt-4o(high)" -> "claude-sonnet-4(high)".
local type = type

local _M = {
  name = "model_alias",
  priority = 900,
  version = "1.0",
  schema = {
    aliases = { type = "map", values = { type = "string" }, required = true,
                description = "client model name -> model name to serve it with" },
  },
  hooks = {},
}

function _M.hooks.rewrite(conf, ctx, body)
  local model = ctx.model
  if type(model) ~= "string" then return end
  local to = conf.aliases[model]
  if not to then
    local base, suffix = model:match("^(.-)(%b())$")
    if base and conf.aliases[base] then to = conf.aliases[base] .. suffix end
  end
  if to then ctx.model = to end
end

return _M
