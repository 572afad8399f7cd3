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
local concat = table.concat

local _M = {}

-- Upstream streams are SSE for every format (Gemini is asked for alt=sse).
local FRAMING = "sse"
-- [record] bytes kept from each end of a stream relayed untouched: the
-- usage is in its first events (Claude's message_start) and its last.
local RECORD_CAPTURE = 8192

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

-- ---- one request, step by step ----------------------------------------------
--
-- infer() runs these steps in order; each reads and fills the request's
-- `job` table (built by new_job):
--   new_job         what the client asked for, its record, the context
--   run_rewrite     the middleware "rewrite" phase (decodes the body)
--   pool.run        with attempt_oauth -> attempt -> upstream_body, send
--   note_outcome    the record's account, attempts, alias, error
--   answer_failure  no success: cliproxy's own or the upstream's error
--   answer_stream   a stream: raw bytes (stream_raw) or through the hub
--                   (stream_hub)
--   answer_body     a JSON answer, translated unless it passes through

-- The decoded body, decoded now if the route passed only the raw bytes
-- (job.raw) and something needs the table (translation, a rewrite hook,
-- payload rules, a provider fix-up); a plain passthrough never does. A
-- body the decoder refuses gives nil and the decoder's reason (byte
-- offset, invalid UTF-8, depth, number out of range) instead of becoming
-- {} and failing later as a missing field.
local function need_body(job)
  if job.body == nil then
    local body, err = json.decode(job.raw)
    if type(body) ~= "table" or json.is_array(body) then
      return nil, "invalid JSON body: " .. (err or "expected an object")
    end
    job.body = body
  end
  return job.body
end

-- For translation: the body with the subtrees the client's codec only
-- carries left as spans (translators.decode_request, kept in job.sbody),
-- unless the full table exists already or payload rules may edit anywhere.
local function span_body(job)
  if job.body ~= nil or job.app.payload_active then return need_body(job) end
  if job.sbody == nil then
    local body, err = translators.decode_request(job.fmt, job.raw)
    if type(body) ~= "table" or json.is_array(body) then
      return nil, "invalid JSON body: " .. (err or "expected an object")
    end
    job.sbody = body
  end
  return job.sbody
end

