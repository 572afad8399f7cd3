-- middleware/body_patch: sets, defaults and removes fields of the request
-- body by JSON path: `temperature`, `generationConfig.temperature`,
-- `messages[0].content`, `messages[-1]` (the last element); a leading `$.`
-- is accepted. Indices count from 0.
--
-- phase "upstream" (the default) patches the body sent upstream, in the
-- upstream's format, after translation; phase "rewrite" patches the
-- client's body before translation. `formats` limits the patch to those
-- formats (the upstream's or the client's, by phase); `models` to models
-- matching one of the Lua patterns (anchored).
local type = type
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local remove = table.remove
local json = require("lib.json")

local _M = {
  name = "body_patch",
  priority = 700,
  version = "1.0",
  hooks = {},
}

-- Parses "a.b[0].c" into { "a", "b", 1, "c" } (numbers 1-based, negative
-- from the end). Returns nil, err for a malformed path.
local function parse(path)
  local p = path:gsub("^%$%.?", "")
  local out = {}
  local i = 1
  while i <= #p do
    local name, rest = p:match("^([^%.%[%]]+)()", i)
    if name then
      out[#out + 1] = name
      i = rest
    else
      local idx, after = p:match("^%[(%-?%d+)%]()", i)
      if not idx then return nil, "malformed JSON path '" .. path .. "'" end
      local n = tonumber(idx)
      out[#out + 1] = n >= 0 and n + 1 or n
      i = after
    end
    if p:sub(i, i) == "." then
      i = i + 1
      if i > #p then return nil, "malformed JSON path '" .. path .. "'" end
    end
  end
  if #out == 0 then return nil, "empty JSON path" end
  return out
end
_M.parse = parse

local function check_path(v)
  local ok, err = parse(v)
  if not ok then return nil, err end
  return true
end

local function check_paths(map)
  for k in pairs(map) do
    local ok, err = parse(k)
    if not ok then return nil, err end
  end
  return true
end

_M.schema = {
  set = { type = "map", values = { type = "any" }, default = {}, check = check_paths },
  default = { type = "map", values = { type = "any" }, default = {}, check = check_paths },
  remove = { type = "list", items = { type = "string", check = check_path }, default = {} },
  phase = { type = "string", default = "upstream", enum = { "upstream", "rewrite" } },
  formats = { type = "list", items = { type = "string",
    enum = { "openai_chat", "openai_responses", "claude", "gemini" } }, default = {} },
  models = { type = "list", items = { type = "string" }, default = {} },
}

-- lib.json's copy carries key order and number text, like any decoded value
local copy = json.deep_copy

local function index(t, k)
  if type(k) == "number" and k < 0 then return #t + k + 1 end
  return k
end

-- Walks to the parent of the last key; creates missing containers when
-- create is set. Returns parent, key or nil.
local function walk(body, keys, create)
  local t = body
  for i = 1, #keys - 1 do
    local k = index(t, keys[i])
    local nxt = t[k]
    if type(nxt) ~= "table" or nxt == json.null then
      if not create then return nil end
      nxt = type(keys[i + 1]) == "number" and json.array() or {}
      t[k] = nxt
    end
    t = nxt
  end
  return t, index(t, keys[#keys])
end

local function patch(conf, body)
  for path in pairs(conf.default) do
    local t, k = walk(body, parse(path), true)
    if t and t[k] == nil then t[k] = copy(conf.default[path]) end
  end
  for path, v in pairs(conf.set) do
    local t, k = walk(body, parse(path), true)
    if t then t[k] = copy(v) end
  end
  for _, path in ipairs(conf.remove) do
    local t, k = walk(body, parse(path), false)
    if t and t[k] ~= nil then
      if json.is_array(t) and type(k) == "number" then remove(t, k) else t[k] = nil end
    end
  end
end

local function applies(conf, ctx, fmt)
  if #conf.formats > 0 then
    local ok = false
    for _, f in ipairs(conf.formats) do if f == fmt then ok = true end end
    if not ok then return false end
  end
  if #conf.models > 0 then
    local m = ctx.model or ""
    for _, pat in ipairs(conf.models) do
      if m:match("^" .. pat .. "$") then return true end
    end
    return false
  end
  return true
end

function _M.hooks.rewrite(conf, ctx, body)
  if conf.phase ~= "rewrite" or not applies(conf, ctx, ctx.client_format) then return end
  patch(conf, body)
end

function _M.hooks.before_upstream(conf, ctx, ureq)
  if conf.phase ~= "upstream" or not applies(conf, ctx, ctx.upstream_format) then return end
  local body = type(ureq.body) == "string" and json.decode(ureq.body)
  if type(body) ~= "table" or json.is_array(body) then return end
  patch(conf, body)
  ureq.body = json.encode(body)
end

return _M
