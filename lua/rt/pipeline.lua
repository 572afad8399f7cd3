-- rt.pipeline: one inference request from the client's decoded body to the
-- upstream and back. rt.pool chooses targets and decides on retries; for
-- each attempt the body is translated through the hub (or passed through
-- when both sides speak the same format), sent, and classified. The first
-- success is answered as JSON or streamed through the hub's stream encoder.
local cpx = require("cpx")
local json = require("lib.json")
local ir = require("lib.ir")
local http = require("rt.http")
local pool = require("rt.pool")
local payload = require("rt.payload")
local mw = require("rt.middleware")
local translators = require("translators")
local count = require("rt.count")
local record = require("rt.record")
local reqlog = require("rt.reqlog")
local refresh = require("rt.refresh")

local provider_util = require("lib.provider_util")
local log = cpx.log
local type = type
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local pcall = pcall

local _M = {}

-- Upstream streams are SSE for every format (Gemini is asked for alt=sse).
local FRAMING = "sse"
-- [record] bytes kept from each end of a stream relayed untouched: the
-- usage is in its first events (Claude's message_start) and its last.
local RECORD_CAPTURE = 8192

local function stream_headers()
  return http.headers("text/event-stream", { ["Cache-Control"] = "no-cache", ["X-Accel-Buffering"] = "no" })
end

local function has_hook(chain, phase)
  return chain ~= nil and chain.hooks ~= nil and chain.hooks[phase] ~= nil
end

-- ---- stream bootstrap --------------------------------------------------------

-- Which first events open a stream and which are errors is decided in one
-- place for both paths: cpx_stream_event_kind (runtime/core/cpx_json_scan.c),
-- which the C relay calls while it holds a stream and this file through
-- cpx.json.first_event. Only the status and the error body are made here.
local first_event = cpx.json.first_event
local BOOTSTRAP_MAX_EVENTS = 16

local function error_status(e)
  local t = type(e) == "table" and (e.type or e.status or e.code) or nil
  if type(e) == "table" and type(e.code) == "number" then return e.code end
  t = type(t) == "string" and t:lower() or ""
  if t:find("overloaded", 1, true) then return 529 end
  if t:find("rate_limit", 1, true) or t:find("resource_exhausted", 1, true)
      or t:find("usage_limit", 1, true) or t:find("quota", 1, true) then
    return 429
  end
  if t:find("invalid_request", 1, true) or t:find("invalid_argument", 1, true) then return 400 end
  return 500
end

-- Judges the first real event of a stream: nil when it is not an error,
-- else { status, body } with body an error envelope of the upstream's
-- format.
local function bootstrap_event(ev, upfmt)
  if first_event(upfmt, ev.event, ev.data) ~= "error" then return nil end
  local d = json.decode(ev.data)
  if type(d) ~= "table" then return nil end
  if upfmt == "claude" then
    return { status = error_status(d.error), body = ev.data }
  elseif upfmt == "openai_responses" then
    local e = (type(d.response) == "table" and d.response.error) or d.error or d
    return { status = error_status(e), body = json.encode({ error = e }) }
  end
  return { status = error_status(d.error), body = ev.data }
end

-- Peeks at the upstream's first events. Returns nil when the first real
-- event is not an error (or nothing could be seen), else what
-- bootstrap_event says.
local function bootstrap(up, upfmt)
  for _ = 1, BOOTSTRAP_MAX_EVENTS do
    local ev = up:peek()
    if not ev then return nil end
    if first_event(upfmt, ev.event, ev.data) ~= "handshake" then return bootstrap_event(ev, upfmt) end
  end
  return nil
end

-- streaming.keepalive-seconds: an SSE comment when the stream is quiet
-- (safe for every SSE client; a JSON-array Gemini stream gets none).
local KEEPALIVE = { keepalive_frame = ": keep-alive\n\n" }

local function keepalive_opts(app, fmt, opts)
  local s = app.config.streaming
  local sec = s and tonumber(s["keepalive-seconds"]) or 0
  if sec <= 0 or (fmt == "gemini" and opts.gemini_array) then return nil end
  return { keepalive = sec, keepalive_frame = KEEPALIVE.keepalive_frame }
end

local function bootstrap_retries(app)
  local s = app.config.streaming
  return s and tonumber(s["bootstrap-retries"]) or 0
end

-- A stream that failed at its first event: one bootstrap retry used up.
local function bootstrap_failure(app, ctx, bad, target, upfmt, actx)
  ctx.bootstrap_left = (ctx.bootstrap_left or bootstrap_retries(app)) - 1
  log("warn", "upstream", target.owner, "failed before its first event:", bad.status)
  return { status = bad.status, headers = {}, body = bad.body, upfmt = upfmt, ctx = actx,
           final = ctx.bootstrap_left < 0 }
end

-- The outcome of the attempt the C fast path made (rt.lane), as attempt()
-- would have produced it.
local function lane_outcome(app, ctx, lane, target, upfmt, actx)
  -- [record] the C fast path made this attempt: the provider's prepare
  -- gives its URL and headers (as rt.lane built them); its body was the
  -- client's with the model set
  local p = app.providers[target.provider]
  local pok, u = pcall(p.prepare, actx, { entry = target.entry, key = target.key,
                                          upstream_model = target.upstream_model }, "", ctx.stream)
  u = pok and type(u) == "table" and u or {}
  reqlog.attempt(record.of(ctx.info), {
    method = "POST", url = u.url, headers = u.headers,
    body = "(sent by the C relay: the client's body as written"
      .. (upfmt ~= "gemini" and (", model " .. tostring(target.upstream_model)) or "") .. ")",
  }, lane.status, lane.headers, lane.body, lane.err or (lane.event and "stream could not be relayed") or nil)
  if lane.err then
    log("warn", "upstream", target.owner, "failed:", lane.err)
    return { err = lane.err, upfmt = upfmt, ctx = actx }
  end
  if lane.event then
    local bad = bootstrap_event(lane.event, upfmt)
    if bad then return bootstrap_failure(app, ctx, bad, target, upfmt, actx) end
    -- The C side only hands over what bootstrap_event calls an error.
    return { err = "upstream stream could not be relayed", upfmt = upfmt, ctx = actx }
  end
  local status = lane.status
  if p.error_status then status = p.error_status(status, lane.headers, lane.body) or status end
  return { status = status, headers = lane.headers or {}, body = lane.body or "", upfmt = upfmt, ctx = actx }
end

-- Answers cliproxy's own error in the client's format.
local function own_error(req, fmt, e, extra)
  return http.error(req, fmt, e.status, e.message, e.type, e.code, extra)
end

-- An upstream error answer in the client's format. Same format: the
-- upstream's own JSON passes through with its status.
local function answer_error(req, fmt, out, ctx)
  local status, body, uh = out.status, out.body or "", out.headers or {}
  local extra = { ["Retry-After"] = uh["retry-after"] }
  if fmt == out.upfmt and json.decode(body) then
    reqlog.response(record.of_req(req), body) -- [record]
    return req:respond(status, http.headers(uh["content-type"] or "application/json", extra), body)
  end
  local ok, cb, st = pcall(translators.error, fmt, out.upfmt, status, body, out.ctx or ctx)
  if not ok or type(cb) ~= "table" then
    if not ok then log("warn", "error translation failed:", cb) end
    return http.error(req, fmt, status >= 400 and status or 502, "upstream returned status " .. status)
  end
  return http.json(req, st or status, cb, extra)
end

-- Collects a streamed Responses body into the response.completed object
-- (the Codex backend only streams). A final response whose `output` is
-- empty gets the response.output_item.done items, in output_index order
-- (the ChatGPT backend may leave it empty, as CLIProxyAPI also handles).
local function collect_responses(text)
  local frames = cpx.sse.new(64 * 1024 * 1024):feed(text .. "\n\n")
  local last
  local items, n = {}, 0
  for _, ev in ipairs(frames or {}) do
    local d = json.decode(ev.data)
    if type(d) == "table" then
      if d.type == "response.completed" or d.type == "response.incomplete" or d.type == "response.failed" then
        last = d.response
      elseif d.type == "response.output_item.done" and type(d.item) == "table" then
        n = n + 1
        items[n] = { i = tonumber(d.output_index) or n, n = n, item = d.item }
      end
    end
  end
  if type(last) == "table" and n > 0 and (type(last.output) ~= "table" or #last.output == 0) then
    table.sort(items, function(a, b) if a.i ~= b.i then return a.i < b.i end return a.n < b.n end)
    local out = json.array({})
    for k, it in ipairs(items) do out[k] = it.item end
    last.output = out
  end
  return last
end

-- One framed event back to SSE bytes (after a provider's stream_fixup
-- changed it).
local function sse_frame(ev)
  local out = {}
  if ev.event and ev.event ~= "" then out[#out + 1] = "event: " .. ev.event .. "\n" end
  for line in (ev.data .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = "data: " .. line .. "\n" end
  out[#out + 1] = "\n"
  return table.concat(out)
end

-- opts: { model = <client model>, stream = bool, gemini_array = bool,
--         endpoint = string, force_hub = bool,
--         body_filter = fn(tbl) -> tbl, frame_filter = fn(frame) -> frame }
function _M.infer(app, req, info, fmt, body, opts)
  local model = opts.model
  -- [record] what the request asked for; filled in as the pipeline learns
  local rec = record.of(info) or record.begin(info, fmt)
  rec.model = type(model) == "string" and model or nil
  rec.stream = opts.stream and true or false
  if type(model) ~= "string" or model == "" then
    return http.error(req, fmt, 400, "model is required")
  end
  local chain = app.middleware
  local stream = opts.stream and true or false
  -- nonstream-keepalive-interval: blank lines while the answer is awaited
  -- (the first one commits to status 200; an error then goes in the body).
  local nka = not stream and app.config["nonstream-keepalive-interval"] or 0
  if nka > 0 then req:keepalive(nka) end
  -- body may be nil: the route passed only the raw bytes (opts.raw) and the
  -- table is decoded when something needs it (translation, a rewrite hook,
  -- payload rules, a provider fix-up); a plain passthrough never does.
  local raw = opts.raw
  -- A body the decoder refuses answers 400 with the decoder's reason (byte
  -- offset, invalid UTF-8, depth, number out of range) instead of becoming
  -- {} and failing later as a missing field.
  local function need_body()
    if body == nil then
      local err
      body, err = json.decode(raw)
      if type(body) ~= "table" or json.is_array(body) then
        body = nil
        return nil, "invalid JSON body: " .. (err or "expected an object")
      end
    end
    return body
  end
  local ctx = { model = model, stream = stream, request_id = info.id, info = info, body = body, config = app.config,
                gemini_array = opts.gemini_array, client_format = fmt, endpoint = opts.endpoint,
                client_gone = function() return req:closed() end }
  if has_hook(chain, "rewrite") then
    local berr
    ctx.body, berr = need_body()
    if not ctx.body then return http.error(req, fmt, 400, berr) end
    mw.run(chain, "rewrite", ctx, ctx.body)
    body = ctx.body
    raw = nil
  end
  model = ctx.model
  local _, think = ir.parse_model(model)
  local wants_chunks = mw.wants_chunks(chain)

  local function attempt(target, key)
    local provider = app.providers[target.provider]
    local upfmt = provider.format
    local actx = json.shallow_copy(ctx)
    actx.upstream_format = upfmt
    actx.target = target
    local lane = ctx.lane_attempt
    if lane then
      ctx.lane_attempt = nil
      return lane_outcome(app, ctx, lane, target, upfmt, actx)
    end
    local passthrough = upfmt == fmt and not think and not wants_chunks and not opts.force_hub
      and not (fmt == "gemini" and opts.gemini_array and stream)
    local tb, out
    local upstream_stream = stream or provider.force_stream or false
    -- A provider with a fixup may still say this raw body needs none
    -- (raw_ok), which keeps the no-decode path.
    local raw_ok = passthrough and raw and not app.payload_active
      and (not provider.fixup or (provider.raw_ok and provider.raw_ok(actx, target, raw)))
    if raw_ok then
      -- The fast path: same format, only the model rewritten, no decode.
      out = fmt == "gemini" and raw or json.set_string(raw, "model", target.upstream_model)
    elseif passthrough then
      local b, berr = need_body()
      if not b then return { status = 400, own = true, message = berr } end
      tb = json.shallow_copy(b)
      if fmt ~= "gemini" then tb.model = target.upstream_model end
    else
      local b, berr = need_body()
      if not b then return { status = 400, own = true, message = berr } end
      actx.upstream_model = think and (target.upstream_model .. model:match("%b()$")) or target.upstream_model
      local err
      tb, err = translators.request(fmt, upfmt, body, actx)
      if not tb then
        return { status = 400, own = true, message = err or "cannot translate request" }
      end
    end
    if tb then
      if upfmt ~= "gemini" then tb.stream = upstream_stream or nil end
      if provider.fixup then tb = provider.fixup(tb, actx) or tb end
      if app.payload_active then tb = payload.apply(app.config.payload, tb, model, target.upstream_model, upfmt) end
      out = json.encode(tb)
    end
    if not out then return { status = 500, own = true, message = "cannot encode upstream request" } end
    -- A provider's own limit (Qwen's requests per minute) may refuse this
    -- account before anything is sent: an answer the pool classifies.
    if provider.admit then
      local deny = provider.admit(actx, target)
      if deny then
        deny.upfmt, deny.ctx = upfmt, actx
        return deny
      end
    end
    local ureq = provider.prepare(actx, { entry = target.entry, key = key,
                                          upstream_model = actx.upstream_model or target.upstream_model },
                                  out, upstream_stream)
    mw.run(chain, "before_upstream", actx, ureq)
    -- (a provider with several hosts, Antigravity, has the others tried)
    local up, err = provider_util.fetch(ureq, target.owner)
    if not up then
      log("warn", "upstream", target.owner, "failed:", err)
      reqlog.attempt(rec, ureq, nil, nil, nil, tostring(err)) -- [record]
      return { err = tostring(err), upfmt = upfmt, ctx = actx }
    end
    local status = up:status()
    -- Header tables cost a parse: build one only when someone looks.
    local headers
    if has_hook(chain, "on_headers") or status < 200 or status >= 300 then
      headers = up:headers()
      mw.run(chain, "on_headers", actx, status, headers)
    end
    if status < 200 or status >= 300 then
      local eb = up:body()
      up:close()
      reqlog.attempt(rec, ureq, status, headers, eb) -- [record]
      -- A provider may read an error answer as another status (Codex:
      -- "model at capacity" is a 429).
      if provider.error_status then status = provider.error_status(status, headers, eb) or status end
      return { status = status, headers = headers, body = eb, upfmt = upfmt, ctx = actx }
    end
    if stream then
      -- Hold the client's headers until the first real upstream event: an
      -- error there is still a clean HTTP error, or another account.
      local bad = bootstrap(up, upfmt)
      if bad then
        up:close()
        return bootstrap_failure(app, ctx, bad, target, upfmt, actx)
      end
    elseif upstream_stream then
      -- A non-stream client of a stream-only upstream (Codex): a stream
      -- that fails at its first event is an upstream error answer like any
      -- other (classified, cooled, retried elsewhere), not a 200.
      local bad = bootstrap(up, upfmt)
      if bad then
        up:close()
        return { status = bad.status, headers = {}, body = bad.body, upfmt = upfmt, ctx = actx }
      end
    end
    reqlog.attempt(rec, ureq, status, headers or (reqlog.all() and up:headers()) or nil) -- [record] body below
    return { ok = true, up = up, upfmt = upfmt, ctx = actx, passthrough = passthrough,
             provider = provider, upstream_stream = upstream_stream }
  end

  -- OAuth accounts (rt.refresh): an expired token is refreshed before it
  -- is sent, and a 401 gets one refresh and one retry on the same account
  -- before the pool sees it (and cools the account down as for any 401).
  -- Kept outside attempt() so the pool's accounting sees one attempt.
  local function attempt_oauth(target, key)
    if not target.credential then return attempt(target, key) end
    key = refresh.fresh_key(app, target, key)
    local r = attempt(target, key)
    if r.status == 401 and not req:closed() then
      local nk = refresh.after_401(app, target, key)
      if nk then r = attempt(target, nk) end
    end
    return r
  end

  local res = pool.run(app, ctx, model, attempt_oauth)
  -- [record] the account that answered last, the attempts, the alias
  rec.attempts = ctx.attempts and #ctx.attempts or 0
  if model ~= rec.model then rec.alias = model end
  if res and res.ctx then record.note_target(rec, res.ctx.target) end
  if res and not res.ok then rec.error = res.err or res.message end
  if req:closed() then return end
  if not res then
    return http.error(req, fmt, 502, "no upstream available for model " .. model)
  end
  if not res.ok then
    -- every account cooling: the fact sheet's model_cooldown answer
    if res.raw_body then return http.json(req, res.status, pool.cooldown_body(fmt, res), res.extra) end
    if res.own then
      return own_error(req, fmt, http.error_info(res.status, res.message, res.type, res.code), res.extra)
    end
    if res.err then
      return http.error(req, fmt, 502, "upstream request failed: " .. res.err, "server_error", "upstream_error")
    end
    return answer_error(req, fmt, res, ctx)
  end

  local up, upfmt, actx = res.up, res.upfmt, res.ctx
  -- A provider that changed this attempt's request in a way the answer
  -- must undo (the Claude cloak's tool names) set actx.fixup_response; its
  -- hooks then see the upstream's own answer, before any translation.
  local rfix = actx.fixup_response and res.provider.response_fixup or nil
  local sfix = actx.fixup_response and res.provider.stream_fixup or nil
  if stream then
    -- Claude clients read input usage from message_start, which no other
    -- upstream reports up front: estimate it locally (in the threadpool).
    if fmt == "claude" and upfmt ~= "claude" and not res.passthrough and body then
      actx.input_estimate = count.estimate("claude", body, model, app.config["count-tokens"])
    end
    -- Gemini without alt=sse streams a JSON array, not SSE.
    req:start(200, opts.gemini_array and http.headers("application/json") or stream_headers())
    mw.defer_log(actx)
    -- [record] the client has its head at the first real event; the
    -- record ends with the stream (on_end) or the client (on_abort)
    rec.ttft_ms = record.elapsed_ms(rec)
    rec.deferred = true
    local function rec_abort(why, captured)
      if captured then rec.usage = record.usage_from_stream(upfmt, captured) end
      rec.error = why
      record.finish(rec, 499)
    end
    if res.passthrough then
      local codec = translators.codecs[fmt]
      -- Raw bytes, unless a provider's stream_fixup must see each event
      -- (then re-framed as SSE).
      local po = keepalive_opts(app, fmt, opts) or {}
      po.capture = RECORD_CAPTURE -- [record]
      local handler = {
        on_end = function(e, captured)
          local r = { status = 200, error = e }
          mw.run(chain, "after", actx, r)
          mw.run(chain, "log", actx, r)
          rec.usage = record.usage_from_stream(upfmt, captured)
          reqlog.upstream_body(rec, captured) -- [record] the stream's two ends
          record.finish(rec, 200, e)
          if e then return codec.stream_error({ status = 502, type = "server_error", message = e }, {}, actx) end
        end,
        on_abort = rec_abort,
      }
      if sfix then handler.on_event = function(ev) return sse_frame(sfix(ev, actx) or ev) end end
      req:pipe(up, handler, sfix and FRAMING or "raw", po)
      if req:closed() then rec_abort("client closed request") end -- [record]
      return
    end
    if wants_chunks then
      actx.ir_filter = function(ev) return mw.run(chain, "on_chunk", actx, ev) end
    end
    local s = translators.stream(fmt, upfmt, actx)
    local filter = opts.frame_filter
    local function out_frames(frames)
      if not filter then return frames end
      local o = {}
      for _, f in ipairs(frames) do
        local x = filter(f)
        if x then o[#o + 1] = x end
      end
      return o
    end
    req:pipe(up, {
      on_event = function(ev)
        if sfix then ev = sfix(ev, actx) or ev end
        return out_frames(s:feed(ev))
      end,
      on_end = function(e)
        local frames
        if e then
          frames = s:fail({ status = 502, type = "server_error", message = e })
        else
          frames = s:finish()
        end
        local r = { status = 200, usage = s.usage, stop = s.stop, error = e }
        mw.run(chain, "after", actx, r)
        mw.run(chain, "log", actx, r)
        rec.usage = s.usage -- [record]
        record.finish(rec, 200, e)
        return out_frames(frames)
      end,
      on_abort = function(why)
        rec.usage = s.usage
        rec_abort(why)
      end,
    }, FRAMING, keepalive_opts(app, fmt, opts))
    if req:closed() then rec_abort("client closed request") end -- [record]
    return
  end

  local rb, berr = up:body()
  reqlog.upstream_body(rec, rb) -- [record]
  if not rb then
    if req:closed() then return end
    return http.error(req, fmt, 502, "upstream body failed: " .. tostring(berr), "server_error", "upstream_error")
  end
  local decoded
  if res.upstream_stream and upfmt == "openai_responses" then
    decoded = collect_responses(rb)
  elseif rfix or not (res.passthrough and not opts.body_filter) then
    decoded = json.decode(rb)
  end
  if rfix and type(decoded) == "table" then decoded = rfix(decoded, actx) or decoded end
  -- [record] usage of a non-stream answer
  if res.passthrough and not opts.body_filter then
    rec.usage = decoded and record.usage_of(upfmt, decoded) or record.usage_from_body(upfmt, rb)
  end
  if res.passthrough and not opts.body_filter then
    if decoded then
      mw.run(chain, "after", actx, { status = 200, body = decoded })
      return http.json(req, 200, decoded)
    end
    reqlog.response(rec, rb) -- [record]
    return req:respond(200, http.headers(up:headers()["content-type"] or "application/json"), rb)
  end
  if type(decoded) ~= "table" then
    return http.error(req, fmt, 502, "upstream returned an unreadable body", "server_error", "upstream_error")
  end
  local cb, terr
  if res.passthrough then
    cb = decoded
  else
    cb, terr = translators.response(fmt, upfmt, decoded, actx)
  end
  if not cb then
    return http.error(req, fmt, 502, terr or "cannot translate response", "server_error", "upstream_error")
  end
  if opts.body_filter then cb = opts.body_filter(cb) end
  rec.usage = actx.usage or (res.passthrough and record.usage_of(upfmt, decoded)) or nil -- [record]
  mw.run(chain, "after", actx, { status = 200, body = cb, usage = actx.usage })
  return http.json(req, 200, cb)
end

return _M
