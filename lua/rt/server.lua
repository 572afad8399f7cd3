-- rt.server: the request entry point. C calls handle(req, info) in a fresh
-- coroutine for every request; it routes, runs the access checks, decodes
-- the body and hands inference requests to rt.pipeline.
local cpx = require("cpx")
local json = require("lib.json")
local http = require("rt.http")
local access = require("rt.access")
local pipeline = require("rt.pipeline")
local count = require("rt.count")
local mw = require("rt.middleware")
local lane = require("rt.lane")
local panel = require("rt.panel")
local management = require("rt.management")
local record = require("rt.record")
local metrics = require("rt.metrics")

local log = cpx.log
local provider_util = require("lib.provider_util")
local refresh = require("rt.refresh")
local xpcall = xpcall
local type = type
local tostring = tostring
local ipairs = ipairs
local traceback = cpx.traceback
local query_param = access.query_param

local _M = {}
local app -- set by init

function _M.init(a)
  app = a
end

local function metrics_route(req, info)
  return metrics.handle(app, req, info)
end

local function health(req)
  return http.json(req, 200, '{"status":"ok"}')
end

local function root(req, info)
  if info.method == "HEAD" then return req:respond(200, http.headers("application/json"), "") end
  return http.json(req, 200, {
    message = "CLI Proxy API Server",
    endpoints = json.array({ "POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models" }),
  })
end

-- ---- model lists ----------------------------------------------------------

