-- middleware/redact: replaces text matching Lua patterns in the answer
-- before the client sees it: every string of a non-stream body (ids, model
-- names and enum fields excepted) and every text/thinking delta of a
-- stream. A stream is redacted delta by delta, so a match split across
-- two deltas is not caught.
local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local gsub = string.gsub
local find = string.find

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
        walk(conf, v, depth + 1)
      end
    end
  end
end

function _M.hooks.on_chunk(conf, ctx, ev)
  if ev.t == "delta" then
    if ev.text then ev.text = redact(conf, ev.text) end
    if ev.thinking then ev.thinking = redact(conf, ev.thinking) end
  end
end

function _M.hooks.after(conf, ctx, res)
  if type(res.body) == "table" then walk(conf, res.body, 0) end
end

return _M
