-- rt.routes.inference: the inference endpoints of each client format. Each
-- route reads what it must from the body (model, stream) and hands the
-- request to rt.pipeline.
local json = require("lib.json")
local http = require("rt.http")
local access = require("rt.access")
local pipeline = require("rt.pipeline")

local type = type
local tostring = tostring
local ipairs = ipairs
local query_param = access.query_param

local _M = {}

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
  return function(app, req, info)
    local ok, model, stream = peek_body(req, info, fmt)
    if not ok then return end
    return pipeline.infer(app, req, info, fmt, nil, { model = model, stream = stream, raw = info.body })
  end
end

local chat_completions = infer_route("openai_chat")
local messages = infer_route("claude")
local responses = infer_route("openai_responses")

local function responses_get(app, req, info)
  -- Codex probes a websocket here first; 426 makes it fall back to POST at
  -- once (a 404 costs it about 6 s of retries).
  return http.error(req, "openai_responses", 426, "websocket transport is not supported; use POST /v1/responses",
    "invalid_request_error", "upgrade_required", { Upgrade = "websocket" })
end

local function responses_compact(app, req, info)
  local body = http.decode_body(req, info, "openai_responses")
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

local function completions(app, req, info)
  local body = http.decode_body(req, info, "openai_chat")
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

-- POST /v1beta/models/<model>:generateContent and :streamGenerateContent
-- (rt.routes.gemini). The model is in the path: a same-format request is
-- sent as the client wrote it, so only its structure is checked here (as
-- peek_body does); the pipeline decodes it when something must look inside.
function _M.gemini_generate(app, req, info, model, action)
  local _, perr = json.peek(info.body, "contents")
  if perr ~= nil then return http.error(req, "gemini", 400, "invalid JSON body: " .. tostring(perr)) end
  local stream = action == "streamGenerateContent"
  local alt = query_param(info.query, "alt") or query_param(info.query, "$alt")
  return pipeline.infer(app, req, info, "gemini", nil, {
    -- alt=sse streams SSE; without it Gemini streams a JSON array.
    model = model, stream = stream, gemini_array = stream and alt ~= "sse", raw = info.body })
end

_M.routes = {
  ["POST /v1/chat/completions"] = { chat_completions, fmt = "openai_chat" },
  ["POST /v1/completions"] = { completions, fmt = "openai_chat" },
  ["POST /v1/messages"] = { messages, fmt = "claude" },
  ["POST /v1/responses"] = { responses, fmt = "openai_responses" },
  ["GET /v1/responses"] = { responses_get, fmt = "openai_responses" },
  ["POST /v1/responses/compact"] = { responses_compact, fmt = "openai_responses" },
}

return _M
