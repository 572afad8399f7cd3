-- translators/pairs/openai_chat-to-claude (user override): Chat Completions
-- clients served by a Claude upstream see Claude's thinking inline, as
-- "<think>...</think>" at the start of the message content, instead of in
-- the reasoning_content field (for chat UIs that only show `content`).
--
-- Only this pair changes: the request still goes through the hub (no
-- `request` here), and every other client format keeps the default
-- rendering. The codecs do the wire work; this file only rewrites IR.
local ir = require("rt.ir")
local translators = require("translators")

local type = type
local ipairs = ipairs
local concat = table.concat
local insert = table.insert
local setmetatable = setmetatable

local OPEN, CLOSE = "<think>", "</think>\n\n"

local _M = {}

local function prepare(ctx)
  ctx.client_format, ctx.upstream_format = "openai_chat", "claude"
  ctx.tool_id_prefix = ctx.tool_id_prefix or "call_"
end

-- Non-stream: thinking parts become a text part in front of the answer.
function _M.response(body, ctx)
  local codecs = translators.codecs
  prepare(ctx)
  local res, err = codecs.claude.decode_response(body, ctx)
  if not res then return nil, err end
  ctx.usage = res.usage
  local thoughts, content = {}, {}
  for _, p in ipairs(res.content or {}) do
    if p.type == "thinking" then
      if type(p.text) == "string" and p.text ~= "" then thoughts[#thoughts + 1] = p.text end
    else
      content[#content + 1] = p
    end
  end
  if #thoughts > 0 then
    insert(content, 1, { type = "text", text = OPEN .. concat(thoughts, "\n") .. CLOSE })
  end
  res.content = content
  return codecs.openai_chat.encode_response(res, ctx)
end

-- Streams: a thinking block is re-labelled as a text block whose deltas
-- are wrapped in the markers; its signature deltas are dropped.
local Stream = {}
Stream.__index = Stream

local function rewrite(self, ev)
  local t = ev.t
  if t == "block_start" and ev.kind == "thinking" then
    self.thinking[ev.i] = true
    return { { t = "block_start", i = ev.i, kind = "text" }, { t = "delta", i = ev.i, text = OPEN } }
  elseif t == "delta" and self.thinking[ev.i] then
    if ev.thinking then return { { t = "delta", i = ev.i, text = ev.thinking } } end
    return {}
  elseif t == "block_stop" and self.thinking[ev.i] then
    self.thinking[ev.i] = nil
    return { { t = "delta", i = ev.i, text = CLOSE }, ev }
  end
  return { ev }
end

-- Same bookkeeping as the hub's stream: the middleware filter
-- (ctx.ir_filter), usage and stop for the `after` hook, one end event.
local function push(self, evs, out)
  local ctx, filter = self.ctx, self.ctx.ir_filter
  for _, e0 in ipairs(evs) do
    for _, e1 in ipairs(rewrite(self, e0)) do
      local list = { e1 }
      if filter then
        local r = filter(e1)
        list = type(r) == "table" and (r.t and { r } or r) or {}
      end
      for _, e in ipairs(list) do
        if e.usage then self.usage = ir.merge_usage(self.usage, e.usage) end
        if e.t == "finish" then self.stop = e.stop end
        if not self.closed then
          for _, f in ipairs(self.enc.stream_encode(e, self.es, ctx)) do out[#out + 1] = f end
          if e.t == "finish" or e.t == "error" then self.closed = true end
        end
      end
    end
  end
  return out
end

function Stream:feed(ev)
  if self.closed then return {} end
  return push(self, self.dec.stream_decode(ev, self.ds, self.ctx), {})
end

function Stream:finish()
  local out = {}
  if self.closed then return out end
  if self.dec.stream_flush then push(self, self.dec.stream_flush(self.ds, self.ctx), out) end
  if not self.closed then push(self, { { t = "finish", stop = "end_turn" } }, out) end
  return out
end

function Stream:fail(err)
  if self.closed then return {} end
  self.closed = true
  return self.enc.stream_error(err or { status = 502, message = "upstream failed" }, self.es, self.ctx)
end

function _M.stream(ctx)
  local codecs = translators.codecs
  prepare(ctx)
  return setmetatable({ enc = codecs.openai_chat, dec = codecs.claude, ds = {}, es = {}, ctx = ctx,
                        thinking = {} }, Stream)
end

return _M
