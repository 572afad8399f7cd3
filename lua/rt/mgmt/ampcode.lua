-- rt.mgmt.ampcode: Amp CLI's settings (`ampcode.*` in config.yaml), in
-- CLIProxyAPI v6's shapes (its amp management handlers):
--   GET  /ampcode                                   {"ampcode": {...}}
--   GET  /ampcode/<scalar>                          {"<scalar>": value}
--   PUT | PATCH /ampcode/<scalar> {"value": X}      {"status":"ok"}
--   DELETE /ampcode/upstream-url, /upstream-api-key sets ""
--   GET  /ampcode/model-mappings                    {"model-mappings": [{from, to, regex}]}
--   PUT  /ampcode/model-mappings {"value": [...]}   replaces the list ([...] alone too)
--   PATCH /ampcode/model-mappings {"value": [...]}  adds, or replaces the entry with the same from
--   DELETE /ampcode/model-mappings [{"value": [from, ...]}]  removes those, or all without a body
--   .../upstream-api-keys: the same with [{upstream-api-key, api-keys}], matched by upstream-api-key
-- Strings are trimmed and empty client keys dropped (as CLIProxyAPI does).
-- Every change edits config.yaml at the ampcode node only and is validated
-- like a file load (rt.config's ampcode schema), then reloaded.
local json = require("lib.json")
local yaml_edit = require("rt.mgmt.yaml_edit")

local type = type
local ipairs = ipairs
local next = next
local floor = math.floor

local _M = { name = "ampcode" }

local function path_of(key) return { "ampcode", key } end

local function invalid(msg) return 400, { error = "invalid body", message = msg } end

local function trim(s)
  return type(s) == "string" and s:match("^%s*(.-)%s*$") or nil
end

local function current_amp(ctx)
  local a = ctx.mgmt.current().ampcode
  return type(a) == "table" and a or {}
end

-- ---- scalars ---------------------------------------------------------------

local SCALARS = {
  { "upstream-url", "string", delete = true },
  { "upstream-api-key", "string", delete = true },
  { "restrict-management-to-localhost", "boolean" },
  { "force-model-mappings", "boolean" },
}

local function type_ok(want, v)
  if want == "integer" then return type(v) == "number" and v == floor(v) end
  return type(v) == want
end

-- ---- lists -----------------------------------------------------------------

-- Each list: its key, the field entries are matched by, and the entry as
-- written (nil drops it).
local LISTS = {
  {
    key = "model-mappings", match = "from",
    clean = function(e)
      if type(e) ~= "table" then return nil, "an entry must be an object" end
      local from, to = trim(e.from), trim(e.to)
      if not from or from == "" or not to or to == "" then return nil, "from and to are required" end
      if e.regex ~= nil and type(e.regex) ~= "boolean" then return nil, "regex must be a boolean" end
      local o = { { "from", from }, { "to", to } }
      if e.regex then o[#o + 1] = { "regex", true } end
      return json.object(o)
    end,
  },
  {
    key = "upstream-api-keys", match = "upstream-api-key",
    clean = function(e)
      if type(e) ~= "table" then return nil, "an entry must be an object" end
      local up = trim(e["upstream-api-key"])
      if not up then return nil, "upstream-api-key is required" end
      if up == "" then return false end -- dropped, as an empty key maps nothing
      local keys = json.array()
      if e["api-keys"] ~= nil and type(e["api-keys"]) ~= "table" then return nil, "api-keys must be a list" end
      for _, k in ipairs(e["api-keys"] or {}) do
        local t = trim(k)
        if not t then return nil, "api-keys must be strings" end
        if t ~= "" then keys[#keys + 1] = t end
      end
      return json.object({ { "upstream-api-key", up }, { "api-keys", keys } })
    end,
  },
}

-- The body's list: {"value": [...]} or [...] -> cleaned entries | nil, msg
local function entries_of(spec, body)
  local v = json.decode(body or "")
  if type(v) == "table" and not json.is_array(v) then v = v.value end
  if type(v) ~= "table" or (not json.is_array(v) and next(v) ~= nil) then
    return nil, "expected {\"value\": [...]}"
  end
  local out = json.array()
  for i, e in ipairs(v) do
    local c, err = spec.clean(e)
    if c == nil then return nil, ("value[%d]: %s"):format(i - 1, err) end
    if c then out[#out + 1] = c end
  end
  return out
end

-- The list as it is in the file, cleaned (so an edit writes clean entries).
local function list_of(spec, ctx)
  local out = json.array()
  for _, e in ipairs(current_amp(ctx)[spec.key] or {}) do
    local c = spec.clean(e)
    if c then out[#out + 1] = c end
  end
  return out
end

local function set_list(ctx, spec, list)
  local m = ctx.mgmt
  if #list == 0 then return m.saved(m.set_key(path_of(spec.key), nil)) end
  return m.saved(m.set_key(path_of(spec.key), list))
end

local routes = {
  { method = "GET", path = "/ampcode", handler = function(_, ctx)
    return 200, { ampcode = current_amp(ctx) }
  end },
}

for _, s in ipairs(SCALARS) do
  local name, want = s[1], s[2]
  local route = "/ampcode/" .. name
  routes[#routes + 1] = { method = "GET", path = route, handler = function(_, ctx)
    local v = current_amp(ctx)[name]
    if v == nil then v = json.null end
    return 200, { [name] = v }
  end }
  local function update(req, ctx)
    local body = json.decode(req.body or "")
    if type(body) ~= "table" then return invalid("expected {\"value\": ...}") end
    local v = body.value
    if want == "string" then v = trim(v) end
    if not type_ok(want, v) then return invalid("value must be a " .. want) end
    return ctx.mgmt.saved(ctx.mgmt.set_key(path_of(name), v))
  end
  routes[#routes + 1] = { method = "PUT", path = route, handler = update }
  routes[#routes + 1] = { method = "PATCH", path = route, handler = update }
  if s.delete then
    routes[#routes + 1] = { method = "DELETE", path = route, handler = function(_, ctx)
      return ctx.mgmt.saved(ctx.mgmt.set_key(path_of(name), ""))
    end }
  end
end

for _, spec in ipairs(LISTS) do
  local route = "/ampcode/" .. spec.key
  routes[#routes + 1] = { method = "GET", path = route, handler = function(_, ctx)
    return 200, { [spec.key] = list_of(spec, ctx) }
  end }
  routes[#routes + 1] = { method = "PUT", path = route, handler = function(req, ctx)
    local list, err = entries_of(spec, req.body)
    if not list then return invalid(err) end
    return set_list(ctx, spec, list)
  end }
  -- PATCH and DELETE edit the entries they touch (a field, an appended
  -- entry, a removed one), so comments on the others stay.
  routes[#routes + 1] = { method = "PATCH", path = route, handler = function(req, ctx)
    local add, err = entries_of(spec, req.body)
    if not add then return invalid(err) end
    if #add == 0 then return invalid("value is empty") end
    return ctx.mgmt.saved(ctx.mgmt.edit_config(function(text, doc)
      local amp = type(doc.ampcode) == "table" and doc.ampcode or {}
      local raw = type(amp[spec.key]) == "table" and amp[spec.key] or {}
      local n = #raw
      for _, e in ipairs(add) do
        local at
        for i, o in ipairs(raw) do
          if type(o) == "table" and trim(o[spec.match]) == e[spec.match] then at = i end
        end
        local new, eerr
        if at then
          -- the fields that differ, and the ones the new entry leaves out
          new = text
          for _, f in ipairs({ "from", "to", "regex", "upstream-api-key", "api-keys" }) do
            local want, have = e[f], raw[at][f]
            if want ~= nil and json.encode(want) ~= json.encode(have) then
              new, eerr = yaml_edit.set(new, { "ampcode", spec.key, at, f }, want)
            elseif want == nil and have ~= nil then
              new, eerr = yaml_edit.delete(new, { "ampcode", spec.key, at, f })
            end
            if not new then break end
          end
        else
          n = n + 1
          new, eerr = yaml_edit.set(text, { "ampcode", spec.key, n }, e)
        end
        if not new then return nil, 500, ctx.mgmt.err("edit_failed", eerr) end
        text = new
      end
      return text
    end))
  end }
  routes[#routes + 1] = { method = "DELETE", path = route, handler = function(req, ctx)
    local body = req.body and req.body ~= "" and json.decode(req.body) or nil
    local names = type(body) == "table" and body.value or nil
    if names == nil or (type(names) == "table" and #names == 0) then
      return set_list(ctx, spec, json.array()) -- no list: all of them
    end
    if type(names) ~= "table" or not json.is_array(names) then return invalid("expected {\"value\": [...]}") end
    local drop = {}
    for _, nm in ipairs(names) do
      local t = trim(nm)
      if not t then return invalid("value must list strings") end
      drop[t] = true
    end
    return ctx.mgmt.saved(ctx.mgmt.edit_config(function(text, doc)
      local amp = type(doc.ampcode) == "table" and doc.ampcode or {}
      local raw = type(amp[spec.key]) == "table" and amp[spec.key] or {}
      local hit = false
      for i = #raw, 1, -1 do -- from the end, so the indices before stay
        if type(raw[i]) == "table" and drop[trim(raw[i][spec.match]) or ""] then
          local new, eerr = yaml_edit.delete(text, { "ampcode", spec.key, i })
          if not new then return nil, 500, ctx.mgmt.err("edit_failed", eerr) end
          text, hit = new, true
        end
      end
      if not hit then return nil, 404, { error = "item not found" } end
      return text
    end))
  end }
end

_M.routes = routes

return _M
