-- translators: the hub. Any client format reaches any upstream format
-- through the IR (docs/ir.md); lua/translators/pairs/<from>-to-<to>.lua,
-- when present, overrides the hub for that pair.
local ir = require("lib.ir")
local json = require("lib.json")

local type = type
local ipairs = ipairs
local tostring = tostring
local pcall = pcall
local require = require
local error = error
local setmetatable = setmetatable

local _M = {}

_M.formats = { "openai_chat", "openai_responses", "claude", "gemini" }

local codecs = {}
-- format -> compiled carried paths of its requests (json.spec), checked
-- here so a bad declaration fails the load naming the codec and field
local request_specs = {}
for _, f in ipairs(_M.formats) do
  local c = require("translators." .. f)
  codecs[f] = c
  local paths = type(c.carries) == "table" and c.carries.request
  if paths ~= nil then
    if type(paths) ~= "table" then
      error("translators/" .. f .. ".lua: carries.request must be a list of paths", 0)
    end
    local ok, spec = pcall(json.spec, paths)
    if not ok then error("translators/" .. f .. ".lua: carries.request: " .. tostring(spec), 0) end
    request_specs[f] = spec
  end
end
_M.codecs = codecs

local TOOL_ID_PREFIX = { claude = "toolu_" }

-- Pair overrides are loaded by load_pairs(), which rt.boot calls once the
-- hub itself is loaded (a pair file may require "translators" to reuse the
-- hub). A broken pair file thus fails the generation -- and `cliproxy
-- check` -- with its file and line instead of being skipped.
-- false = no override for that pair.
local pair_cache = {}