-- job: { app, req, info, fmt = client format, opts, rec, chain, stream,
--        body = decoded table or nil, raw = client bytes or nil,
--        sbody = the body decoded with spans, for translation,
--        model = client model (after rewrite), think, wants_chunks,
--        ctx = the request's middleware/translator context }
local function new_job(app, req, info, fmt, body, opts, rec)
  local stream = opts.stream and true or false
  local job = { app = app, req = req, info = info, fmt = fmt, opts = opts, rec = rec,
                chain = app.middleware, stream = stream, body = body, raw = opts.raw, model = opts.model }
  job.ctx = { model = opts.model, stream = stream, request_id = info.id, info = info, body = body,
              config = app.config, gemini_array = opts.gemini_array, client_format = fmt,
              endpoint = opts.endpoint, client_gone = function() return req:closed() end }
  return job
end

-- The "rewrite" phase may change the body and the model. Returns false
-- when it answered the client (a body that cannot be decoded).
local function run_rewrite(job)
  local ctx = job.ctx
  if has_hook(job.chain, "rewrite") then
    local berr
    ctx.body, berr = need_body(job)
    if not ctx.body then
      http.error(job.req, job.fmt, 400, berr)
      return false
    end
    mw.run(job.chain, "rewrite", ctx, ctx.body)
    job.body = ctx.body
    job.raw = nil
  end
  job.model = ctx.model
  local _, think = ir.parse_model(job.model)
  job.think = think
  job.wants_chunks = mw.wants_chunks(job.chain)
  return true
end

-- The bytes to send upstream for this attempt, or nil and an outcome
-- (cliproxy's own error) for the pool.
local function upstream_body(job, provider, target, actx, passthrough, upstream_stream)
  local app, fmt, upfmt = job.app, job.fmt, actx.upstream_format
  local tb, out
  -- A provider with a fixup may still say this raw body needs none
  -- (raw_ok), which keeps the no-decode path.
  local raw_ok = passthrough and job.raw and not app.payload_active
    and (not provider.fixup or (provider.raw_ok and provider.raw_ok(actx, target, job.raw)))
  if raw_ok then
    -- The fast path: same format, only the model rewritten, no decode.
    out = fmt == "gemini" and job.raw or json.set_string(job.raw, "model", target.upstream_model)
  elseif passthrough then
    -- A provider whose fix-up edits only top-level members does it on the
    -- bytes (nil: an escaped key or a bad body, the table path decides).
    if job.raw and not app.payload_active and provider.raw_fixup then
      out = provider.raw_fixup(job.raw, actx, { model = fmt ~= "gemini" and target.upstream_model or nil,
                                                stream = fmt ~= "gemini" and upstream_stream or nil })
    end
    if not out then
      local b, berr = need_body(job)
      if not b then return nil, { status = 400, own = true, message = berr } end
      tb = json.shallow_copy(b)
      if fmt ~= "gemini" then tb.model = target.upstream_model end
    end
  else
    local b, berr = span_body(job)
    if not b then return nil, { status = 400, own = true, message = berr } end
    actx.upstream_model = job.think and (target.upstream_model .. job.model:match("%b()$"))
      or target.upstream_model
    local err
    tb, err = translators.request(fmt, upfmt, b, actx)
    if not tb then
      return nil, { status = 400, own = true, message = err or "cannot translate request" }
    end
  end
  if tb then
    if upfmt ~= "gemini" then tb.stream = upstream_stream or nil end
    if provider.fixup then tb = provider.fixup(tb, actx) or tb end
    if app.payload_active then
      tb = payload.apply(app.config.payload, tb, job.model, target.upstream_model, upfmt)
    end
    out = json.encode(tb)
  end
  if not out then return nil, { status = 500, own = true, message = "cannot encode upstream request" } end
  return out
end

-- Sends one attempt's request and classifies what came back: a transport
-- error, an error status, a stream failing at its first event, or success
-- (the upstream handle, not yet read).
local function send(job, provider, target, key, actx, out, upstream_stream, passthrough)
  local app, chain, rec, upfmt = job.app, job.chain, job.rec, actx.upstream_format
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
  if job.stream then
    -- Hold the client's headers until the first real upstream event: an
    -- error there is still a clean HTTP error, or another account.
    local bad = bootstrap(up, upfmt)
    if bad then
      up:close()
      return bootstrap_failure(app, job.ctx, bad, target, upfmt, actx)
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

-- Claude clients read input usage from message_start, which no other
-- upstream reports up front: it is estimated locally. The count runs in a
-- task while the upstream thinks (a 78 KB Claude Code body is about a
-- millisecond in the threadpool), not between its first event and the
-- client; answer_stream takes the result, waiting only if it is not in.
local function needs_estimate(job, res_passthrough, upfmt)
  return job.stream and job.fmt == "claude" and upfmt ~= "claude" and not res_passthrough
end

local function count_estimate(job)
  local cbody = job.body or job.sbody -- (the spans count as their bytes)
  if not cbody then return nil end
  local ok, n = pcall(count.estimate, "claude", cbody, job.model, job.app.config["count-tokens"])
  return ok and n or nil
end

local function start_estimate(job)
  if job.estimate then return end
  local box = {}
  job.estimate = box
  local started = cpx.timer and cpx.timer.at(0, function(premature)
    if not premature then box.n = count_estimate(job) end
    box.done = true
  end)
  if not started then box.inline = true end
end

local function take_estimate(job)
  local box = job.estimate
  if not box or box.inline then return count_estimate(job) end
  while not box.done do
    if not cpx.sleep(0) then return nil end -- the client left
  end
  return box.n
end

-- One attempt on one account: the outcome the pool classifies.
local function attempt(job, target, key)
  local app, ctx, fmt, opts = job.app, job.ctx, job.fmt, job.opts
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
  local passthrough = upfmt == fmt and not job.think and not job.wants_chunks and not opts.force_hub
    and not (fmt == "gemini" and opts.gemini_array and job.stream)
  local upstream_stream = job.stream or provider.force_stream or false
  local out, bad = upstream_body(job, provider, target, actx, passthrough, upstream_stream)
  if not out then return bad end
  -- A provider's own limit (Qwen's requests per minute) may refuse this
  -- account before anything is sent: an answer the pool classifies.
  if provider.admit then
    local deny = provider.admit(actx, target)
    if deny then
      deny.upfmt, deny.ctx = upfmt, actx
      return deny
    end
  end
  if needs_estimate(job, passthrough, upfmt) then start_estimate(job) end
  return send(job, provider, target, key, actx, out, upstream_stream, passthrough)
end

-- OAuth accounts (rt.refresh): an expired token is refreshed before it
-- is sent, and a 401 gets one refresh and one retry on the same account
-- before the pool sees it (and cools the account down as for any 401).
-- Kept outside attempt() so the pool's accounting sees one attempt.
local function attempt_oauth(job, target, key)
  if not target.credential then return attempt(job, target, key) end
  key = refresh.fresh_key(job.app, target, key)
  local r = attempt(job, target, key)
  if r.status == 401 and not job.req:closed() then
    local nk = refresh.after_401(job.app, target, key)
    if nk then r = attempt(job, target, nk) end
  end
  return r
end

-- [record] the account that answered last, the attempts, the alias
local function note_outcome(job, res)
  local rec = job.rec
  rec.attempts = job.ctx.attempts and #job.ctx.attempts or 0
  if job.model ~= rec.model then rec.alias = job.model end
  if res and res.ctx then record.note_target(rec, res.ctx.target) end
  if res and not res.ok then rec.error = res.err or res.message end
end

-- No attempt succeeded: the answer in the client's format.
local function answer_failure(job, res)
  local req, fmt = job.req, job.fmt
  -- every account cooling: the fact sheet's model_cooldown answer
  if res.raw_body then return http.json(req, res.status, pool.cooldown_body(fmt, res), res.extra) end
  if res.own then
    return own_error(req, fmt, http.error_info(res.status, res.message, res.type, res.code), res.extra)
  end
  if res.err then
    return http.error(req, fmt, 502, "upstream request failed: " .. res.err, "server_error", "upstream_error")
  end
  return answer_error(req, fmt, res, job.ctx)
end

-- [record] a stream the client left: what was seen of its usage
local function stream_abort(rec, upfmt, why, captured)
  if captured then rec.usage = record.usage_from_stream(upfmt, captured) end
  rec.error = why
  record.finish(rec, 499)
end

-- Same format: the upstream's bytes relayed, unless a provider's
-- stream_fixup must see each event (then re-framed as SSE).
local function stream_raw(job, res, sfix)
  local app, req, fmt, chain, rec = job.app, job.req, job.fmt, job.chain, job.rec
  local upfmt, actx = res.upfmt, res.ctx
  local codec = translators.codecs[fmt]
  local po = keepalive_opts(app, fmt, job.opts) or {}
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
    on_abort = function(why, captured) return stream_abort(rec, upfmt, why, captured) end,
  }
  if sfix then handler.on_event = function(ev) return sse_frame(sfix(ev, actx) or ev) end end
  req:pipe(res.up, handler, sfix and FRAMING or "raw", po)
  if req:closed() then stream_abort(rec, upfmt, "client closed request") end -- [record]
