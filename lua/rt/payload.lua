-- rt.payload: the config's payload rules, applied to the upstream request
-- body after translation (and after the provider's fix-ups):
--
--   payload:
--     default:      [{ models: [{ name: "gpt-*", protocol: "openai" }], params: { "a.b": 1 } }]
--     default-raw:  same, values are JSON text          (set when missing)
--     override:     same                                (always set)
--     override-raw: same, values are JSON text
--     filter:       [{ models: [...], params: ["a.b", "c"] }]   (delete)
--
-- A rule applies when one of its models matches: `name` is a wildcard
-- (`*` = anything) matched against the client's model (without its
-- "(suffix)") or the upstream model, and `protocol`, when given, is the
-- upstream's: openai (Chat Completions), codex (Responses), claude, gemini,
-- antigravity. A rule without models applies to every request.
--
-- Paths are gjson/sjson-style: dot-separated keys, numeric parts index
-- arrays (0-based), "\." is a literal dot; setting creates missing objects.
local cpx = require("cpx")
local ir = require("lib.ir")

local type = type
local ipairs = ipairs
local pairs = pairs
local tonumber = tonumber
local tostring = tostring
local json_decode = cpx.json.decode
local array_mt = cpx.json.array_mt
local getmetatable = getmetatable

local _M = {}

local PROTOCOL = { openai_chat = "openai", openai_responses = "codex", claude = "claude", gemini = "gemini" }
_M.PROTOCOL = PROTOCOL

local pattern_cache = {}

local function wildcard(pat, s)
  if type(pat) ~= "string" or pat == "" or pat == "*" then return true end
  if type(s) ~= "string" then return false end
  local lp = pattern_cache[pat]
  if not lp then
    lp = "^" .. pat:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", ".*") .. "$"
    pattern_cache[pat] = lp
  end
  return s:find(lp) ~= nil
end
_M.wildcard = wildcard

local function matches(rule, models, protocol)
  local list = rule.models
  if type(list) ~= "table" or #list == 0 then return true end
  for _, m in ipairs(list) do
    if type(m) == "table" then
      local p = m.protocol
      if p == nil or p == "" or p == protocol then
        for _, name in ipairs(models) do
          if wildcard(m.name, name) then return true end
        end
      end
    end
  end
  return false
end

-- "a.b\.c.0" -> { "a", "b.c", 0 }
local function split(path)
  local parts, cur, i = {}, {}, 1
  while i <= #path do
    local ch = path:sub(i, i)
    if ch == "\\" and i < #path then
      cur[#cur + 1] = path:sub(i + 1, i + 1)
      i = i + 2
    else
      if ch == "." then
        parts[#parts + 1] = table.concat(cur)
        cur = {}
      else
        cur[#cur + 1] = ch
      end
      i = i + 1
    end
  end
  parts[#parts + 1] = table.concat(cur)
  return parts
end
_M.split = split

local function is_array(t)
  return getmetatable(t) == array_mt
end

-- The container and key addressed by path in doc (creating objects on the
-- way when create is set). Array indexes are 0-based in the path.
local function locate(doc, path, create)
  local parts = split(path)
  local cur = doc
  for i = 1, #parts - 1 do
    local k = parts[i]
    local idx = tonumber(k)
    local nxt
    if idx and type(cur) == "table" and is_array(cur) then
      nxt = cur[idx + 1]
    else
      nxt = cur[k]
    end
    if type(nxt) ~= "table" then
      if not create then return nil end
      nxt = {}
      if idx and is_array(cur) then cur[idx + 1] = nxt else cur[k] = nxt end
    end
    cur = nxt
  end
  local last = parts[#parts]
  local idx = tonumber(last)
  if idx and is_array(cur) then
    if idx == -1 then return cur, #cur + 1 end
    return cur, idx + 1
  end
  return cur, last
end

function _M.get(doc, path)
  local c, k = locate(doc, path, false)
  if not c then return nil end
  return c[k]
end

function _M.set(doc, path, value)
  local c, k = locate(doc, path, true)
  if c then c[k] = value end
end

function _M.delete(doc, path)
  local c, k = locate(doc, path, false)
  if not c or c[k] == nil then return end
  if type(k) == "number" and is_array(c) then
    table.remove(c, k)
  else
    c[k] = nil
  end
end

local function raw_value(v)
  if type(v) ~= "string" then return v end
  local d = json_decode(v)
  if d == nil then return v end
  return d
end

local deep_copy = require("lib.json").deep_copy

-- True when the config has any payload rule.
function _M.active(conf)
  if type(conf) ~= "table" then return false end
  for _, k in ipairs({ "default", "default-raw", "override", "override-raw", "filter" }) do
    if type(conf[k]) == "table" and #conf[k] > 0 then return true end
  end
  return false
end

-- True when some rule would apply to a request for model (the client's)
-- sent to upstream_model in format upfmt (rt.lane keeps such models off
-- the C fast path, which does not decode bodies).
function _M.touches(conf, model, upstream_model, upfmt)
  if not _M.active(conf) then return false end
  local base = ir.parse_model(model)
  local models = { base or model, upstream_model }
  local protocol = PROTOCOL[upfmt] or upfmt
  for _, kind in ipairs({ "default", "default-raw", "override", "override-raw", "filter" }) do
    for _, rule in ipairs(conf[kind] or {}) do
      if type(rule) == "table" and matches(rule, models, protocol) then return true end
    end
  end
  return false
end

-- Applies the rules to body (a table, changed in place and returned).
-- model: the client's model; upstream_model: the name sent upstream;
-- upfmt: the upstream's wire format.
function _M.apply(conf, body, model, upstream_model, upfmt)
  if type(conf) ~= "table" or type(body) ~= "table" then return body end
  local base = ir.parse_model(model)
  local models = { base or model, upstream_model }
  local protocol = PROTOCOL[upfmt] or upfmt
  for _, kind in ipairs({ "default", "default-raw", "override", "override-raw" }) do
    local raw = kind:find("-raw", 1, true) ~= nil
    local only_missing = kind:sub(1, 7) == "default"
    for _, rule in ipairs(conf[kind] or {}) do
      if type(rule) == "table" and type(rule.params) == "table" and matches(rule, models, protocol) then
        for path, v in pairs(rule.params) do
          path = tostring(path)
          if not only_missing or _M.get(body, path) == nil then
            _M.set(body, path, raw and raw_value(v) or deep_copy(v))
          end
        end
      end
    end
  end
  for _, rule in ipairs(conf.filter or {}) do
    if type(rule) == "table" and type(rule.params) == "table" and matches(rule, models, protocol) then
      for k, v in pairs(rule.params) do
        -- a list of paths, or a map whose keys are paths
        _M.delete(body, type(k) == "number" and tostring(v) or tostring(k))
      end
    end
  end
  return body
end

return _M