local function load_pair(key)
  local name = "translators.pairs." .. key
  local ok, mod = pcall(require, name)
  if ok then
    if type(mod) ~= "table" then
      error("translators/pairs/" .. key .. ".lua: module must return a table", 0)
    end
    return mod
  end
  -- absent (both the runtime's loader and plain Lua say "not found");
  -- anything else is a broken override file
  if tostring(mod):find("module '" .. name .. "' not found", 1, true) then return false end
  error(mod, 0)
end

function _M.load_pairs()
  for _, a in ipairs(_M.formats) do
    for _, b in ipairs(_M.formats) do
      local key = a .. "-to-" .. b
      pair_cache[key] = load_pair(key)
    end
  end
end

local function pair_of(from, to)
  local key = from .. "-to-" .. to
  local p = pair_cache[key]
  if p == nil then
    -- outside rt.boot (specs, tools): load on first use
    p = load_pair(key)
    pair_cache[key] = p
  end
  return p or nil
end

local function codec(fmt)
  local c = codecs[fmt]
  if not c then error("translators: unknown format '" .. tostring(fmt) .. "'", 3) end
  return c
end

local function prepare(from, to, ctx)
  ctx.client_format, ctx.upstream_format = from, to
  ctx.tool_id_prefix = ctx.tool_id_prefix or TOOL_ID_PREFIX[from] or "call_"
end

-- The client's raw body (format `from`) decoded for translation: the
-- subtrees the codec carries stay spans. -> body | nil, err (decoder's)
function _M.decode_request(from, raw)
  return json.decode(raw, request_specs[from])
end

-- client body (format `from`) -> upstream body (format `to`) | nil, err
function _M.request(from, to, body, ctx)
  ctx = ctx or {}
  local p = pair_of(from, to)
  if p and p.request then return p.request(body, ctx) end
  local src, dst = codec(from), codec(to)
  prepare(from, to, ctx)
  local r, err = src.decode_request(body, ctx)
  if not r then return nil, err end
  if ctx.stream ~= nil then r.stream = ctx.stream and true or false end
  -- a model(level) / model(budget) suffix overrides the body
  local base, think = ir.parse_model(ctx.upstream_model or r.model)
  if think then
    local old = r.reasoning or {}
    r.reasoning = { effort = think.effort, budget = think.budget, include = true,
                    summary = old.summary, adaptive = old.adaptive }
    if think.effort == "none" then r.reasoning.include = nil end
  end
  if ctx.upstream_model then ctx.upstream_model = base else r.model = base end
  ctx.ir = r
  return dst.encode_request(r, ctx)
end

-- The hub's response path, without pair overrides. rewrite(res, ctx), when
-- given, edits the IR response between decoding and encoding: a pair
-- override that only changes how something is rendered uses this instead of
-- copying the codec calls.
function _M.hub_response(from, to, body, ctx, rewrite)
  ctx = ctx or {}
  local src, dst = codec(from), codec(to)
  prepare(from, to, ctx)
  local res, err = dst.decode_response(body, ctx)
  if not res then return nil, err end
  ctx.usage = res.usage
  if rewrite then res = rewrite(res, ctx) or res end
  return src.encode_response(res, ctx)
end

-- upstream non-stream body (format `to`) -> client body (format `from`)
function _M.response(from, to, body, ctx)
  local p = pair_of(from, to)
  if p and p.response then return p.response(body, ctx or {}) end
  return _M.hub_response(from, to, body, ctx)
end

local Stream = {}
Stream.__index = Stream

-- An IR event hook returns the event, a replacement, a list of events, or
-- nil to drop it. Two hooks run per event: the stream's rewrite (a pair
-- override's rendering change, see hub_stream), then ctx.ir_filter (the
-- pipeline's on_chunk middleware).
local function apply(f, evs)
  if not f then return evs end
  local out = {}
  for _, e in ipairs(evs) do
    local r = f(e)
    if type(r) == "table" then
      if r.t then
        out[#out + 1] = r
      else
        for _, x in ipairs(r) do out[#out + 1] = x end
      end
    end
  end
  return out
end

local function push(self, evs, out)
  local enc, es, ctx = self.enc, self.es, self.ctx
  evs = apply(ctx.ir_filter, apply(self.rewrite, evs))
  for _, e in ipairs(evs) do
    local t = e.t
    if t == "finish" or t == "error" then self.ended = true end
    if e.usage then self.usage = ir.merge_usage(self.usage, e.usage) end
    if t == "finish" then self.stop = e.stop end
    if not self.closed then
      local frames = enc.stream_encode(e, es, ctx)
      for _, f in ipairs(frames) do out[#out + 1] = f end
      if t == "finish" or t == "error" then self.closed = true end
    end
  end
  return out
end

-- one framed upstream event {event=, data=} -> list of client frames
function Stream:feed(ev)
  if self.closed then return {} end
  return push(self, self.dec.stream_decode(ev, self.ds, self.ctx), {})
end

-- upstream ended normally: flush and make sure the client sees an end
function Stream:finish()
  local out = {}
  if self.closed then return out end
  if self.dec.stream_flush then push(self, self.dec.stream_flush(self.ds, self.ctx), out) end
  if not self.closed then push(self, { { t = "finish", stop = "end_turn" } }, out) end
  return out
end

-- upstream failed after the first byte: the client format's error event
function Stream:fail(err)
  if self.closed then return {} end
  self.closed, self.ended = true, true
  return self.enc.stream_error(err or { status = 502, message = "upstream failed" }, self.es, self.ctx)
end

-- The hub's stream, without pair overrides; rewrite(ev) is the optional IR
-- event hook described at apply().
function _M.hub_stream(from, to, ctx, rewrite)
  ctx = ctx or {}
  local src, dst = codec(from), codec(to)
  prepare(from, to, ctx)
  return setmetatable({ enc = src, dec = dst, ds = {}, es = {}, ctx = ctx, rewrite = rewrite }, Stream)
end

function _M.stream(from, to, ctx)
  local p = pair_of(from, to)
  if p and p.stream then return p.stream(ctx or {}) end
  return _M.hub_stream(from, to, ctx)
end

-- upstream error -> client error body (format `from`), status
function _M.error(from, to, status, body, ctx)
  ctx = ctx or {}
  local p = pair_of(from, to)
  if p and p.error then return p.error(status, body, ctx) end
  local err = codec(to).decode_error(status, body, ctx)
  err.status = err.status or status
  return codec(from).encode_error(err, ctx), err.status
end

-- cliproxy's own errors: {status,type,message,code} -> body in `format`
function _M.error_body(format, err)
  return codec(format).encode_error(err, {})
end

return _M
