-- rt.mgmt.keys: the client keys, the provider-key lists and the OAuth
-- channel maps, in CLIProxyAPI v6's shapes (config_lists.go):
--   api-keys (strings)      GET {"api-keys": [...]}; PUT [...] | {"items": [...]};
--                           PATCH {"index": i, "value": v} | {"old": a, "new": b} (appends
--                           when old is absent); DELETE ?index=i | ?value=v
--   gemini-api-key, claude-api-key, codex-api-key, vertex-api-key, openai-compatibility
--                           GET {"<key>": [...]}; PUT [...] | {"items": [...]};
--                           PATCH {"index": i | "match": api-key (name), "value": {fields}};
--                           DELETE ?api-key= (?name=) | ?index=
--   oauth-excluded-models   GET {...: {channel: [..]}}; PUT {..} | {"items": {..}};
--                           PATCH {"provider": ch, "models": [..]} (empty removes); DELETE ?provider=
--   oauth-model-alias       the same with {"provider" | "channel", "aliases": [{name, alias, fork}]}
-- Indices are 0-based, as in CLIProxyAPI. Every change edits config.yaml at
-- the touched nodes only (a PATCH rewrites the patched fields, not the list).
local json = require("lib.json")
local access = require("rt.access")
local yaml_edit = require("rt.mgmt.yaml_edit")

local type = type
local ipairs = ipairs
local pairs = pairs
local next = next
local tonumber = tonumber
local floor = math.floor

local query_param = access.query_param
local null = json.null

local _M = { name = "keys" }

local function not_found() return 404, { error = "item not found" } end
local function invalid() return 400, { error = "invalid body" } end

local function is_list(v) return type(v) == "table" and (json.is_array(v) or next(v) == nil) end

local function as_index(v, n)
  v = tonumber(v)
  if not v or v ~= floor(v) or v < 0 or v >= n then return nil end
  return v + 1
end

-- Applies edits { {path, value | nil}, ... } to the text one after another.
local function apply(text, edits)
  for _, e in ipairs(edits) do
    local new, err
    if e[2] == nil then
      new, err = yaml_edit.delete(text, e[1])
    else
      new, err = yaml_edit.set(text, e[1], e[2])
    end
    if not new then return nil, 500, { error = "edit_failed", message = err } end
    text = new
  end
  return text
end

