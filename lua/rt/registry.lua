-- rt.registry: which upstream targets serve which client-visible model
-- name, built from the config at load (and rebuilt on every reload).
--
-- A target is { provider = <module name>, entry = <config entry>,
-- upstream_model = <name sent upstream>, keys = { <api-key entry>... },
-- owner = <string> }. The same alias on several targets forms a pool.
local ir = require("rt.ir")

local ipairs = ipairs
local pairs = pairs
local sort = table.sort

local _M = {}
local mt = { __index = _M }

-- config key -> provider module
local KEY_KINDS = {
  { key = "claude-api-key", provider = "claude", owner = "claude" },
  { key = "gemini-api-key", provider = "gemini", owner = "gemini" },
  { key = "codex-api-key", provider = "codex", owner = "codex" },
}
_M.KEY_KINDS = KEY_KINDS

local function add(reg, alias, target)
  local list = reg.models[alias]
  if not list then
    list = {}
    reg.models[alias] = list
    reg.order[#reg.order + 1] = alias
  end
  list[#list + 1] = target
end

function _M.build(cfg)
  local reg = setmetatable({ models = {}, order = {}, cursors = {} }, mt)
  for _, e in ipairs(cfg["openai-compatibility"]) do
    if not e.disabled then
      local keys = {}
      for _, k in ipairs(e["api-key-entries"]) do keys[#keys + 1] = k end
      if #keys == 0 then keys[1] = { ["api-key"] = "" } end
      for _, m in ipairs(e.models) do
        local alias = (m.alias and m.alias ~= "") and m.alias or m.name
        local t = { provider = "openai_compat", entry = e, upstream_model = m.name,
                    keys = keys, owner = e.name, priority = e.priority or 0 }
        add(reg, alias, t)
        if e.prefix and e.prefix ~= "" then add(reg, e.prefix .. "/" .. alias, t) end
      end
    end
  end
  -- API-key entries of the first-party providers.
  for _, kind in ipairs(KEY_KINDS) do
    for i, e in ipairs(cfg[kind.key] or {}) do
      local keys = { { ["api-key"] = e["api-key"], ["proxy-url"] = e["proxy-url"] } }
      local owner = kind.owner .. "#" .. i
      for _, m in ipairs(e.models or {}) do
        local alias = (m.alias and m.alias ~= "") and m.alias or m.name
        local t = { provider = kind.provider, entry = e, upstream_model = m.name,
                    keys = keys, owner = owner, priority = e.priority or 0 }
        add(reg, alias, t)
        if e.prefix and e.prefix ~= "" then add(reg, e.prefix .. "/" .. alias, t) end
      end
    end
  end
  sort(reg.order)
  return reg
end

-- Targets for a client model name (the "(suffix)" is ignored for lookup).
function _M:lookup(model)
  if not model then return nil end
  local list = self.models[model]
  if list then return list, model end
  local base = ir.parse_model(model)
  if base and self.models[base] then return self.models[base], base end
  return nil
end

-- Round robin over a list, keyed per name.
function _M:next_index(key, n)
  local c = (self.cursors[key] or 0) % n + 1
  self.cursors[key] = c
  return c
end

function _M:list()
  local out = {}
  for _, alias in ipairs(self.order) do
    out[#out + 1] = { id = alias, owner = self.models[alias][1].owner }
  end
  return out
end

return _M
