-- rt.pipeline: one inference request from the client's decoded body to the
-- upstream and back: pick a target, translate (or pass through when both
-- sides speak the same format), fetch, then answer or stream.
local cpx = require("cpx")
local json = require("rt.json")
local ir = require("rt.ir")
local http = require("rt.http")
local translators = require("translators")

local fetch = cpx.fetch
local log = cpx.log
local type = type
local tostring = tostring
local pcall = pcall

local _M = {}

-- Upstream bodies are framed by format: Gemini is asked for alt=sse too.
local FRAMING = { openai_chat = "sse", claude = "sse", openai_responses = "sse", gemini = "sse" }

local function stream_headers()
  return http.headers("text/event-stream", { ["Cache-Control"] = "no-cache", ["X-Accel-Buffering"] = "no" })
end

local function upstream_error(req, fmt, msg)
  return http.error(req, fmt, 502, msg, "server_error", "upstream_error")
end

-- Picks one target for the model: round robin over the pool, then over the
-- target's api keys.
local function pick(app, targets, alias)
  local reg = app.registry
  local t = targets[reg:next_index("m:" .. alias, #targets)]
  local key = t.keys[reg:next_index(t.keys, #t.keys)]
  return t, key
end

-- Decodes an upstream error body into the client's format. Same format:
-- the upstream's own JSON is passed through with its status.
local function answer_error(req, fmt, upfmt, up, ctx)
  local status = up:status()
  local body = up:body() or ""
  local uh = up:headers()
  if fmt == upfmt and json.decode(body) then
    local extra = { ["Retry-After"] = uh["retry-after"] }
    return req:respond(status, http.headers(uh["content-type"] or "application/json", extra), body)
  end
  local ok, cb, st = pcall(translators.error, fmt, upfmt, status, body, ctx)
  if not ok or type(cb) ~= "table" then
    return http.error(req, fmt, status >= 400 and status or 502, "upstream returned " .. status)
  end
  return http.json(req, st or status, cb, { ["Retry-After"] = uh["retry-after"] })
end

-- opts: { model = <client model>, stream = bool, gemini_array = bool }
function _M.infer(app, req, info, fmt, body, opts)
  local model = opts.model
  if type(model) ~= "string" or model == "" then
    return http.error(req, fmt, 400, "model is required")
  end
  local targets, alias = app.registry:lookup(model)
  if not targets then
    return http.error(req, fmt, 502, "unknown provider for model " .. model, "server_error", "unknown_provider")
  end
  local _, think = ir.parse_model(model)
  local target, key = pick(app, targets, alias)
  local provider = app.providers[target.provider]
  local upfmt = provider.format
  local stream = opts.stream and true or false
  local ctx = { model = model, stream = stream, request_id = info.id, info = info,
                gemini_array = opts.gemini_array, client_format = fmt, upstream_format = upfmt }
  local passthrough = upfmt == fmt and not think

  local out
  if passthrough then
    if fmt ~= "gemini" then body.model = target.upstream_model end
    out = json.encode(body)
  else
    ctx.upstream_model = think and (target.upstream_model .. model:match("%b()$")) or target.upstream_model
    local tb, err = translators.request(fmt, upfmt, body, ctx)
    if not tb then return http.error(req, fmt, 400, err or "cannot translate request") end
    out = json.encode(tb)
  end
  if not out then return http.error(req, fmt, 500, "cannot encode upstream request") end

  local ureq = provider.prepare(ctx, { entry = target.entry, key = key, upstream_model = ctx.upstream_model or target.upstream_model }, out, stream)
  local up, err = fetch(ureq)
  if not up then
    log("warn", "upstream", target.owner, "failed:", err)
    if req:closed() then return end
    return upstream_error(req, fmt, "upstream request failed: " .. tostring(err))
  end
  local status = up:status()
  if status < 200 or status >= 300 then
    return answer_error(req, fmt, upfmt, up, ctx)
  end

  if stream then
    req:start(200, stream_headers())
    if passthrough then
      local codec = translators.codecs[fmt]
      return req:pipe(up, {
        on_end = function(e)
          if e then return codec.stream_error({ status = 502, type = "server_error", message = e }, {}, ctx) end
        end,
      }, "raw")
    end
    local s = translators.stream(fmt, upfmt, ctx)
    return req:pipe(up, {
      on_event = function(ev) return s:feed(ev) end,
      on_end = function(e)
        if e then return s:fail({ status = 502, type = "server_error", message = e }) end
        return s:finish()
      end,
    }, FRAMING[upfmt])
  end

  local rb, berr = up:body()
  if not rb then
    if req:closed() then return end
    return upstream_error(req, fmt, "upstream body failed: " .. tostring(berr))
  end
  if passthrough then
    return req:respond(status, http.headers(up:headers()["content-type"] or "application/json"), rb)
  end
  local decoded = json.decode(rb)
  if type(decoded) ~= "table" then return upstream_error(req, fmt, "upstream returned invalid JSON") end
  local cb, terr = translators.response(fmt, upfmt, decoded, ctx)
  if not cb then return upstream_error(req, fmt, terr or "cannot translate response") end
  return http.json(req, 200, cb)
end

return _M