-- A PUT body: a JSON array, or {"items": [...]}.
local function items_of(body, allow_empty)
  local v = json.decode(body or "")
  if json.is_array(v) then return v end
  if type(v) == "table" and json.is_array(v.items) and (allow_empty or #v.items > 0) then return v.items end
  if type(v) == "table" and v.items == nil and next(v) == nil and allow_empty then return json.array() end
  return nil
end

local function list_in(doc, key)
  local l = doc[key]
  if type(l) ~= "table" then return json.array() end
  return l
end

local function edit(ctx, fn)
  return ctx.mgmt.saved(ctx.mgmt.edit_config(fn))
end

-- ---- api-keys ----------------------------------------------------------

local function string_list(key)
  local routes = {}
  routes[#routes + 1] = { method = "GET", path = "/" .. key, handler = function(req, ctx)
    local cfg = ctx.mgmt.current()
    return 200, { [key] = json.array(cfg[key] or {}) }
  end }
  routes[#routes + 1] = { method = "PUT", path = "/" .. key, handler = function(req, ctx)
    local items = items_of(req.body, true)
    if not items then return invalid() end
    for _, s in ipairs(items) do
      if type(s) ~= "string" then return invalid() end
    end
    return edit(ctx, function(text) return apply(text, { { { key }, json.array(items) } }) end)
  end }
  routes[#routes + 1] = { method = "PATCH", path = "/" .. key, handler = function(req, ctx)
    local b = json.decode(req.body or "")
    if type(b) ~= "table" then return invalid() end
    return edit(ctx, function(text, doc)
      local l = list_in(doc, key)
      if b.index ~= nil and type(b.value) == "string" then
        local i = as_index(b.index, #l)
        if not i then return nil, not_found() end
        return apply(text, { { { key, i }, b.value } })
      end
      if type(b.old) == "string" and type(b.new) == "string" then
        for i, s in ipairs(l) do
          if s == b.old then return apply(text, { { { key, i }, b.new } }) end
        end
        return apply(text, { { { key, #l + 1 }, b.new } })
      end
      return nil, invalid()
    end)
  end }
  routes[#routes + 1] = { method = "DELETE", path = "/" .. key, handler = function(req, ctx)
    local idx, val = query_param(req.query, "index"), query_param(req.query, "value")
    if not idx and not val then return 400, { error = "missing index or value" } end
    return edit(ctx, function(text, doc)
      local l = list_in(doc, key)
      local at
      if idx then
        at = as_index(idx, #l)
      else
        for i, s in ipairs(l) do
          if s == val and not at then at = i end
        end
      end
      if not at then return nil, not_found() end
      return apply(text, { { { key, at }, nil } })
    end)
  end }
  return routes
end

-- ---- provider-key lists ------------------------------------------------

-- Fields a PATCH may change, per list (CLIProxyAPI's *KeyPatch structs).
local KEY_FIELDS = { "api-key", "prefix", "base-url", "proxy-url", "headers", "excluded-models", "models",
                     "priority", "disabled" }
local COMPAT_FIELDS = { "name", "prefix", "base-url", "api-key-entries", "models", "headers", "priority",
                        "disabled", "proxy-url", "excluded-models" }

local function object_list(key, match_field, fields)
  local routes = {}
  routes[#routes + 1] = { method = "GET", path = "/" .. key, handler = function(req, ctx)
    local cfg = ctx.mgmt.current()
    local out = json.array()
    for i, e in ipairs(cfg[key] or {}) do
      local o = {}
      for k, v in pairs(e) do
        if k ~= "index" then o[k] = v end
      end
      out[i] = o
    end
    return 200, { [key] = out }
  end }
  routes[#routes + 1] = { method = "PUT", path = "/" .. key, handler = function(req, ctx)
    local items = items_of(req.body, false)
    if not items then return invalid() end
    for _, e in ipairs(items) do
      if type(e) ~= "table" or json.is_array(e) then return invalid() end
    end
    return edit(ctx, function(text) return apply(text, { { { key }, json.array(items) } }) end)
  end }
  routes[#routes + 1] = { method = "PATCH", path = "/" .. key, handler = function(req, ctx)
    local b = json.decode(req.body or "")
    if type(b) ~= "table" or type(b.value) ~= "table" or json.is_array(b.value) then return invalid() end
    return edit(ctx, function(text, doc)
      local l = list_in(doc, key)
      local at = b.index ~= nil and as_index(b.index, #l) or nil
      if not at and type(b.match) == "string" and b.match ~= "" then
        for i, e in ipairs(l) do
          if type(e) == "table" and e[match_field] == b.match and not at then at = i end
        end
      end
      if not at then return nil, not_found() end
      local edits = {}
      for _, f in ipairs(fields) do
        local v = b.value[f]
        if v ~= nil then
          -- null or "" clears a field; an empty api-key removes the entry
          -- (CLIProxyAPI's DeleteOnEmptyAPIKey)
          if f == match_field and (v == "" or v == null) then
            return apply(text, { { { key, at }, nil } })
          end
          if v == null or v == "" then v = nil end
          edits[#edits + 1] = { { key, at, f }, v }
        end
      end
      if #edits == 0 then return nil, invalid() end
      return apply(text, edits)
    end)
  end }
  routes[#routes + 1] = { method = "DELETE", path = "/" .. key, handler = function(req, ctx)
    local val = query_param(req.query, match_field)
    local idx = query_param(req.query, "index")
    if not val and not idx then return 400, { error = "missing " .. match_field .. " or index" } end
    return edit(ctx, function(text, doc)
      local l = list_in(doc, key)
      local at
      if val then
        for i, e in ipairs(l) do
          if type(e) == "table" and e[match_field] == val and not at then at = i end
        end
      else
        at = as_index(idx, #l)
      end
      if not at then return nil, not_found() end
      return apply(text, { { { key, at }, nil } })
    end)
  end }
  return routes
end

-- ---- OAuth channel maps --------------------------------------------------

local function channel_map(key, value_field, channel_fields)
  local routes = {}
  routes[#routes + 1] = { method = "GET", path = "/" .. key, handler = function(req, ctx)
    local cfg = ctx.mgmt.current()
    return 200, { [key] = cfg[key] or {} }
  end }
  routes[#routes + 1] = { method = "PUT", path = "/" .. key, handler = function(req, ctx)
    local v = json.decode(req.body or "")
    if type(v) == "table" and type(v.items) == "table" and not json.is_array(v.items) then v = v.items end
    if type(v) ~= "table" or json.is_array(v) then return invalid() end
    for _, l in pairs(v) do
      if not is_list(l) then return invalid() end
    end
    return edit(ctx, function(text) return apply(text, { { { key }, v } }) end)
  end }
  routes[#routes + 1] = { method = "PATCH", path = "/" .. key, handler = function(req, ctx)
    local b = json.decode(req.body or "")
    if type(b) ~= "table" then return invalid() end
    local ch
    for _, f in ipairs(channel_fields) do
      if type(b[f]) == "string" and b[f] ~= "" then ch = b[f]:lower() end
    end
    local list = b[value_field]
    if not ch or (list ~= nil and list ~= null and not is_list(list)) then return invalid() end
    return edit(ctx, function(text, doc)
      if list == nil or list == null or #list == 0 then
        if type(doc[key]) ~= "table" or doc[key][ch] == nil then return nil, not_found() end
        return apply(text, { { { key, ch }, nil } })
      end
      return apply(text, { { { key, ch }, json.array(list) } })
    end)
  end }
  routes[#routes + 1] = { method = "DELETE", path = "/" .. key, handler = function(req, ctx)
    local ch
    for _, f in ipairs(channel_fields) do ch = ch or query_param(req.query, f) end
    if not ch or ch == "" then return 400, { error = "missing provider" } end
    ch = ch:lower()
    return edit(ctx, function(text, doc)
      if type(doc[key]) ~= "table" or doc[key][ch] == nil then return nil, not_found() end
      return apply(text, { { { key, ch }, nil } })
    end)
  end }
  return routes
end

local routes = {}
local function add(list)
  for _, r in ipairs(list) do routes[#routes + 1] = r end
end
add(string_list("api-keys"))
for _, k in ipairs({ "gemini-api-key", "claude-api-key", "codex-api-key", "vertex-api-key" }) do
  add(object_list(k, "api-key", KEY_FIELDS))
end
add(object_list("openai-compatibility", "name", COMPAT_FIELDS))
add(channel_map("oauth-excluded-models", "models", { "provider", "channel" }))
add(channel_map("oauth-model-alias", "aliases", { "provider", "channel" }))

_M.routes = routes

return _M
