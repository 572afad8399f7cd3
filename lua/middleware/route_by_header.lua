-- middleware/route_by_header: picks the model (and so the account) from a
-- request header. With openai-compatibility entries that carry a `prefix`,
-- "team-b/{model}" sends the request to team-b's account only.
--
--   - name: route_by_header
--     header: X-Account
--     routes: { team-a: "team-a/{model}", fast: "gpt-4o-mini" }
--     reject-unknown: true      # 400 when the header names no route
local type = type
local gsub = string.gsub
local lower = string.lower

local _M = {
  name = "route_by_header",
  priority = 950,
  version = "1.0",
  schema = {
    header = { type = "string", required = true, description = "request header to read" },
    routes = { type = "map", values = { type = "string" }, required = true,
               description = "header value -> model; {model} stands for the requested model" },
    ["reject-unknown"] = { type = "boolean", default = false,
                           description = "answer 400 when the header is present but names no route" },
  },
  hooks = {},
}

function _M.hooks.access(conf, ctx)
  local v = ctx.info.headers[lower(conf.header)]
  if v and conf["reject-unknown"] and not conf.routes[v] then
    return 400, "unknown " .. conf.header .. " value '" .. v .. "'"
  end
end

function _M.hooks.rewrite(conf, ctx, body)
  local v = ctx.info.headers[lower(conf.header)]
  local to = v and conf.routes[v]
  if not to then return end
  local model = type(ctx.model) == "string" and ctx.model or ""
  ctx.model = (gsub(to, "{model}", function() return model end))
end

return _M
