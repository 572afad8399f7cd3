-- rt.registry: which accounts serve which client-visible model name.
--
-- Built from the config's API-key entries (openai-compatibility,
-- claude-api-key, gemini-api-key, vertex-api-key, codex-api-key) and the
-- credential files of auth-dir (cpx.store), and registered into the C pool
-- (cpx.pool) as accounts and one group per model name.
--
-- A target is { provider = <module name>, entry = <config entry or the
-- entry synthesised from a credential file>, key = <api-key entry>,
-- upstream_model = <name sent upstream>, account = <pool
-- account id>, owner = <string>, priority = n }. The targets of a name
-- are the members of its pool group, in the same order.
--
-- The registry refreshes itself when the credential store changed (the
-- store's version is compared on every lookup), so files added, changed or
-- deleted in auth-dir take effect on the next request without a reload.
-- Group names carry a fingerprint of their members: a generation that is
-- still finishing requests keeps its own groups, while identical groups
-- (same members) are shared, cursors included, across generations.
local cpx = require("cpx")
local ir = require("lib.ir")
local catalog = require("rt.catalog")
local cooldown = require("lib.cooldown")
local oauth_refresh = require("rt.refresh")
local oauth_flat = require("rt.oauth").flat

local type = type
local tonumber = tonumber
local ipairs = ipairs
local pairs = pairs
local tostring = tostring
local setmetatable = setmetatable
local sort = table.sort
local concat = table.concat
local log = cpx.log or function() end -- absent in the busted module
local json_decode = cpx.json.decode
local pool = cpx.pool
local store = cpx.store

local _M = {}
local mt = { __index = _M }

-- config key -> provider module
local KEY_KINDS = {
  { key = "claude-api-key", provider = "claude", owner = "claude" },
  { key = "gemini-api-key", provider = "gemini", owner = "gemini" },
  { key = "codex-api-key", provider = "codex", owner = "codex" },
  { key = "vertex-api-key", provider = "vertex", owner = "vertex" },
}
_M.KEY_KINDS = KEY_KINDS

-- credential file "type" -> provider module. Types without a provider yet
-- (kimi, aistudio, xai ...) are reported once and skipped.
local CRED_TYPES = {
  codex = { provider = "codex", owner = "openai" },
  claude = { provider = "claude", owner = "anthropic" },
  gemini = { provider = "gemini_cli", owner = "google", projects = true },
  ["gemini-cli"] = { provider = "gemini_cli", owner = "google", projects = true }, -- the plugin's files
  antigravity = { provider = "antigravity", owner = "google" },
  qwen = { provider = "qwen", owner = "qwen" },
  -- iFlow sends the looked-up API key, not the OAuth token
  iflow = { provider = "iflow", owner = "iflow", token = "api_key" },
  -- a Vertex service account (POST /v0/management/vertex/import): its
  -- token is minted by rt.refresh before the first request (mint)
  vertex = { provider = "vertex_sa", owner = "vertex", mint = true },
}
_M.CRED_TYPES = CRED_TYPES

-- ---- helpers ------------------------------------------------------------

local function short_hash(s)
  return cpx.sha256_hex(s):sub(1, 12)
end

local function nonempty(s)
  return type(s) == "string" and s ~= "" and s or nil
end

-- excluded-models patterns: exact, prefix-*, *-suffix, *substr*.
local function excluded(patterns, model)
  if not patterns then return false end
  for _, p in ipairs(patterns) do
    if type(p) == "string" and p ~= "" then
      local head, tail = p:sub(1, 1) == "*", p:sub(-1) == "*"
      if head and tail and #p > 1 then
        if model:find(p:sub(2, -2), 1, true) then return true end
      elseif head then
        local suf = p:sub(2)
        if suf == "" or model:sub(-#suf) == suf then return true end
      elseif tail then
        local pre = p:sub(1, -2)
        if model:sub(1, #pre) == pre then return true end
      elseif p == model then
        return true
      end
    end
  end
  return false
end
_M.excluded = excluded

local function add(reg, alias, target)
  local list = reg.models[alias]
  if not list then
    list = {}
    reg.models[alias] = list
    reg.order[#reg.order + 1] = alias
  end
  list[#list + 1] = target
end

-- Registers alias (and prefix/alias). With force-model-prefix, a prefixed
-- credential serves only the prefixed name.
local function register(reg, alias, target, prefix)
  prefix = nonempty(prefix)
  if prefix then
    add(reg, prefix .. "/" .. alias, target)
    if not reg.force_prefix or prefix == alias then add(reg, alias, target) end
  else
    add(reg, alias, target)
  end
end

local function account(reg, a)
  reg.accounts[a.id] = a
  return a.id
end

-- The (name, alias) pairs an entry serves: its models, else the catalog.
local function model_list(models, provider)
  local out = {}
  if models and #models > 0 then
    for _, m in ipairs(models) do
      out[#out + 1] = { name = m.name, alias = nonempty(m.alias) or m.name }
    end
  else
    for _, m in ipairs(catalog.for_provider(provider)) do
      out[#out + 1] = { name = m.id, alias = m.id }
    end
  end
  return out
end

-- ---- sources ------------------------------------------------------------

local function from_openai_compat(reg, cfg)
  for _, e in ipairs(cfg["openai-compatibility"] or {}) do
    if not e.disabled then
      local keys = {}
      for _, k in ipairs(e["api-key-entries"] or {}) do keys[#keys + 1] = k end
      if #keys == 0 then keys[1] = { ["api-key"] = "" } end
      local ids = {}
      for i, k in ipairs(keys) do
        ids[i] = account(reg, {
          id = "openai-compatibility:" .. e.name .. ":"
            .. short_hash((e["base-url"] or "") .. "\0" .. (k["api-key"] or "")),
          provider = "openai_compat", priority = e.priority or 0, weight = e.weight or 1,
          disable_cooling = e["disable-cooling"] or false,
        })
      end
      for _, m in ipairs(e.models or {}) do
        local alias = nonempty(m.alias) or m.name
        if not excluded(e["excluded-models"], alias) and not excluded(e["excluded-models"], m.name) then
          for i, k in ipairs(keys) do
            register(reg, alias, { provider = "openai_compat", entry = e, key = k,
                                   upstream_model = m.name, owner = e.name, account = ids[i],
                                   priority = e.priority or 0 }, e.prefix)
          end
        end
      end
    end
  end
end

local function from_key_entries(reg, cfg)
  for _, kind in ipairs(KEY_KINDS) do
    for i, e in ipairs(cfg[kind.key] or {}) do
      local key = { ["api-key"] = e["api-key"], ["proxy-url"] = e["proxy-url"] }
      local id = account(reg, {
        id = kind.key .. ":" .. short_hash((e["base-url"] or "") .. "\0" .. (e["api-key"] or "")),
        provider = kind.provider, priority = e.priority or 0, weight = e.weight or 1,
        disable_cooling = e["disable-cooling"] or false,
      })
      for _, m in ipairs(model_list(e.models, kind.provider)) do
        if not excluded(e["excluded-models"], m.alias) and not excluded(e["excluded-models"], m.name) then
          register(reg, m.alias, { provider = kind.provider, entry = e, key = key,
                                   upstream_model = m.name, owner = kind.owner .. "#" .. i, account = id,
                                   priority = e.priority or 0 }, e.prefix)
        end
      end
    end
  end
end

-- oauth-model-alias.<channel>: name -> alias (fork keeps the name too).
local function oauth_aliases(cfg, channel, name)
  local rules = cfg["oauth-model-alias"] and cfg["oauth-model-alias"][channel]
  local out = {}
  local renamed, fork = false, false
  for _, r in ipairs(rules or {}) do
    if r.name == name and nonempty(r.alias) then
      out[#out + 1] = r.alias
      renamed = true
      fork = fork or r.fork
    end
  end
  if not renamed or fork then out[#out + 1] = name end
  return out
end

local warned = {}

-- { "a", "b" } -> "a,b" (other members ignored), nil when none
local function join_strings(t)
  if type(t) ~= "table" then return nil end
  local out = {}
  for _, v in ipairs(t) do
    if nonempty(v) then out[#out + 1] = v end
  end
  return out[1] and concat(out, ",") or nil
end

-- "a, b,c" -> { "a", "b", "c" }
local function project_list(s)
  if not nonempty(s) then return nil end
  local out = {}
  for p in s:gmatch("[^,%s]+") do out[#out + 1] = p end
  return out
end

-- oauth-endpoints.<type>.api-base-url: where that provider's OAuth
-- accounts send inference (a mirror, a test upstream).
local function oauth_base(cfg, ctype)
  local e = cfg["oauth-endpoints"] and cfg["oauth-endpoints"][ctype]
  return type(e) == "table" and nonempty(e["api-base-url"]) or nil
end

-- A Claude file's cloak options (cloak_mode, cloak_strict_mode,
-- cloak_sensitive_words, cloak_cache_user_id) in the shape of a
-- claude-api-key entry's `cloak` block; nil when the file sets none.
local function cloak_of(doc)
  if doc.cloak_mode == nil and doc.cloak_strict_mode == nil and doc.cloak_sensitive_words == nil
      and doc.cloak_cache_user_id == nil then
    return nil
  end
  return { mode = nonempty(doc.cloak_mode), ["strict-mode"] = doc.cloak_strict_mode == true,
           ["sensitive-words"] = type(doc.cloak_sensitive_words) == "table" and doc.cloak_sensitive_words or nil,
           ["cache-user-id"] = doc.cloak_cache_user_id }
end

local function from_credentials(reg, cfg, creds)
  for _, c in ipairs(creds or {}) do
    local kind = CRED_TYPES[c.type]
    -- Gemini keeps its tokens in a nested `token` (rt.oauth.flat)
    local doc = oauth_flat(json_decode(c.text))
    if not kind then
      if not warned[c.name] then
        warned[c.name] = true
        log("info", "auth-dir: " .. c.name .. ": type '" .. tostring(c.type) .. "' has no provider yet; skipped")
      end
    elseif type(doc) ~= "table" then
      log("warn", "auth-dir: " .. c.name .. ": unreadable JSON; skipped")
    elseif doc.disabled == true then
      reg.disabled[#reg.disabled + 1] = c.name
    else
      local token = kind and kind.token and nonempty(doc[kind.token])
        or nonempty(doc.access_token) or nonempty(doc.api_key)
        or (kind.mint and type(doc.service_account) == "table" and "") or nil
      if not token then
        if not warned[c.name] then
          warned[c.name] = true
          log("warn", "auth-dir: " .. c.name .. ": no access_token; skipped")
        end
      else
        local entry = {
          ["base-url"] = nonempty(doc.base_url) or oauth_base(cfg, c.type),
          ["proxy-url"] = nonempty(doc.proxy_url),
          headers = type(doc.headers) == "table" and doc.headers or nil,
          prefix = nonempty(doc.prefix),
          oauth = true,
          account_id = nonempty(doc.account_id),
          email = nonempty(doc.email),
          note = doc.note,
          file = c.name,
          account_uuid = nonempty(doc.account_uuid),
          -- Google accounts: v6's project_id (maybe a list), the plugin's project_ids
          project_id = nonempty(doc.project_id)
            or join_strings(doc.project_ids),
          cloak = cloak_of(doc),
          resource_url = nonempty(doc.resource_url), -- Qwen's API host
          location = nonempty(doc.location), -- Vertex's region
        }
        local key = { ["api-key"] = token, ["proxy-url"] = entry["proxy-url"] }
        local priority = tonumber(doc.priority) or 0
        local excl = type(doc.excluded_models) == "table" and doc.excluded_models or nil
        local cexcl = cfg["oauth-excluded-models"] and cfg["oauth-excluded-models"][c.type]
        -- A Gemini CLI file naming several projects ("a,b,c", CLIProxyAPI's
        -- multi-project login) is one account per project (its virtual
        -- children), all on the file's token.
        local variants = { { suffix = "", entry = entry } }
        local plist = kind.projects and project_list(entry.project_id)
        if plist and #plist > 1 then
          variants = {}
          for i, p in ipairs(plist) do
            local e = {}
            for k, v in pairs(entry) do e[k] = v end
            e.project_id = p
            variants[i] = { suffix = "#" .. p, entry = e }
          end
        end
        for _, var in ipairs(variants) do
          local id = account(reg, {
            id = "auth:" .. c.name .. var.suffix, provider = kind.provider, priority = priority,
            weight = tonumber(doc.weight) or 1, disable_cooling = doc.disable_cooling == true,
            request_retry = tonumber(doc.request_retry),
            -- invalid_grant at the last refresh: out of the pool until the
            -- file changes (rt.refresh)
            disabled = oauth_refresh.blocked(c.name, c.text) or nil,
          })
          for _, m in ipairs(catalog.for_provider(kind.provider)) do
            if not excluded(excl, m.id) and not excluded(cexcl, m.id) then
              for _, alias in ipairs(oauth_aliases(cfg, c.type, m.id)) do
                register(reg, alias, { provider = kind.provider, entry = var.entry, key = key,
                                       upstream_model = m.id, owner = kind.owner, account = id,
                                       priority = priority, credential = c.name }, entry.prefix)
              end
            end
          end
        end
      end
    end
  end
end

-- ---- build and pool sync ------------------------------------------------

local function affinity_ttl(routing)
  if not routing or routing["session-affinity"] ~= true then return 0 end
  local ttl = routing["session-affinity-ttl"]
  return cooldown.parse_duration(ttl) or 3600
end

-- Registers accounts and groups in the C pool.
function _M:sync()
  local cfg = self.cfg
  local routing = cfg.routing or {}
  pool.configure({ strategy = routing.strategy or "round-robin",
                   disable_cooling = cfg["disable-cooling"] == true,
                   affinity_ttl = affinity_ttl(routing) })
  for _, a in pairs(self.accounts) do pool.account(a) end
  for alias, list in pairs(self.models) do
    local members, fp = {}, {}
    for i, t in ipairs(list) do
      members[i] = { account = t.account, model = t.upstream_model }
      fp[i] = t.account .. "\0" .. t.upstream_model
    end
    local name = alias .. "#" .. short_hash(concat(fp, "\n"))
    local ok, err = pool.group(name, members)
    if not ok then log("error", "pool group " .. alias .. ": " .. tostring(err)) end
    self.groups[alias] = name
  end
end

-- cfg: the validated config. creds: cpx.store.list() entries; when nil,
-- the store of cfg["auth-dir"] is opened (watched) and read.
function _M.build(cfg, creds)
  local reg = setmetatable({ cfg = cfg, models = {}, order = {}, cursors = {}, accounts = {},
                             groups = {}, disabled = {}, force_prefix = cfg["force-model-prefix"] == true,
                             auto_store = creds == nil }, mt)
  if creds == nil then
    local dir = cfg["auth-dir"]
    if type(dir) == "string" and dir ~= "" then
      local ok, err = store.open(dir)
      if not ok then log("warn", "auth-dir: " .. tostring(err)) end
    end
    reg.store_version = store.version()
    -- rt.refresh moves it when an account needs a new login (invalid_grant)
    reg.refresh_epoch = oauth_refresh.epoch()
    creds = store.list()
  end
  from_openai_compat(reg, cfg)
  from_key_entries(reg, cfg)
  from_credentials(reg, cfg, creds)
  sort(reg.order)
  reg:sync()
  -- Cooldowns saved before a restart (auth-dir/.cliproxy-cooldowns.json);
  -- the C side reads the file once per process.
  local dir = reg.auto_store and store.dir and store.dir()
  if dir and pool.load_file then
    local n, err = pool.load_file(dir)
    if not n then
      log("warn", "pool: cannot read the cooldowns kept in " .. dir .. ": " .. tostring(err))
    elseif n > 0 then
      log("info", "pool: " .. n .. " cooldown(s) kept from before the restart")
    end
  end
  return reg
end

-- Rebuilds in place when the credential store moved on.
function _M:refresh()
  if not self.auto_store then return self end
  local v = store.version()
  if v == self.store_version and oauth_refresh.epoch() == self.refresh_epoch then return self end
  local fresh = _M.build(self.cfg)
  for k, v2 in pairs(fresh) do self[k] = v2 end
  return self
end

-- Targets for a client model name (the "(suffix)" is ignored for lookup):
-- targets, alias, pool group name.
function _M:lookup(model)
  if type(model) ~= "string" then return nil end
  self:refresh()
  local list = self.models[model]
  if list then return list, model, self.groups[model] end
  local base = ir.parse_model(model)
  if base and self.models[base] then return self.models[base], base, self.groups[base] end
  return nil
end

-- Round robin over a list, keyed per name (kept for callers outside the
-- pool, e.g. token counting).
function _M:next_index(key, n)
  local c = (self.cursors[key] or 0) % n + 1
  self.cursors[key] = c
  return c
end

-- The models available now: { id, owner, provider, context, output,
-- thinking } sorted by id.
function _M:list()
  self:refresh()
  local out = {}
  for _, alias in ipairs(self.order) do
    local t = self.models[alias][1]
    local c = catalog.find(t.upstream_model) or catalog.find(alias) or {}
    out[#out + 1] = { id = alias, owner = c.owned_by or t.owner, provider = t.provider,
                      context = c.context, output = c.output, thinking = c.thinking }
  end
  return out
end

return _M
