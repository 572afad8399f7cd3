-- rt.mgmt.yaml_edit: changes one key of a YAML document by editing its text
-- at the node's byte span (cpx.yaml.spans, from libyaml's marks), so every
-- other byte of config.yaml (comments, order, quoting, blank lines) stays as
-- the user wrote it. Only the edited node is written anew, in block style
-- with strings quoted as JSON (a subset of YAML's double-quoted scalars).
--
--   local new, err = yaml_edit.set(text, { "remote-management", "secret-key" }, "$2b$...")
--   local new, err = yaml_edit.delete(text, { "proxy-url" })
-- A path is a list of keys (strings) and 1-based sequence indices (numbers).
local cpx = require("cpx")

local type = type
local next = next
local tonumber = tonumber
local setmetatable = setmetatable
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local getmetatable = getmetatable
local rawget = rawget
local concat = table.concat
local sort = table.sort
local rep = string.rep
local find = string.find
local sub = string.sub
local format = string.format
local floor = math.floor

local spans_of = cpx.yaml.spans
local decode_yaml = cpx.yaml.decode
local encode_json = cpx.json.encode
local null = cpx.json.null
local array_mt = cpx.json.array_mt

local SEP = "\31"

local _M = {}

local function join(path, n)
  local parts = {}
  for i = 1, n or #path do parts[i] = tostring(path[i]) end
  return concat(parts, SEP)
end

local function is_array(v)
  return type(v) == "table" and (getmetatable(v) == array_mt or (getmetatable(v) == nil and v[1] ~= nil))
end

local FIRST = { name = 1, ["api-key"] = 2, alias = 3, priority = 4, prefix = 5, ["base-url"] = 6,
                ["proxy-url"] = 7, headers = 8, ["api-key-entries"] = 9, models = 10, ["excluded-models"] = 11 }

-- Keys of a decoded JSON object in their input order (cpx.json keeps it in
-- the metatable's array part), then any others sorted.
local function ordered_keys(t)
  local out, seen = {}, {}
  local mt = getmetatable(t)
  if type(mt) == "table" and mt ~= array_mt and rawget(mt, 1) ~= nil then
    for _, k in ipairs(mt) do
      if t[k] ~= nil and not seen[k] then
        out[#out + 1] = k
        seen[k] = true
      end
    end
  end
  local rest = {}
  for k in pairs(t) do
    if not seen[k] then rest[#rest + 1] = tostring(k) end
  end
  -- config.yaml's usual order first (name, api-key, ...), then by name
  sort(rest, function(a, b)
    local pa, pb = FIRST[a] or 100, FIRST[b] or 100
    if pa ~= pb then return pa < pb end
    return a < b
  end)
  for _, k in ipairs(rest) do out[#out + 1] = k end
  return out
end
_M.ordered_keys = ordered_keys

local RESERVED = { ["true"] = true, ["false"] = true, ["null"] = true, ["~"] = true, yes = true, no = true,
                   on = true, off = true, y = true, n = true, [""] = true }

-- A string that reads back as the same string when written plain.
local function plain_ok(s)
  if RESERVED[s:lower()] then return false end
  if not s:match("^[%w_/%$%.][%w_%-%./%$@%+=]*$") then return false end
  if s:match("^[%d%.%+%-]") and tonumber(s) then return false end
  if s:match("^0[xXoO]") then return false end
  return true
end

local function scalar(v)
  if v == nil or v == null then return "null" end
  local t = type(v)
  if t == "boolean" then return v and "true" or "false" end
  if t == "number" then
    if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return format("%d", v) end
    return format("%.17g", v)
  end
  local s = tostring(v)
  if plain_ok(s) then return s end
  return encode_json(s)
end

local function is_empty(v)
  return type(v) == "table" and next(v) == nil
end

local function key_text(k)
  k = tostring(k)
  if plain_ok(k) then return k end
  return encode_json(k)
end

-- Block YAML for a non-empty collection, every line indented by `ind`
-- spaces (the caller strips the first line's indent when the text goes
-- where that column already is).
local emit

local function emit_item(v, ind)
  if type(v) ~= "table" or is_empty(v) then
    return { rep(" ", ind) .. "- " .. (type(v) == "table" and (is_array(v) and "[]" or "{}") or scalar(v)) }
  end
  -- "- " then the nested block, whose first line sits after the dash.
  local inner = emit(v, ind + 2)
  inner[1] = rep(" ", ind) .. "- " .. inner[1]:sub(ind + 3)
  return inner
end

function emit(v, ind)
  local lines = {}
  local pad = rep(" ", ind)
  if is_array(v) then
    for i = 1, #v do
      for _, l in ipairs(emit_item(v[i], ind)) do lines[#lines + 1] = l end
    end
    return lines
  end
  for _, k in ipairs(ordered_keys(v)) do
    local x = v[k]
    if type(x) == "table" and not is_empty(x) then
      lines[#lines + 1] = pad .. key_text(k) .. ":"
      for _, l in ipairs(emit(x, ind + 2)) do lines[#lines + 1] = l end
    else
      local s = type(x) == "table" and (is_array(x) and "[]" or "{}") or scalar(x)
      lines[#lines + 1] = pad .. key_text(k) .. ": " .. s
    end
  end
  return lines
end

local function inline(v)
  if type(v) ~= "table" then return scalar(v) end
  if is_empty(v) then return is_array(v) and "[]" or "{}" end
  return nil
end

-- Position of the ':' that ends the key whose last byte is at ke.
local function colon_after(text, ke)
  local i = find(text, ":", ke + 1, true)
  return i
end

local function line_end(text, pos)
  local i = find(text, "\n", pos + 1, true)
  return i and (i - 1) or #text
end

local function untouchable(n, what)
  if n.anchor then
    return "cannot " .. what .. " a value that carries an anchor (&name) other keys may use; edit config.yaml by hand"
  end
  if n.tag then return "cannot " .. what .. " a value with an explicit tag (!!...); edit config.yaml by hand" end
  return nil
end

-- Replaces node `n` (a span) with value v.
local function replace(text, n, v)
  local no = untouchable(n, "replace")
  if no then return nil, no end
  local one = inline(v)
  if one then
    if n.empty then
      local c = colon_after(text, n.ke)
      if not c then return nil, "cannot find the ':' of the key" end
      return sub(text, 1, c) .. " " .. one .. sub(text, c + 1)
    end
    return sub(text, 1, n.s - 1) .. one .. sub(text, n.e + 1)
  end
  local block = (n.kind == "map" or n.kind == "seq") and not n.flow
  if not n.ks or (block and n.col > n.kcol) then
    -- in place, at the node's own column
    local lines = emit(v, n.col)
    lines[1] = lines[1]:sub(n.col + 1)
    return sub(text, 1, n.s - 1) .. concat(lines, "\n") .. sub(text, n.e + 1)
  end
  -- under its key, on the next lines
  local c = colon_after(text, n.ke)
  if not c then return nil, "cannot find the ':' of the key" end
  local lines = emit(v, n.kcol + 2)
  local stop = n.empty and c or n.e
  return sub(text, 1, c) .. "\n" .. concat(lines, "\n") .. sub(text, stop + 1)
end

-- The value at path in the decoded document (nil when absent).
local function value_at(doc, path, n)
  local v = doc
  for i = 1, n do
    if type(v) ~= "table" then return nil end
    v = v[path[i]]
  end
  return v
end

local function copy(v)
  if type(v) ~= "table" then return v end
  local o = {}
  for k, x in pairs(v) do o[k] = copy(x) end
  return setmetatable(o, getmetatable(v))
end

local set

-- Sets path to v by rewriting its parent (the fallback for flow parents,
-- sequences and missing parents).
local function set_via_parent(text, path, v)
  local n = #path
  local doc, err = decode_yaml(text)
  if not doc then return nil, err end
  local parent = copy(value_at(doc, path, n - 1))
  local key = path[n]
  if type(parent) ~= "table" then
    parent = type(key) == "number" and setmetatable({}, array_mt) or {}
  end
  if type(key) == "number" then
    if getmetatable(parent) ~= array_mt and next(parent) ~= nil then
      return nil, "cannot index a mapping with a number"
    end
    setmetatable(parent, array_mt)
    if key < 1 or key > #parent + 1 then return nil, "index out of range" end
  end
  parent[key] = v
  local pp = {}
  for i = 1, n - 1 do pp[i] = path[i] end
  return set(text, pp, parent)
end

function set(text, path, v)
  if #path == 0 then return nil, "empty path" end
  local spans, err = spans_of(text)
  if not spans then return nil, err end
  local node = spans[join(path)]
  if node then return replace(text, node, v) end
  local n = #path
  local parent = spans[join(path, n - 1)]
  if n == 1 and not parent then
    -- an empty document (or comments only): append
    local one = inline(v)
    local body
    if one then
      body = key_text(path[1]) .. ": " .. one
    else
      body = key_text(path[1]) .. ":\n" .. concat(emit(v, 2), "\n")
    end
    local nl = (text == "" or sub(text, -1) == "\n") and "" or "\n"
    return text .. nl .. body .. "\n"
  end
  if parent and parent.kind == "map" and not parent.flow and type(path[n]) == "string" then
    local col = parent.ccol or 0
    local one = inline(v)
    local entry
    if one then
      entry = rep(" ", col) .. key_text(path[n]) .. ": " .. one
    else
      entry = rep(" ", col) .. key_text(path[n]) .. ":\n" .. concat(emit(v, col + 2), "\n")
    end
    local at = line_end(text, parent.e)
    if at == #text and sub(text, -1) ~= "\n" then
      return text .. "\n" .. entry .. "\n"
    end
    return sub(text, 1, at) .. "\n" .. entry .. sub(text, at + 1)
  end
  if parent and parent.kind == "seq" and not parent.flow and path[n] == parent.n + 1 then
    -- an item appended to a block sequence: one more "- " line
    local lines = emit_item(v, parent.col)
    local at = line_end(text, parent.e)
    if at == #text and sub(text, -1) ~= "\n" then
      return text .. "\n" .. concat(lines, "\n") .. "\n"
    end
    return sub(text, 1, at) .. "\n" .. concat(lines, "\n") .. sub(text, at + 1)
  end
  return set_via_parent(text, path, v)
end

-- Equality of a value and what the YAML loader read back (JSON null and a
-- missing value are the same; key order does not matter).
local function same(a, b)
  if a == null then a = nil end
  if b == null then b = nil end
  if type(a) ~= "table" or type(b) ~= "table" then
    if type(a) == "number" and type(b) == "number" then return a == b end
    return a == b
  end
  for k, x in pairs(a) do
    if not same(x, b[k]) then return false end
  end
  for k, y in pairs(b) do
    if a[k] == nil and y ~= null then return false end
  end
  return true
end

-- The document text should read as after the edit: the old one with path
-- set to v (nil: removed). Only string keys of mappings are walked; a path
-- through a sequence is checked by the value read-back alone.
local function expected(text, path, v)
  local t = decode_yaml(text)
  if type(t) ~= "table" then return nil end
  t = copy(t)
  local cur = t
  for i = 1, #path - 1 do
    local k = path[i]
    if type(k) ~= "string" then return nil end
    if type(cur[k]) ~= "table" then cur[k] = {} end
    cur = cur[k]
  end
  if type(path[#path]) ~= "string" then return nil end
  cur[path[#path]] = v
  return t
end

-- same(), except that an empty mapping, null and a missing key are alike
-- (removing a mapping's last key leaves "key:" behind, which reads as null).
local function blank(x)
  return x == nil or x == null or (type(x) == "table" and next(x) == nil)
end

local function alike(a, b)
  if blank(a) and blank(b) then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return same(a, b) end
  for k, x in pairs(a) do
    if not alike(x, b[k]) then return false end
  end
  for k, y in pairs(b) do
    if a[k] == nil and not blank(y) then return false end
  end
  return true
end

-- Every edit is checked by loading the result: the value must read back,
-- every other value must be unchanged, and the document must still load;
-- anything else is refused rather than written (a document whose root is
-- not a mapping; a file ending inside a block scalar with no final newline,
-- where appending a key would add one to that scalar's value).
function _M.set(text, path, v)
  local out, err = set(text, path, v)
  if not out then return nil, err end
  local doc, derr = decode_yaml(out)
  if not doc then return nil, "the edit would not load: " .. tostring(derr) end
  if not same(v, value_at(doc, path, #path)) then
    return nil, "cannot set this key in this document (its root is not a mapping?)"
  end
  local want = expected(text, path, v)
  if want and not alike(want, doc) then
    return nil, "cannot set this key here without changing another value; edit config.yaml as text"
  end
  return out
end

-- Removes the key at path (its whole lines in a block mapping).
local function delete(text, path)
  local spans, err = spans_of(text)
  if not spans then return nil, err end
  local node = spans[join(path)]
  if not node then return text end
  local no = untouchable(node, "delete")
  if no then return nil, no end
  local parent = spans[join(path, #path - 1)]
  if node.ks and parent and not parent.flow then
    local ls = node.ks
    while ls > 1 and sub(text, ls - 1, ls - 1) ~= "\n" do ls = ls - 1 end
    if sub(text, ls, node.ks - 1):match("^%s*$") then
      local le = line_end(text, node.empty and node.ke or node.e)
      return sub(text, 1, ls - 1) .. sub(text, le + 2)
    end
  end
  -- flow parents and sequence items: rewrite the parent without it
  local doc, derr = decode_yaml(text)
  if not doc then return nil, derr end
  local pv = copy(value_at(doc, path, #path - 1))
  if type(pv) ~= "table" then return text end
  local key = path[#path]
  if type(key) == "number" then
    table.remove(pv, key)
  else
    pv[key] = nil
  end
  local pp = {}
  for i = 1, #path - 1 do pp[i] = path[i] end
  if #pp == 0 then return nil, "cannot delete from a flow document" end
  return set(text, pp, pv)
end

function _M.delete(text, path)
  local out, err = delete(text, path)
  if not out then return nil, err end
  if out == text then return out end
  local doc, derr = decode_yaml(out)
  if not doc then return nil, "the edit would not load: " .. tostring(derr) end
  if type(path[#path]) == "string" and value_at(doc, path, #path) ~= nil then
    return nil, "cannot delete this key in this document"
  end
  local want = expected(text, path, nil)
  if want and not alike(want, doc) then
    return nil, "cannot delete this key without changing another value; edit config.yaml as text"
  end
  return out
end

return _M