end

-- Through the hub: each upstream event decoded and encoded for the client.
local function stream_hub(job, res, sfix)
  local app, req, fmt, chain, rec = job.app, job.req, job.fmt, job.chain, job.rec
  local upfmt, actx = res.upfmt, res.ctx
  if job.wants_chunks then
    actx.ir_filter = function(ev) return mw.run(chain, "on_chunk", actx, ev) end
  end
  local s = translators.stream(fmt, upfmt, actx)
  local filter = job.opts.frame_filter
  -- One string per upstream event: the runtime writes each list entry on
  -- its own (a first Anthropic event is four frames, four writes).
  local function out_frames(frames)
    if filter then
      local o = {}
      for _, f in ipairs(frames) do
        local x = filter(f)
        if x then o[#o + 1] = x end
      end
      frames = o
    end
    if #frames > 1 then return { concat(frames) } end
    return frames
  end
  local function on_event(ev)
    if sfix then ev = sfix(ev, actx) or ev end
    return out_frames(s:feed(ev))
  end
  req:pipe(res.up, {
    on_event = on_event,
    -- The events of one upstream read in one call: one write for all.
    on_events = function(evs)
      if #evs == 1 then return on_event(evs[1]) end
      local out = {}
      for i = 1, #evs do
        local frames = on_event(evs[i])
        for j = 1, #frames do out[#out + 1] = frames[j] end
      end
      return concat(out)
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
      stream_abort(rec, upfmt, why)
    end,
  }, FRAMING, keepalive_opts(app, fmt, job.opts))
  if req:closed() then stream_abort(rec, upfmt, "client closed request") end -- [record]
end

-- A successful stream: the client's head now, then the events.
local function answer_stream(job, res, sfix)
  local req, rec = job.req, job.rec
  local actx = res.ctx
  if needs_estimate(job, res.passthrough, res.upfmt) then actx.input_estimate = take_estimate(job) end
  -- Gemini without alt=sse streams a JSON array, not SSE.
  req:start(200, job.opts.gemini_array and http.headers("application/json") or http.sse_headers())
  mw.defer_log(actx)
  -- [record] the client has its head at the first real event; the
  -- record ends with the stream (on_end) or the client (on_abort)
  rec.ttft_ms = record.elapsed_ms(rec)
  rec.deferred = true
  if res.passthrough then return stream_raw(job, res, sfix) end
  return stream_hub(job, res, sfix)
end

-- A successful non-stream answer: read, fixed up, translated, answered.
local function answer_body(job, res, rfix)
  local req, fmt, chain, rec, opts = job.req, job.fmt, job.chain, job.rec, job.opts
  local up, upfmt, actx = res.up, res.upfmt, res.ctx
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

-- opts: { model = <client model>, stream = bool, gemini_array = bool,
--         endpoint = string, force_hub = bool, raw = client bytes,
--         body_filter = fn(tbl) -> tbl, frame_filter = fn(frame) -> frame }
-- body may be nil: the route passed only the raw bytes (opts.raw).
function _M.infer(app, req, info, fmt, body, opts)
  local model = opts.model
  -- [record] what the request asked for; filled in as the pipeline learns
  local rec = record.of(info) or record.begin(info, fmt)
  rec.model = type(model) == "string" and model or nil
  rec.stream = opts.stream and true or false
  if type(model) ~= "string" or model == "" then
    return http.error(req, fmt, 400, "model is required")
  end
  local job = new_job(app, req, info, fmt, body, opts, rec)
  -- nonstream-keepalive-interval: blank lines while the answer is awaited
  -- (the first one commits to status 200; an error then goes in the body).
  local nka = not job.stream and app.config["nonstream-keepalive-interval"] or 0
  if nka > 0 then req:keepalive(nka) end
  if not run_rewrite(job) then return end

  local res = pool.run(app, job.ctx, job.model, function(target, key) return attempt_oauth(job, target, key) end)
  note_outcome(job, res)
  if req:closed() then return end
  if not res then
    return http.error(req, fmt, 502, "no upstream available for model " .. job.model)
  end
  if not res.ok then return answer_failure(job, res) end

  -- A provider that changed this attempt's request in a way the answer
  -- must undo (the Claude cloak's tool names) set actx.fixup_response; its
  -- hooks then see the upstream's own answer, before any translation.
  local fix = res.ctx.fixup_response
  if job.stream then return answer_stream(job, res, fix and res.provider.stream_fixup or nil) end
  return answer_body(job, res, fix and res.provider.response_fixup or nil)
end

return _M
