-- middleware/request_id: one id per request, passed upstream. The client's
-- own header wins when it sent one; otherwise cliproxy's request id is used.
-- The id is ctx.request_id for every later hook and log line.
local lower = string.lower

local _M = {
  name = "request_id",
  priority = 2000,
  version = "1.0",
  schema = {
    header = { type = "string", default = "X-Request-Id", description = "header read from the client" },
    ["upstream-header"] = { type = "string", description = "header sent upstream (default: the same name)" },
    trust = { type = "boolean", default = true, description = "use the client's id when it sent one" },
  },
  hooks = {},
}

local function valid(v)
  return v and #v > 0 and #v <= 200 and not v:find("[%c]")
end

function _M.hooks.access(conf, ctx)
  local v = ctx.info.headers[lower(conf.header)]
  ctx.shared.request_id = (conf.trust and valid(v)) and v or ctx.info.id
end

function _M.hooks.rewrite(conf, ctx)
  ctx.request_id = ctx.shared.request_id or ctx.request_id
end

function _M.hooks.before_upstream(conf, ctx, ureq)
  local id = ctx.shared.request_id or ctx.request_id
  if id then
    ureq.headers = ureq.headers or {}
    ureq.headers[conf["upstream-header"] or conf.header] = id
  end
end

return _M
