-- rt.pool: which account serves a request, and what to do when it fails.
-- The state (cooldowns, cursors, probes, session bindings) lives in C
-- (cpx.pool) and is shared by every worker and generation; this module is
-- the retry policy around it (fact sheet 5.3):
--
--   a round tries untried accounts of the model's group, at most
--   max-retry-credentials (0 = all); success or a fatal answer (the
--   request's own fault) ends it at once; any other failure cools the
--   (account, model) down and tries the next account. After a failed
--   round, up to request-retry more rounds run, each after waiting for the
--   soonest cooldown when that is at most max-retry-interval seconds.
--   An overloaded provider (529) is load on the provider, not on one
--   account (limits sheet 3.1): nothing cools, the request's other
--   accounts at the same provider are skipped, and a round that met only
--   overload is the last one (the client's SDK backs off and retries).
--   When no account could be tried at all because every one is cooling,
--   the answer is 429 model_cooldown with Retry-After.
--
-- Contract used by rt.pipeline:
--   pool.run(app, ctx, model, attempt) -> outcome
--     attempt(target, key) -> outcome, one of
--       { ok = true, ... }                       success, stop here
--       { status = n, headers = t, body = s }    upstream answered an error
--       { err = "message" }                      transport failure
--       { status = n, own = true, ... }          cliproxy's own error (fatal)
--     run returns the successful outcome or the last failure; with no
--     target it returns { status = 502, own = true, ... } (unknown
--     provider); with every account cooling { status = 429, own = true,
--     raw_body = <model_cooldown JSON>, extra = { ["Retry-After"] } }.
local cpx = require("cpx")
local json = require("lib.json")
local cooldown = require("lib.cooldown")

local type = type
local ipairs = ipairs
local pairs = pairs
local tostring = tostring
local pcall = pcall
local error = error
local next = next
local ceil = math.ceil
local log = cpx.log or function() end -- absent in the busted module
local pick = cpx.pool.pick
local report = cpx.pool.report
local group_wait = cpx.pool.wait
local sleep = cpx.sleep

local _M = {}

-- ---- classification -------------------------------------------------------

-- outcome -> action ("success" | "retry" | "fatal"), kind, hint seconds
-- Accounts at the same upstream share its load.
local function provider_key(t)
  local e = t.entry
  local base = type(e) == "table" and e["base-url"] or ""
  return tostring(t.provider) .. "\0" .. tostring(base)
end

local function classify(app, target, out)
  if out.ok then return "success", "ok" end
  if out.own then return "fatal", "neutral" end
  if out.err then return "retry", "transient" end
  local p = app.providers[target.provider]
  local action, kind, hint
  if p and p.classify then
    action, kind, hint = p.classify(out.status, out.headers, out.body)
  end
  if action == nil then
    action, kind, hint = cooldown.classify(out.status, out.headers, out.body)
  elseif kind == nil then
    -- A provider that only says success/retry/fatal: default kinds.
    local _, k, h = cooldown.classify(out.status, out.headers, out.body)
    kind, hint = k, hint or h
    if action == "fatal" then kind = "neutral" end
  end
  if not cooldown.KINDS[kind] then kind = "neutral" end
  -- out.final: the pipeline has no retries left for this kind of failure
  -- (streaming.bootstrap-retries); the account still cools down.
  if out.final and action == "retry" then action = "fatal" end
  return action, kind, hint
end
_M.classify = classify

-- ---- session affinity -----------------------------------------------------

local function first_user_text(body)
  local msgs = type(body) == "table" and (body.messages or body.contents or body.input)
  if type(msgs) ~= "table" then return nil end
  for _, m in ipairs(msgs) do
    if type(m) == "table" and (m.role == "user" or m.role == nil) then
      local c = m.content or m.parts
      if type(c) == "string" then return c end
      if type(c) == "table" then
        for _, part in ipairs(c) do
          if type(part) == "table" and type(part.text) == "string" then return part.text end
        end
      end
    end
  end
  return nil
end

-- X-Claude-Code-Session-Id, session-id / session_id, prompt_cache_key, or
-- a digest of the first user message.
function _M.affinity_key(ctx)
  local h = ctx.info and ctx.info.headers or {}
  local k = h["x-claude-code-session-id"] or h["session-id"] or h["session_id"]
  if k and k ~= "" then return "s:" .. k end
  local body = ctx.body
  if type(body) == "table" and type(body.prompt_cache_key) == "string" and body.prompt_cache_key ~= "" then
    return "c:" .. body.prompt_cache_key
  end
  local text = first_user_text(body)
  if text then return "m:" .. cpx.sha256_hex(text) end
  return nil
end

-- ---- the cooldown answer --------------------------------------------------

-- Fact sheet 1.6: 429, Retry-After, and
-- {"error":{"code":"model_cooldown","message":..,"model","provider",
--  "reset_time":"1m2s","reset_seconds":62}}
function _M.cooldown_outcome(model, targets, wait)
  local secs = ceil(wait)
  if secs < 1 then secs = 1 end
  local providers, n, last = {}, 0, nil
  for _, t in ipairs(targets) do
    local name = t.entry and t.entry.name or t.provider
    if not providers[name] then
      providers[name] = true
      n = n + 1
      last = name
    end
  end
  local provider = n == 1 and last or nil
  local msg = "All credentials for model " .. model .. " are cooling down"
  if provider then msg = msg .. " via provider " .. provider end
  local body = { error = { code = "model_cooldown", message = msg, model = model, provider = provider,
                           reset_time = cooldown.go_duration(secs), reset_seconds = secs } }
  return { status = 429, own = true, type = "rate_limit_error", code = "model_cooldown", message = msg,
           raw_body = json.encode(body), extra = { ["Retry-After"] = tostring(secs) },
           cooldown = { model = model, provider = provider, seconds = secs } }
end

-- The cooldown answer in the client's envelope. OpenAI clients get the
-- fact sheet's body unchanged (CLIProxyAPI's tools read its code); an
-- Anthropic client gets Anthropic's error with the same fields inside, and
-- a Gemini client Google's, with a RetryInfo that Gemini CLI waits for.
function _M.cooldown_body(fmt, res)
  local c = res.cooldown
  if not c or (fmt ~= "claude" and fmt ~= "gemini") then return res.raw_body end
  if fmt == "claude" then
    return json.encode(json.object({ { "type", "error" }, { "error", json.object({
      { "type", "rate_limit_error" }, { "message", res.message }, { "code", "model_cooldown" },
      { "model", c.model }, { "provider", c.provider }, { "reset_time", cooldown.go_duration(c.seconds) },
      { "reset_seconds", c.seconds } }) } }))
  end
  return json.encode({ error = json.object({
    { "code", 429 }, { "message", res.message }, { "status", "RESOURCE_EXHAUSTED" },
    { "details", { json.object({ { "@type", "type.googleapis.com/google.rpc.RetryInfo" },
                                 { "retryDelay", c.seconds .. "s" } }) } } }) })
end

-- ---- one account for a side request ---------------------------------------

-- pool.choose(app, model, eligible) -> target, release | nil
-- One account for a request that is not inference (a token count): the
-- pool's own pick (the group's strategy, round-robin by default, cooling
-- accounts skipped) among the targets that eligible(target) accepts; nil
-- when none is open. The caller calls release() once it is done: it
-- reports "neutral", so a count neither cools an account nor reopens one
-- (its limits are not inference's, and it is advisory).
function _M.choose(app, model, eligible)
  local targets, _, group = app.registry:lookup(model)
  if not targets or not group then return nil end
  local skip = {}
  for member, t in pairs(targets) do
    if not eligible(t) then skip[#skip + 1] = member end
  end
  local member, handle = pick(group, skip)
  if not member then return nil end
  local t = targets[member]
  -- (past the C side's exclude bound a skipped member may still come back)
  if not t or not eligible(t) then
    report(handle, "neutral")
    return nil
  end
  return t, function() report(handle, "neutral") end
end

-- ---- run ------------------------------------------------------------------

function _M.run(app, ctx, model, attempt)
  local cfg = app.config
  local targets, alias, group = app.registry:lookup(model)
  if not targets or not group then
    return { status = 502, own = true, type = "server_error", code = "unknown_provider",
             message = "unknown provider for model " .. tostring(model) }
  end
  -- request-retry: global, overridable per entry (request-retry) or per
  -- credential file (request_retry). The rounds run as long as any target
  -- still has retries; a target past its own count sits the round out.
  local global = cfg["request-retry"] or 0
  local function retries_of(t)
    local e = t.entry
    local v = type(e) == "table" and (e["request-retry"] or e.request_retry) or nil
    return type(v) == "number" and v or global
  end
  local rounds = 1 + global
  for _, t in pairs(targets) do
    local r = 1 + retries_of(t)
    if r > rounds then rounds = r end
  end
  local max_creds = cfg["max-retry-credentials"] or 0
  local max_wait = cfg["max-retry-interval"] or 0
  local akey
  if cfg.routing and cfg.routing["session-affinity"] == true then akey = _M.affinity_key(ctx) end
  local last, tries = nil, 0
  ctx.attempts = ctx.attempts or {}
  -- The C fast path already sent the first attempt (info.lane): its pick
  -- is this round's first, its answer the attempt's outcome.
  local pre = ctx.info and ctx.info.lane
  if pre then
    ctx.info.lane = nil
    if pre.group ~= group or not targets[pre.member] then
      report(pre.handle, "neutral")
      pre = nil
    end
  end
  local overloaded = {} -- provider keys that answered 529 in this request
  for round = 1, rounds do
    local tried, n = {}, 0
    local failures, overloads = 0, 0
    if round > 1 then
      for member, t in pairs(targets) do
        if round > 1 + retries_of(t) or overloaded[provider_key(t)] then tried[#tried + 1] = member end
      end
    end
    local wait
    while max_creds == 0 or n < max_creds do
      local member, handle
      if pre then
        member, handle = pre.member, pre.handle
        ctx.lane_attempt = pre
        pre = nil
      else
        member, handle = pick(group, tried, akey)
      end
      if not member then
        wait = handle
        break
      end
      n = n + 1
      tries = tries + 1
      tried[#tried + 1] = member
      local t = targets[member]
      local ok, out = pcall(attempt, t, t.key)
      if not ok then
        report(handle, "neutral")
        error(out, 0)
      end
      local action, kind, hint = classify(app, t, out)
      -- A transfer cut because the client left says nothing about the
      -- account: no cooldown for "client closed request".
      if out.err and ctx.client_gone and ctx.client_gone() then kind = "neutral" end
      local cool = report(handle, kind == "overloaded" and "neutral" or kind, hint)
      local a = ctx.attempts
      a[#a + 1] = { account = t.account, model = t.upstream_model, status = out.status, err = out.err,
                    action = action, cooldown = cool }
      if action == "success" or action == "fatal" then return out end
      failures = failures + 1
      if kind == "overloaded" then
        overloads = overloads + 1
        overloaded[provider_key(t)] = true
      end
      -- Skip the accounts of overloaded providers for the rest of the round.
      if next(overloaded) then
        local seen = {}
        for _, m in ipairs(tried) do seen[m] = true end
        for m, other in pairs(targets) do
          if not seen[m] and overloaded[provider_key(other)] then tried[#tried + 1] = m end
        end
      end
      if cool > 0 then
        log("info", "pool: " .. t.account .. " / " .. t.upstream_model .. " cooling " .. cool .. " s after "
          .. tostring(out.status or out.err))
      end
      last = out
      if ctx.client_gone and ctx.client_gone() then return last end
    end
    if failures > 0 and overloads == failures then break end -- only overload
    if tries == 0 and wait and wait > 0 then
      -- Nothing could be tried: every account is cooling.
      if round < rounds and max_wait > 0 and wait <= max_wait then
        sleep(wait)
      else
        return _M.cooldown_outcome(alias, targets, wait)
      end
    elseif round < rounds then
      local w = group_wait(group)
      if max_wait <= 0 or w > max_wait then break end
      if w > 0 then sleep(w) end
      if ctx.client_gone and ctx.client_gone() then break end
    end
  end
  if last then return last end
  local w = group_wait(group)
  if w > 0 then return _M.cooldown_outcome(alias, targets, w) end
  return { status = 502, own = true, type = "server_error", code = "unknown_provider",
           message = "unknown provider for model " .. tostring(model) }
end

return _M
