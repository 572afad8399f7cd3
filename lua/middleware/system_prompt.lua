-- middleware/system_prompt: adds a system prompt to every request, in the
-- client's own format (Chat system message, Responses instructions, Claude
-- system, Gemini systemInstruction), before it is translated.
local type = type
local ipairs = ipairs
local insert = table.insert
local json = require("lib.json")

local _M = {
  name = "system_prompt",
  priority = 800,
  version = "1.0",
  schema = {
    text = { type = "string", required = true },
    mode = { type = "string", default = "prepend", enum = { "prepend", "append", "replace" } },
  },
  hooks = {},
}

local function join(mode, old, text)
  if mode == "replace" or old == nil or old == "" then return text end
  if mode == "append" then return old .. "\n\n" .. text end
  return text .. "\n\n" .. old
end

local function chat(conf, body)
  local msgs = body.messages
  if type(msgs) ~= "table" then
    msgs = json.array()
    body.messages = msgs
  end
  if conf.mode == "replace" then
    local kept = json.array()
    for _, m in ipairs(msgs) do
      if type(m) ~= "table" or (m.role ~= "system" and m.role ~= "developer") then kept[#kept + 1] = m end
    end
    insert(kept, 1, { role = "system", content = conf.text })
    body.messages = kept
  elseif conf.mode == "append" then
    -- after the last leading system message
    local at = 1
    while type(msgs[at]) == "table" and (msgs[at].role == "system" or msgs[at].role == "developer") do
      at = at + 1
    end
    insert(msgs, at, { role = "system", content = conf.text })
  else
    insert(msgs, 1, { role = "system", content = conf.text })
  end
end

local function claude(conf, body)
  local sys = body.system
  if type(sys) == "table" then
    local block = { type = "text", text = conf.text }
    if conf.mode == "replace" then
      body.system = json.array({ block })
    elseif conf.mode == "append" then
      sys[#sys + 1] = block
    else
      insert(sys, 1, block)
    end
  else
    body.system = join(conf.mode, type(sys) == "string" and sys or nil, conf.text)
  end
end

local function gemini(conf, body)
  local si = body.systemInstruction or body.system_instruction
  body.system_instruction = nil
  if type(si) ~= "table" or type(si.parts) ~= "table" then
    si = { parts = json.array() }
  end
  local part = { text = conf.text }
  if conf.mode == "replace" then
    si.parts = json.array({ part })
  elseif conf.mode == "append" then
    si.parts[#si.parts + 1] = part
  else
    insert(si.parts, 1, part)
  end
  body.systemInstruction = si
end

function _M.hooks.rewrite(conf, ctx, body)
  local f = ctx.client_format
  if f == "openai_chat" then
    chat(conf, body)
  elseif f == "openai_responses" then
    body.instructions = join(conf.mode, type(body.instructions) == "string" and body.instructions or nil, conf.text)
  elseif f == "claude" then
    claude(conf, body)
  elseif f == "gemini" then
    gemini(conf, body)
  end
end

return _M
