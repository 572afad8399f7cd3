-- rt.routes.count: the token-count endpoints (Claude's count_tokens,
-- Gemini's countTokens). A first-party account of the client's format is
-- asked upstream; otherwise, or when it cannot answer, rt.count estimates.
local cpx = require("cpx")
local json = require("lib.json")
local http = require("rt.http")
local count = require("rt.count")
local record = require("rt.record")
local reqlog = require("rt.reqlog")
local refresh = require("rt.refresh")
local pool = require("rt.pool")
local provider_util = require("lib.provider_util")

local log = cpx.log
local type = type
local tostring = tostring
local pcall = pcall
local error = error

local _M = {}

-- An account that can answer the client's count itself: one of the
-- client's own format, and for Claude only the first-party API (a custom
-- base-url keeps the local estimate, as CLIProxyAPI does).
local function counts_upstream(app, fmt, t)
  local p = app.providers[t.provider]
  if not p or p.format ~= fmt then return false end
  local base = t.entry and t.entry["base-url"]
  if fmt == "claude" and base and base ~= "" and not base:find("^https://api%.anthropic%.com") then
    return false
  end
  return true
end

-- Asks account t for the count. Returns status, body, headers, or nil
-- when the local estimate must answer.
local function ask(app, t, fmt, body, model, info)
  local p = app.providers[t.provider]
  -- Only top-level fields change: a shallow copy, not a re-encode.
  local b = json.shallow_copy(body)
  if fmt == "claude" then
    b.model = t.upstream_model
    b.stream = nil
  end
  local ctx = { endpoint = "count_tokens", client_format = fmt, info = info, model = model, config = app.config }
  local text_body = json.encode(b)
  -- Each upstream attempt goes into the request's record, so the request
  -- and error logs (rt.reqlog) show it as they show an inference request's.
  local rec = record.of(info) -- [record]
  record.note_target(rec, t) -- [record] the account asked
  local function send(key)
    local ureq = p.prepare(ctx, { entry = t.entry, key = key, upstream_model = t.upstream_model }, text_body, false)
    local up, err = provider_util.fetch(ureq, t.owner)
    if not up then
      reqlog.attempt(rec, ureq, nil, nil, nil, tostring(err)) -- [record]
    elseif up:status() < 200 or up:status() >= 300 then
      -- the error answer is read here (the caller reads it again: a
      -- fetch keeps its body), so the log has it even when the estimate
      -- answers instead
      reqlog.attempt(rec, ureq, up:status(), up:headers(), up:body()) -- [record]
    else
      reqlog.attempt(rec, ureq, up:status(), up:headers()) -- [record] body below
    end
    return up, err
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
  reqlog.upstream_body(rec, text) -- [record]
  -- A wrapped answer (Gemini CLI's {"response": ...}) is unwrapped as
  -- the pipeline does.
  if ctx.fixup_response and p.response_fixup and text and up:status() == 200 then
    local d = json.decode(text)
    if type(d) == "table" then text = json.encode(p.response_fixup(d, ctx) or d) end
  end
  return up:status(), text, up:headers()
end

-- First-party upstream count (Claude count_tokens / Gemini countTokens),
-- passed through; nil when no account can be asked. The account is the
-- pool's choice as for inference (rt.pool.choose): round-robin over the
-- accounts that count upstream, cooling ones skipped.
local function upstream_count(app, fmt, body, model, info)
  local t, release = pool.choose(app, model, function(x) return counts_upstream(app, fmt, x) end)
  if not t then return nil end
  local ok, status, text, uh = pcall(ask, app, t, fmt, body, model, info)
  release()
  if not ok then error(status, 0) end
  return status, text, uh
end

-- The upstream's answer passed through, also handed to the request log
-- (http.json does that for the estimate).
local function answer(req, info, status, ctype, text)
  reqlog.response(record.of(info), text) -- [record]
  return req:respond(status, http.headers(ctype or "application/json"), text)
end

local function count_tokens_claude(app, req, info)
  local body = http.decode_body(req, info, "claude")
  if not body then return end
  local rec = record.of(info) -- [record]
  if rec then rec.model = type(body.model) == "string" and body.model or nil end
  local status, text, uh = upstream_count(app, "claude", body, body.model, info)
  if status then return answer(req, info, status, uh["content-type"], text or "") end
  local n, err = count.estimate("claude", body, body.model, app.config["count-tokens"])
  if not n then return http.error(req, "claude", 501, "token counting failed: " .. tostring(err)) end
  return http.json(req, 200, { input_tokens = n })
end

-- POST /v1beta/models/<model>:countTokens (rt.routes.gemini)
function _M.gemini_count(app, req, info, model)
  local body = http.decode_body(req, info, "gemini")
  if not body then return end
  local rec = record.of(info) -- [record]
  if rec then rec.model = model end
  local status, text, uh = upstream_count(app, "gemini", body, model, info)
  if status then return answer(req, info, status, uh["content-type"], text or "") end
  local src = body.generateContentRequest or body
  local n, err = count.estimate("gemini", src, model, app.config["count-tokens"])
  if not n then return http.error(req, "gemini", 501, "token counting failed: " .. tostring(err)) end
  return http.json(req, 200, { totalTokens = n,
                               promptTokensDetails = json.array({ { modality = "TEXT", tokenCount = n } }) })
end

_M.routes = {
  ["POST /v1/messages/count_tokens"] = { count_tokens_claude, fmt = "claude" },
}

return _M
