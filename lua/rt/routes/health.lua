-- rt.routes.health: the public routes that are not about models: the
-- health check, the root banner and Prometheus metrics.
local json = require("lib.json")
local http = require("rt.http")
local metrics = require("rt.metrics")

local _M = {}

local function health(app, req)
  return http.json(req, 200, '{"status":"ok"}')
end

local function root(app, req, info)
  if info.method == "HEAD" then return req:respond(200, http.headers("application/json"), "") end
  return http.json(req, 200, {
    message = "CLI Proxy API Server",
    endpoints = json.array({ "POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models" }),
  })
end

-- "METHOD path" -> { handler(app, req, info), fmt = client format,
-- public = no client key needed } (the contract of rt.server's table)
_M.routes = {
  ["GET /healthz"] = { health, public = true },
  ["HEAD /healthz"] = { health, public = true },
  ["GET /metrics"] = { metrics.handle, public = true }, -- key checked by rt.metrics
  ["GET /"] = { root, public = true },
  ["HEAD /"] = { root, public = true },
}

return _M
