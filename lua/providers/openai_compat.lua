-- providers/openai_compat: any OpenAI-compatible Chat Completions service
-- (OpenRouter and the like), configured by `openai-compatibility` entries.
local pairs = pairs

local _M = {
  name = "openai-compatibility",
  format = "openai_chat",
  user_agent = "cli-proxy-openai-compat",
}

local function join(base, path)
  if base:sub(-1) == "/" then base = base:sub(1, -2) end
  return base .. path
end

-- Builds the upstream request: { url, method, headers, body }.
-- target = { entry = <config entry>, key = <api-key entry>, upstream_model }
function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = _M.user_agent,
  }
  if key and key["api-key"] and key["api-key"] ~= "" then
    headers["Authorization"] = "Bearer " .. key["api-key"]
  end
  if stream then
    headers["Accept"] = "text/event-stream"
    headers["Cache-Control"] = "no-cache"
  else
    headers["Accept"] = "application/json"
  end
  for k, v in pairs(entry.headers or {}) do headers[k] = v end
  return {
    method = "POST",
    url = join(entry["base-url"], "/chat/completions"),
    headers = headers,
    body = body,
    proxy = (key and key["proxy-url"] ~= nil and key["proxy-url"] ~= "" and key["proxy-url"])
      or (entry["proxy-url"] ~= "" and entry["proxy-url"]) or nil,
  }
end

-- What to do with an upstream answer before anything reached the client.
function _M.classify(status)
  if status < 400 then return "success" end
  if status == 400 or status == 422 or status == 413 then return "fatal" end
  return "retry"
end

return _M
