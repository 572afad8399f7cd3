-- middleware/redact: replaces text matching Lua patterns in the answer
-- before the client sees it: every string of a non-stream body (ids, model
-- names and enum fields excepted) and the text and thinking of a stream.
--
-- A secret may arrive split across deltas, so a stream block's last `hold`
-- bytes are held back until more text comes, and so is any match that
-- reaches into them (it may still grow: "sk-ab" then "cdef"). What is held
-- goes out, redacted, before the block's block_stop (or the stream's finish
-- or error). A cut never splits a UTF-8 character.
local json = require("lib.json")

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local gsub = string.gsub
local find = string.find
local byte = string.byte
local sub = string.sub
local sort = table.sort
local next = next
local tonumber = tonumber
local tostring = tostring

local _M = {
  name = "redact",
  priority = 100,
  version = "1.0",
  schema = {
    patterns = { type = "list", required = true, items = { type = "string", check = function(p)
      local ok, err = pcall(find, "", p)
      if not ok then return nil, "bad Lua pattern: " .. tostring(err) end
      return true
    end } },
    replacement = { type = "string", default = "[REDACTED]" },
    -- bytes of a stream block held back: at least the longest text a
    -- pattern needs before it matches at all ("sk%-live%-%w+": 9)
    hold = { type = "integer", default = 16, min = 0, max = 4096 },
  },
  hooks = {},
}

-- Fields that name things rather than carry text.
local SKIP = { id = true, model = true, object = true, type = true, role = true, finish_reason = true,
               stop_reason = true, finishReason = true, status = true, call_id = true, name = true,
               signature = true, thoughtSignature = true, encrypted_content = true, modelVersion = true,
               responseId = true }

local function redact(conf, s)
  local repl = conf.replacement:gsub("%%", "%%%%")
  for _, p in ipairs(conf.patterns) do s = gsub(s, p, repl) end
  return s
end

local function walk(conf, t, depth)
  if depth > 64 then return end
  for k, v in pairs(t) do
    if not SKIP[k] then
      if type(v) == "string" then
        t[k] = redact(conf, v)
      elseif type(v) == "table" then
        -- a carried subtree (a span: tool input / args kept as bytes) is
        -- looked inside here, so it is decoded first
        if json.is_span(v) then
          v = json.materialize(v)
          t[k] = v
        end
        if type(v) == "table" then walk(conf, v, depth + 1) end
      end
    end
  end
end

-- Where buf may be cut: everything before goes out now, the rest waits.
local function cut_point(conf, buf)
  local n = #buf
  local cut = n - conf.hold
  local moved = true
  while moved and cut > 0 do
    moved = false
    for _, p in ipairs(conf.patterns) do
      local init = 1
      while init <= n do
        local s, e = find(buf, p, init)
        if not s then break end
        -- crossing the cut, or reaching the end (it may grow further)
        if s <= cut and (e > cut or e == n) then
          cut = s - 1
          moved = true
        end
        init = e >= s and e + 1 or s + 1
      end
    end
  end
  -- not inside a UTF-8 sequence: back to the byte that starts it
  while cut > 0 and cut < n do
    local b = byte(buf, cut + 1)
    if b < 0x80 or b >= 0xC0 then break end
    cut = cut - 1
  end
  return cut > 0 and cut or 0
end

local FIELDS = { "text", "thinking" }

-- Held text of every open block of this stream: pending["text:0"] = "...".
local function pending_of(ctx)
  local st = ctx.plugin
  st.pending = st.pending or {}
  return st.pending
end

-- The held text of block i (or of every block, i == nil) as delta events,
-- redacted, in block order.
local function flush(conf, pending, i)
  local held = {}
  for k, text in pairs(pending) do
    local f, bi = k:match("^(%a+):(.*)$")
    if i == nil or bi == tostring(i) then
      held[#held + 1] = { key = k, f = f, i = tonumber(bi) or bi, text = text }
    end
  end
  sort(held, function(a, b)
    if a.i ~= b.i then return tostring(a.i) < tostring(b.i) end
    return a.f > b.f -- thinking before text
  end)
  local out = {}
  for n, h in ipairs(held) do
    out[n] = { t = "delta", i = h.i, [h.f] = redact(conf, h.text) }
    pending[h.key] = nil
  end
  return out
end

function _M.hooks.on_chunk(conf, ctx, ev)
  local t = ev.t
  if t == "delta" then
    local pending = pending_of(ctx)
    local any
    for _, f in ipairs(FIELDS) do
      local v = ev[f]
      if v then
        local key = f .. ":" .. tostring(ev.i)
        local buf = (pending[key] or "") .. v
        local cut = cut_point(conf, buf)
        pending[key] = cut < #buf and sub(buf, cut + 1) or nil
        ev[f] = cut > 0 and redact(conf, sub(buf, 1, cut)) or ""
        any = any or ev[f] ~= ""
      end
    end
    if any == false then return false end -- all of it held for now
    return nil
  end
  if t == "block_stop" or t == "finish" or t == "error" then
    local pending = ctx.plugin.pending
    if not pending or next(pending) == nil then return nil end
    local out = flush(conf, pending, t == "block_stop" and ev.i or nil)
    if #out == 0 then return nil end
    out[#out + 1] = ev
    return out
  end
end

function _M.hooks.after(conf, ctx, res)
  if type(res.body) == "table" then walk(conf, res.body, 0) end
end

return _M