local function models_openai(req)
  local data = json.array()
  for _, m in ipairs(app.registry:list()) do
    data[#data + 1] = { id = m.id, object = "model", created = 1700000000, owned_by = m.owner }
  end
  return http.json(req, 200, { object = "list", data = data })
end

local function models_claude(req)
  local data = json.array()
  for _, m in ipairs(app.registry:list()) do
    data[#data + 1] = { id = m.id, type = "model", display_name = m.id, created_at = "2024-01-01T00:00:00Z" }
  end
  return http.json(req, 200, { data = data, has_more = false,
                               first_id = data[1] and data[1].id or json.null,
                               last_id = data[#data] and data[#data].id or json.null })
end

local function models(req, info)
  local ua = info.headers["user-agent"] or ""
  if ua:sub(1, 10) == "claude-cli" or info.headers["anthropic-version"] then
    return models_claude(req)
  end
  return models_openai(req)
end

local function gemini_model(m)
  return { name = "models/" .. m.id, version = "001", displayName = m.id, description = m.id,
           inputTokenLimit = 1048576, outputTokenLimit = 65536,
           supportedGenerationMethods = json.array({ "generateContent", "streamGenerateContent", "countTokens" }) }
end

local function models_gemini(req)
  local out = json.array()
  for _, m in ipairs(app.registry:list()) do out[#out + 1] = gemini_model(m) end
  return http.json(req, 200, { models = out })
end

-- ---- helpers --------------------------------------------------------------

-- Decodes a JSON object body or answers 400 in the client's format.
local function decode_body(req, info, fmt)
  local body, err = json.decode(info.body)
  if type(body) ~= "table" or json.is_array(body) then
    http.error(req, fmt, 400, "invalid JSON body: " .. (err or "expected an object"))
    return nil
  end
  return body
end

-- ---- inference routes -----------------------------------------------------

-- Reads model and stream without decoding the body (the passthrough fast
-- path); a structurally broken body gets 400 in the client's format.
local function peek_body(req, info, fmt)
  local model, stream = json.peek(info.body, "model", "stream")
  if model == nil and type(stream) == "string" then
    http.error(req, fmt, 400, "invalid JSON body: " .. stream)
    return nil
  end
  return true, model, stream == true
end

local function infer_route(fmt)
  return function(req, info)
    local ok, model, stream = peek_body(req, info, fmt)
    if not ok then return end
    return pipeline.infer(app, req, info, fmt, nil, { model = model, stream = stream, raw = info.body })
  end
end

local chat_completions = infer_route("openai_chat")
local messages = infer_route("claude")
local responses = infer_route("openai_responses")

local function responses_get(req, info)
  -- Codex probes a websocket here first; 426 makes it fall back to POST at
  -- once (a 404 costs it about 6 s of retries).
  return http.error(req, "openai_responses", 426, "websocket transport is not supported; use POST /v1/responses",
    "invalid_request_error", "upgrade_required", { Upgrade = "websocket" })
end

local function responses_compact(req, info)
  local body = decode_body(req, info, "openai_responses")
  if not body then return end
  local targets = app.registry:lookup(body.model)
  if targets and app.providers[targets[1].provider].format ~= "openai_responses" then
    return http.error(req, "openai_responses", 501, "responses/compact is only supported by Responses upstreams",
      "invalid_request_error", "not_implemented")
  end
  return pipeline.infer(app, req, info, "openai_responses", body,
    { model = body.model, stream = body.stream == true, endpoint = "compact" })
end

-- Legacy /v1/completions: prompt -> chat, and text_completion back.
local function to_text_completion(c)
  local choices = json.array()
  for i, ch in ipairs(c.choices or {}) do
    local text = ch.message and ch.message.content or (ch.delta and ch.delta.content) or ""
    choices[#choices + 1] = { index = ch.index or (i - 1), text = type(text) == "string" and text or "",
                              logprobs = json.null, finish_reason = ch.finish_reason or json.null }
  end
  return { id = c.id, object = "text_completion", created = c.created, model = c.model,
           choices = choices, usage = c.usage }
end

local function completions(req, info)
  local body = decode_body(req, info, "openai_chat")
  if not body then return end
  local prompt = body.prompt
  if type(prompt) == "table" then prompt = prompt[1] end
  local chat = { model = body.model, stream = body.stream, max_tokens = body.max_tokens,
                 temperature = body.temperature, top_p = body.top_p, n = body.n, stop = body.stop,
                 stream_options = body.stream_options, user = body.user, seed = body.seed,
                 messages = json.array({ { role = "user", content = tostring(prompt or "") } }) }
  return pipeline.infer(app, req, info, "openai_chat", chat, {
    model = body.model, stream = body.stream == true, force_hub = true,
    body_filter = to_text_completion,
    frame_filter = function(frame)
      local data = frame:match("^data: (.*)\n\n$")
      if not data or data == "[DONE]" then return frame end
      local c = json.decode(data)
      if type(c) ~= "table" or c.error then return frame end
      return "data: " .. json.encode(to_text_completion(c)) .. "\n\n"
    end,
  })
end

-- ---- token counting -------------------------------------------------------

-- First-party upstream count (Claude count_tokens / Gemini countTokens),
-- passed through; nil when the upstream cannot be asked.
local function upstream_count(fmt, body, model, info)
  local targets = app.registry:lookup(model)
  if not targets then return nil end
  local t = targets[1]
  local p = app.providers[t.provider]
  if p.format ~= fmt then return nil end
  -- Claude: only the first-party API counts; a custom base-url keeps the
  -- local estimate (as CLIProxyAPI does).
  local base = t.entry and t.entry["base-url"]
  if fmt == "claude" and base and base ~= "" and not base:find("^https://api%.anthropic%.com") then
    return nil
  end
  -- Only top-level fields change: a shallow copy, not a re-encode.
  local b = json.shallow_copy(body)
  if fmt == "claude" then
    b.model = t.upstream_model
    b.stream = nil
  end
  local ctx = { endpoint = "count_tokens", client_format = fmt, info = info, model = model, config = app.config }
  local text_body = json.encode(b)
  local function send(key)
    local ureq = p.prepare(ctx, { entry = t.entry, key = key, upstream_model = t.upstream_model }, text_body, false)
    return provider_util.fetch(ureq, t.owner)
  end
  -- An OAuth account's token is refreshed as for any request: before it
  -- is sent when it has expired, and once after a 401.
  local key = t.key
  if t.credential then key = refresh.fresh_key(app, t, key) end
  local up, err = send(key)
  if up and up:status() == 401 and t.credential then
    local nk = refresh.after_401(app, t, key)
    if nk then up, err = send(nk) end
  end
  if not up then
    log("warn", "count upstream failed:", err)
    return nil
  end
  -- A count is advisory: an account that is refused, limited or down gives
  -- the local estimate rather than its error (the client's request itself
  -- will meet the pool's retries and cooldowns).
  local st = up:status()
  if st == 401 or st == 403 or st == 429 or st >= 500 then
    log("warn", "count upstream answered " .. st .. "; using the local estimate")
    return nil
  end
  local text = up:body()
  -- A wrapped answer (Gemini CLI's {"response": ...}) is unwrapped as
  -- the pipeline does.
  if ctx.fixup_response and p.response_fixup and text and up:status() == 200 then
    local d = json.decode(text)
    if type(d) == "table" then text = json.encode(p.response_fixup(d, ctx) or d) end
  end
  return up:status(), text, up:headers()
end

local function count_tokens_claude(req, info)
  local body = decode_body(req, info, "claude")
  if not body then return end
  local rec = record.of(info) -- [record]
  if rec then rec.model = type(body.model) == "string" and body.model or nil end
  local status, text, uh = upstream_count("claude", body, body.model, info)
  if status then
    return req:respond(status, http.headers(uh["content-type"] or "application/json"), text or "")
  end
  local n, err = count.estimate("claude", body, body.model, app.config["count-tokens"])
  if not n then return http.error(req, "claude", 501, "token counting failed: " .. tostring(err)) end
  return http.json(req, 200, { input_tokens = n })
end

-- ---- Gemini routes --------------------------------------------------------

local function gemini_action(req, info, model, action)
  if action == "countTokens" then
    local body = decode_body(req, info, "gemini")
    if not body then return end
    local rec = record.of(info) -- [record]
    if rec then rec.model = model end
    local status, text, uh = upstream_count("gemini", body, model, info)
    if status then
      return req:respond(status, http.headers(uh["content-type"] or "application/json"), text or "")
    end
    local src = body.generateContentRequest or body
    local n, err = count.estimate("gemini", src, model, app.config["count-tokens"])
    if not n then return http.error(req, "gemini", 501, "token counting failed: " .. tostring(err)) end
    return http.json(req, 200, { totalTokens = n,
                                 promptTokensDetails = json.array({ { modality = "TEXT", tokenCount = n } }) })
  end
  if action ~= "generateContent" and action ~= "streamGenerateContent" then
    return http.error(req, "gemini", 404, "unknown method " .. action)
  end
  -- The model is in the path: a same-format request is sent as the client
  -- wrote it, so only its structure is checked here (as peek_body does);
  -- the pipeline decodes it when something must look inside.
  local _, perr = json.peek(info.body, "contents")
  if perr ~= nil then return http.error(req, "gemini", 400, "invalid JSON body: " .. tostring(perr)) end
  local stream = action == "streamGenerateContent"
  local alt = query_param(info.query, "alt") or query_param(info.query, "$alt")
  return pipeline.infer(app, req, info, "gemini", nil, {
    -- alt=sse streams SSE; without it Gemini streams a JSON array.
    model = model, stream = stream, gemini_array = stream and alt ~= "sse", raw = info.body })
end

local function gemini_route(req, info)
  local path = info.path
  if info.method == "GET" then
    if path == "/v1beta/models" then return models_gemini(req) end
    local id = path:match("^/v1beta/models/([^:]+)$")
    if id then
      if not app.registry:lookup(id) then return http.error(req, "gemini", 404, "model " .. id .. " not found") end
      return http.json(req, 200, gemini_model({ id = id }))
    end
  elseif info.method == "POST" then
    local model, action = path:match("^/v1beta/models/([^:]+):(%a+)$")
    if model then return gemini_action(req, info, model, action) end
  end
  return http.error(req, "gemini", 404, "not found: " .. info.method .. " " .. path)
end

-- The web control panel's static files (rt.panel).
local function panel_file(req, info)
  return panel.serve(app.config, req, info)
end
local panel_route = { panel_file, public = true }

-- ---- routing --------------------------------------------------------------

-- "METHOD path" -> { handler, fmt = client format, public = no key needed }
local routes = {
  ["GET /healthz"] = { health, public = true },
  ["HEAD /healthz"] = { health, public = true },
  ["GET /metrics"] = { metrics_route, public = true }, -- key checked by rt.metrics
  ["GET /"] = { root, public = true },
  ["HEAD /"] = { root, public = true },
  ["GET /v1/models"] = { models, fmt = "openai_chat" },
  ["POST /v1/chat/completions"] = { chat_completions, fmt = "openai_chat" },
  ["POST /v1/completions"] = { completions, fmt = "openai_chat" },
  ["POST /v1/messages"] = { messages, fmt = "claude" },
  ["POST /v1/messages/count_tokens"] = { count_tokens_claude, fmt = "claude" },
  ["POST /v1/responses"] = { responses, fmt = "openai_responses" },
  ["GET /v1/responses"] = { responses_get, fmt = "openai_responses" },
  ["POST /v1/responses/compact"] = { responses_compact, fmt = "openai_responses" },
  ["GET /management.html"] = { panel_file, public = true },
  ["HEAD /management.html"] = { panel_file, public = true },
}
-- The OAuth starters' callbacks on the main port (rt.mgmt.oauth): the
-- browser's redirect comes without a key; only a state a starter handed out
-- is acted on.
do
  local mgmt_oauth = require("rt.mgmt.oauth")
  local function oauth_callback(req, info) return mgmt_oauth.callback(app, req, info) end
  for _, p in ipairs(mgmt_oauth.callback_paths()) do routes["GET " .. p] = { oauth_callback, public = true } end
end
_M.routes = routes

-- cpx_errbody_format (runtime/core/cpx_errbody.c) makes this decision for the
-- answers built in C; test_errbody pins its table, keep the two in step.
local function format_for_path(path)
  if path:find("^/v1/messages") then return "claude" end
  if path:find("^/v1/responses") then return "openai_responses" end
  if path:find("^/v1beta/") then return "gemini" end
  return "openai_chat"
end

local function dispatch(req, info)
  if info.method == "OPTIONS" then
    return req:respond(204, http.headers(nil), "")
  end
  local path = info.path
  -- The management API has its own keys and errors (rt.management).
  if path:sub(1, 14) == "/v0/management" and (#path == 14 or path:sub(15, 15) == "/") then
    return management.handle(req, info)
  end
  local route = routes[info.method .. " " .. info.path]
  if not route and info.path:find("^/v1beta/models") then
    route = { gemini_route, fmt = "gemini" }
  elseif not route and info.path:find("^/panel/") then
    route = panel_route
  end
  local fmt = route and route.fmt or format_for_path(info.path)
  -- [record] what kind of request this is; the usage store keeps
  -- inference and counting, metrics count everything.
  local rec = record.of(info)
  if rec then
    rec.client_format = fmt
    if route and not route.public then
      rec.kind = (info.path:find("count_tokens", 1, true) or info.path:find(":countTokens", 1, true))
        and "count" or "inference"
    end
  end
  if not route then
    return http.error(req, fmt, 404, "not found: " .. info.method .. " " .. info.path, nil, "not_found")
  end
  if not route.public then
    local ok, why = access.check(app.config["api-keys"], info)
    if not ok then return http.error(req, fmt, 401, why) end
    if rec and why then rec.client_key = record.key_label(why) end -- [record] label, never the key
    local allowed, status, msg = mw.run(app.middleware, "access", { info = info, client_format = fmt })
    if allowed == false then return http.error(req, fmt, status or 403, msg or "forbidden") end
  end
  return route[1](req, info)
end

local function on_error(e)
  return traceback and traceback(tostring(e), 2) or tostring(e)
end

-- Entry from C. Any script error becomes a clean 500 in the client's
-- format naming the script and line; the traceback goes to the log.
function _M.handle(req, info)
  local rec = record.begin(info, format_for_path(info.path), nil) -- [record]
  record.bind(req, rec)
  local ok, err = xpcall(dispatch, on_error, req, info)
  lane.refresh(app)
  -- [record] a stream finishes its record when it ends (rt.pipeline)
  if not rec.deferred then record.finish(rec, req:status(), not ok and "script error" or nil) end
  if ok then return mw.done(app.middleware, info, nil, req:status()) end
  log("error", "script error:", err)
  if not req:sent() and not req:closed() then
    local msg = tostring(err):match("^[^\n]*") or "script error"
    http.error(req, format_for_path(info.path), 500, "script error: " .. msg, "server_error", "script_error")
  end
  mw.done(app.middleware, info, err, req:status())
end

return _M
