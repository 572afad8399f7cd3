-- translators/pairs/openai_chat-to-claude (user override): Chat Completions
-- clients served by a Claude upstream see Claude's thinking inline, as
-- "<think>...</think>" at the start of the message content, instead of in
-- the reasoning_content field (for chat UIs that only show `content`).
--
-- Only this pair changes: the request still goes through the hub (no
-- `request` here), and every other client format keeps the default
-- rendering. The hub and its codecs do the wire work (translators.hub_*);
-- this file only rewrites IR.
local translators = require("translators")

local type = type
local ipairs = ipairs
local concat = table.concat
local insert = table.insert

local OPEN, CLOSE = "<think>", "</think>\n\n"

local _M = {}

-- Non-stream: thinking parts become a text part in front of the answer.
local function inline_thinking(res)
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
  return res
end

function _M.response(body, ctx)
  return translators.hub_response("openai_chat", "claude", body, ctx, inline_thinking)
end

-- Streams: a thinking block is re-labelled as a text block whose deltas
-- are wrapped in the markers; its signature deltas are dropped.
function _M.stream(ctx)
  local thinking = {} -- block index -> true while a thinking block is open
  return translators.hub_stream("openai_chat", "claude", ctx, function(ev)
    local t = ev.t
    if t == "block_start" and ev.kind == "thinking" then
      thinking[ev.i] = true
      return { { t = "block_start", i = ev.i, kind = "text" }, { t = "delta", i = ev.i, text = OPEN } }
    elseif t == "delta" and thinking[ev.i] then
      if ev.thinking then return { t = "delta", i = ev.i, text = ev.thinking } end
      return nil
    elseif t == "block_stop" and thinking[ev.i] then
      thinking[ev.i] = nil
      return { { t = "delta", i = ev.i, text = CLOSE }, ev }
    end
    return ev
  end)
end

return _M
