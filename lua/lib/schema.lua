-- lib.schema: JSON-schema cleaning for Gemini and tool-name sanitising.
-- clean_for_gemini never modifies its argument; it returns a new table.
local json = require("lib.json")

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local next = next
local concat = table.concat
local sort = table.sort
local sub = string.sub

local _M = {}

local null = json.null
local arr = json.array

-- The output is built by whitelist (type, description, enum, properties,
-- required, items), so $schema, $defs, definitions, $id, additionalProperties,
-- propertyNames, patternProperties, enumTitles, prefill, deprecated, nullable,
-- title and x-* never reach Gemini.
-- Constraints moved into description as hints.
local HINT = {
  "minLength", "maxLength", "pattern", "format", "default", "examples",
  "minItems", "maxItems", "minimum", "maximum", "exclusiveMinimum",
  "exclusiveMaximum", "multipleOf", "uniqueItems", "minProperties", "maxProperties",
}
local HINT_SET = {}
for _, k in ipairs(HINT) do HINT_SET[k] = true end

local function scalar_text(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" or t == "boolean" then return tostring(v) end
  if v == null then return "null" end
  local ok, s = pcall(json.encode, v)
  return ok and s or "?"
end

local function add_hint(out, text)
  if out.description and out.description ~= "" then
    out.description = out.description .. " (" .. text .. ")"
  else
    out.description = text
  end
end

local clean

-- Picks the best branch of anyOf/oneOf: the first object, else first array,
-- else the first non-null branch.
local function best_branch(list)
  local first, obj, ar
  for _, b in ipairs(list) do
    if type(b) == "table" then
      local t = b.type
      if t ~= "null" then
        first = first or b
        if t == "object" or b.properties then obj = obj or b end
        if t == "array" or b.items then ar = ar or b end
      end
    end
  end
  return obj or ar or first
end

local function merge_into(dst, src)
  for k, v in pairs(src) do
    if k == "properties" and type(v) == "table" then
      dst.properties = dst.properties or {}
      for pk, pv in pairs(v) do dst.properties[pk] = pv end
    elseif k == "required" and type(v) == "table" then
      dst.required = dst.required or {}
      for _, r in ipairs(v) do dst.required[#dst.required + 1] = r end
    elseif dst[k] == nil then
      dst[k] = v
    end
  end
end

clean = function(s, depth)
  if type(s) ~= "table" or s == null then return { type = "string" } end
  if depth > 32 then return { type = "object" } end
  -- flatten combinators first, on a shallow copy
  local w = {}
  for k, v in pairs(s) do w[k] = v end
  if type(w.allOf) == "table" then
    local all = w.allOf
    w.allOf = nil
    for _, b in ipairs(all) do
      if type(b) == "table" then merge_into(w, b) end
    end
  end
  for _, key in ipairs({ "anyOf", "oneOf" }) do
    if type(w[key]) == "table" then
      local list = w[key]
      w[key] = nil
      local b = best_branch(list)
      local n = 0
      for _, x in ipairs(list) do if type(x) == "table" and x.type ~= "null" then n = n + 1 end end
      if b then
        merge_into(w, b)
        if n > 1 then
          local kinds = {}
          for _, x in ipairs(list) do
            if type(x) == "table" and x.type and x.type ~= "null" then kinds[#kinds + 1] = scalar_text(x.type) end
          end
          if #kinds > 1 then add_hint(w, "accepts: " .. concat(kinds, " | ")) end
        end
      end
    end
  end

  local out = {}
  if type(w.description) == "string" then out.description = w.description end
  if w["$ref"] then
    add_hint(out, "see " .. scalar_text(w["$ref"]))
    if not w.type and not w.properties then
      out.type = "object"
    end
  end
  -- type arrays
  local t = w.type
  if type(t) == "table" then
    local pick
    for _, x in ipairs(t) do
      if x ~= "null" then pick = pick or x end
    end
    t = pick or "string"
  end
  if w.const ~= nil and w.enum == nil then
    w.enum = { w.const }
  end
  if type(w.enum) == "table" then
    local e = arr()
    for _, v in ipairs(w.enum) do
      if v ~= null then e[#e + 1] = scalar_text(v) end
    end
    out.enum = e
    t = "string"
  end
  if t == nil then
    if w.properties then t = "object"
    elseif w.items then t = "array"
    end
  end
  out.type = t or out.type

  for _, k in ipairs(HINT) do
    if w[k] ~= nil and HINT_SET[k] then
      add_hint(out, k .. ": " .. scalar_text(w[k]))
    end
  end

  if type(w.properties) == "table" then
    -- the client's property order, not the hash order (issue 12)
    local props = json.keep_order({}, w.properties)
    local names = {}
    for k, v in pairs(w.properties) do
      props[k] = clean(v, depth + 1)
      names[k] = true
    end
    out.properties = props
    if type(w.required) == "table" then
      local req, seen = arr(), {}
      for _, r in ipairs(w.required) do
        if names[r] and not seen[r] then req[#req + 1] = r; seen[r] = true end
      end
      if #req > 0 then out.required = req end
    end
  end
  if w.items ~= nil then
    if type(w.items) == "table" and json.is_array(w.items) then
      out.items = clean(w.items[1], depth + 1)
    else
      out.items = clean(w.items, depth + 1)
    end
  elseif out.type == "array" then
    out.items = { type = "string" }
  end
  if out.type == "object" and (out.properties == nil or next(out.properties) == nil) then
    -- Gemini rejects an object with no properties in some places: placeholder.
    out.properties = { reason = { type = "string", description = "Brief explanation (placeholder)" } }
  end
  if out.type == nil then out.type = "string" end
  return out
end

-- Returns a Gemini-acceptable copy of a JSON schema.
function _M.clean_for_gemini(schema)
  -- a carried schema (a span) is looked inside here: decode it
  schema = json.materialize(schema)
  if schema == nil or schema == null then
    return { type = "object", properties = {} }
  end
  local out = clean(schema, 0)
  if out.type == "object" and out.properties and out.properties.reason
      and (type(schema.properties) ~= "table" or next(schema.properties) == nil) then
    -- top level: an empty parameter object is fine as is
    out.properties = {}
  end
  return out
end

-- Tool-name sanitising. A mapper keeps forward and reverse maps so responses
-- carry the client's original names.
--   local m = schema.name_mapper(opts)   opts.max (64), opts.charset (Lua class),
--                                        opts.mcp_shorten (Codex rule)
--   m:name(orig) -> upstream name;  m:orig(upstream) -> client name
local Mapper = {}
Mapper.__index = Mapper

function _M.name_mapper(opts)
  opts = opts or {}
  return setmetatable({
    fwd = {}, rev = {}, max = opts.max or 64,
    bad = opts.bad or "[^%w_%.%-]", mcp = opts.mcp_shorten,
  }, Mapper)
end

function Mapper:name(orig)
  if type(orig) ~= "string" then return orig end
  local v = self.fwd[orig]
  if v then return v end
  local s = orig
  if self.mcp and #s > self.max and sub(s, 1, 5) == "mcp__" then
    local last = s:match("^mcp__.*__(.-)$")
    if last and last ~= "" then s = "mcp__" .. last end
  end
  s = s:gsub(self.bad, "_")
  if not s:match("^[%a_]") then s = "_" .. s end
  if #s > self.max then s = sub(s, 1, self.max) end
  local base, n = s, 1
  while self.rev[s] and self.rev[s] ~= orig do
    local suf = "_" .. n
    s = sub(base, 1, self.max - #suf) .. suf
    n = n + 1
  end
  self.fwd[orig] = s
  self.rev[s] = orig
  return s
end

function Mapper:orig(name)
  if name == nil then return nil end
  return self.rev[name] or name
end

-- Plain-table form of the reverse map (for ctx storage).
function Mapper:reverse()
  local t, keys = {}, {}
  for k in pairs(self.rev) do keys[#keys + 1] = k end
  sort(keys)
  for _, k in ipairs(keys) do t[k] = self.rev[k] end
  return t
end

return _M
