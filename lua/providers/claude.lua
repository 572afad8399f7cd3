-- providers/claude: Anthropic Messages, with an API key (`claude-api-key`)
-- or a Claude Code login (a `claude` credential file: entry.oauth).
--
-- API keys: the official host takes the key in x-api-key, a custom
-- base-url gets Authorization: Bearer (as CLIProxyAPI does). Logins: a
-- Bearer token and Claude Code's fingerprint (beta list, X-Stainless-*,
-- X-App, a stable X-Claude-Code-Session-Id, claude-header-defaults), and
-- for other clients the cloak of providers/claude_cloak.lua (cloak mode
-- auto|always|never). Every request gets the body fix-ups the API needs:
-- body `betas` moved to the header, thinking off when tool_choice forces a
-- tool, temperature 1 with thinking, at most 4 cache_control breakpoints.
-- The strings are data: providers/claude_profile.lua.
local cpx = require("cpx")
local cooldown = require("lib.cooldown")
local util = require("lib.provider_util")
local catalog = require("rt.catalog")
local cloak = require("providers.claude_cloak")
local profile = require("providers.claude_profile")

local type = type
local ipairs = ipairs
local next = next
local pairs = pairs
local unpack = unpack
local tostring = tostring
local concat = table.concat
local gmatch = string.gmatch
local log = cpx.log or function() end
-- rt.lane evaluates the relay rules (loaded on first use: rt.lane loads
-- rt.payload, which the busted specs of this file do not need).
local lane
local function relay_rules()
  lane = lane or require("rt.lane")
  return lane
end

local _M = {
  name = "claude-api-key",
  format = "claude",
  base_url = "https://api.anthropic.com",
  anthropic_version = "2023-06-01",
  -- What a plain API-key request sends as its user-agent (the Claude Code
  -- fingerprint of logins and cloaked requests is providers/claude_profile).
  user_agent = "claude-cli/2.1.63 (external, cli)",
  -- At most this many cache_control breakpoints (Anthropic's limit).
  max_breakpoints = 4,
  -- max_tokens of a body without one, for a model the catalog does not know.
  default_max_tokens = 1024,
  -- The Claude Code login (cliproxyapi.md §3.2 and its OAuth update):
  -- URLs, client id and scopes as Claude Code sends them. oauth-endpoints
  -- in the config overrides the URLs; rt.oauth reads this table.
  oauth = {
    type = "claude",
    client_id = "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
    auth_url = "https://claude.ai/oauth/authorize",
    token_url = "https://platform.claude.com/v1/oauth/token",
    redirect_port = 54545,
    redirect_path = "/callback",
    scopes = "user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload",
    authorize_params = { { "code", "true" } },
    token_body = "json",
    -- Claude Code 2.1.220's key order; the state rides along.
    exchange_order = { "grant_type", "code", "redirect_uri", "client_id", "code_verifier", "state" },
    refresh_order = { "grant_type", "refresh_token", "client_id", "scope" },
    token_headers = { ["User-Agent"] = "axios/1.15.2", ["Accept"] = "application/json, text/plain, */*" },
    lead = 4 * 3600,
  },
}


local function official(base)
  return base:find("^https://api%.anthropic%.com") ~= nil
end

-- ---- beta list ------------------------------------------------------------

-- Adds the comma-separated betas of s (or the strings of a list) to list,
-- each once, in order.
local function add_betas(list, seen, s)
  if type(s) == "string" then
    for b in gmatch(s, "[^,%s]+") do
      if not seen[b] then
        seen[b] = true
        list[#list + 1] = b
      end
    end
  elseif type(s) == "table" then
    for _, b in ipairs(s) do add_betas(list, seen, b) end
  end
end

-- The Anthropic-Beta value (nil: none). client: the client's header
-- (a Claude client's), body_betas: the body's `betas`, fp: the request
-- carries the Claude Code fingerprint (a login, or cloaked), oauth: a
-- login, one_m: the client asked for the 1M context.
function _M.merge_betas(p, client, body_betas, fp, oauth, one_m)
  local list, seen = {}, {}
  if type(client) == "string" and client:find("%S") then
    add_betas(list, seen, client)
  elseif fp then
    for _, b in ipairs(p.betas) do
      if oauth or not p.oauth_only_betas[b] then add_betas(list, seen, b) end
    end
  end
  if fp then
    for _, b in ipairs(p.always_betas) do
      if oauth or not p.oauth_only_betas[b] then add_betas(list, seen, b) end
    end
  end
  add_betas(list, seen, body_betas)
  if one_m then add_betas(list, seen, p.context_1m_beta) end
  if #list == 0 then return nil end
  return concat(list, ",")
end

-- ---- body fix-ups -----------------------------------------------------------

-- Thinking is turned off when tool_choice forces a tool (the API refuses
-- both), and temperature must be 1 while thinking. Top level only.
function _M.thinking_rules(body)
  local tc = body.tool_choice
  if type(tc) == "table" and (tc.type == "any" or tc.type == "tool") and body.thinking ~= nil then
    body.thinking = nil
  end
  local th = body.thinking
  if type(th) == "table" and (th.type == "enabled" or th.type == "adaptive")
      and body.temperature ~= nil and body.temperature ~= 1 then
    body.temperature = 1
  end
  return body
end

-- The cache_control breakpoints of a Messages body in prompt order (tools,
-- system, messages, tool_result contents): { section, path, label }.
local function breakpoints(body)
  local out = {}
  local function scan(section, list, path, label)
    if type(list) ~= "table" then return end
    for i, b in ipairs(list) do
      if type(b) == "table" then
        local p = { unpack(path) }
        p[#p + 1] = i
        local l = label .. "[" .. (i - 1) .. "]"
        if b.cache_control ~= nil then out[#out + 1] = { section = section, path = p, label = l } end
        if section == "messages" and b.type == "tool_result" and type(b.content) == "table" then
          local q = { unpack(p) }
          q[#q + 1] = "content"
          scan(section, b.content, q, l .. ".content")
        end
      end
    end
  end
  scan("tools", body.tools, { "tools" }, "tools")
  scan("system", body.system, { "system" }, "system")
  if type(body.messages) == "table" then
    for i, m in ipairs(body.messages) do
      if type(m) == "table" then
        scan("messages", m.content, { "messages", i, "content" }, "messages[" .. (i - 1) .. "].content")
      end
    end
  end
  return out
end

-- Keeps at most max breakpoints. The last one (the longest cached prefix)
-- always stays; the extra ones go from the messages first, oldest first
-- (a moving conversation reuses them least), then the system blocks, then
-- the tools, first first. Copy-on-write (owned: see claude_cloak.own).
-- Returns body and the labels of the removed ones ("messages[0].content[1]").
function _M.limit_breakpoints(body, max, owned)
  local bps = breakpoints(body)
  local dropped = {}
  local extra = #bps - max
  if extra <= 0 then return body, dropped end
  local drop = {}
  for _, section in ipairs({ "messages", "system", "tools" }) do
    for i = 1, #bps - 1 do
      if extra == 0 then break end
      if bps[i].section == section then
        drop[i] = true
        extra = extra - 1
      end
    end
  end
  owned = owned or {}
  for i, bp in ipairs(bps) do
    if drop[i] then
      local t = body
      for _, k in ipairs(bp.path) do t = cloak.own(owned, t, k) end
      t.cache_control = nil
      dropped[#dropped + 1] = bp.label
    end
  end
  return body, dropped
end

-- ---- per-attempt state ------------------------------------------------------

-- What prepare and the fix-ups of one attempt share: kept in the attempt's
-- ctx as ctx.claude, for the account (target.entry) it was made for. The
-- pipeline hands fixup the pool's target (ctx.target) and prepare a table
-- of its own ({ entry, key, upstream_model }: the key may be a refreshed
-- token), so the account's entry, not the table, says whose state it is.
local function state(ctx, target)
  local st = ctx.claude
  if st and st.entry == target.entry then return st end
  local entry = target.entry or {}
  local headers = ctx.info and ctx.info.headers or {}
  local cfg = ctx.config or {}
  local set = cloak.settings(entry, cfg["disable-claude-cloak-mode"] == true)
  local k = target.key and target.key["api-key"] or entry["api-key"] or ""
  local seed = entry.file or k
  st = {
    entry = target.entry,
    oauth = entry.oauth == true,
    settings = set,
    claude_code = cloak.is_claude_code(headers, profile),
    cloaked = cloak.applies(set.mode, headers, profile),
    account_seed = seed,
    session_seed = util.client_key(ctx.info) or "",
  }
  st.fingerprint = st.oauth or st.cloaked
  ctx.claude = st
  return st
end

-- The header defaults: claude-header-defaults, then the profile's.
local function header_default(cfg, name)
  local d = cfg["claude-header-defaults"]
  local v = type(d) == "table" and d[name]
  if v ~= nil and v ~= "" then return tostring(v) end
  return profile.headers[name]
end

-- What the relay (rt.lane, the C relay and the pipeline's raw
-- passthrough) may send as the client wrote it: a body with none of
-- fixup's changes to make (no body `betas`, max_tokens present, no thinking
-- next to temperature or tool_choice, at most max_breakpoints
-- cache_control: '_control"' is counted, a longer key ending the same way
-- only ever costs a decode), from an API-key account that is never cloaked.
-- The client's anthropic-version and anthropic-beta go upstream as sent
-- when prepare would send them so: for an API key that is never cloaked,
-- merge_betas gives the client's list back deduplicated and without spaces,
-- so a beta list in that form is relayed and any other (spaces, repeats,
-- empty items, the header twice) is Lua's (`list`: the C side sends a
-- value, never rewrites it). x-cpa-claude-1m adds a beta, so such a
-- request is Lua's too.
_M.relay = {
  unless = { "betas", { "thinking", "temperature" }, { "thinking", "tool_choice" } },
  require = { "max_tokens" },
  at_most = { { '_control"', _M.max_breakpoints } },
  headers = { { "anthropic-version", "Anthropic-Version" }, { "anthropic-beta", "Anthropic-Beta", list = true } },
  lua_headers = { profile.context_1m_header },
  account = function(target, config)
    local entry = target.entry or {}
    if entry.oauth then return false, "a Claude Code login" end
    local set = cloak.settings(entry, type(config) == "table" and config["disable-claude-cloak-mode"] == true)
    if set.mode ~= "never" then return false, "cloak mode " .. tostring(set.mode) end
    return true
  end,
}

-- True when a same-format body needs none of fixup's changes, so the
-- pipeline may send the client's bytes as they are: not cloaked, and the
-- relay's body rules hold.
function _M.raw_ok(ctx, target, raw)
  local st = state(ctx, target)
  if st.cloaked then return false end
  return relay_rules().body_ok(_M.relay, raw)
end

function _M.fixup(body, ctx)
  local target = ctx.target or {}
  local st = state(ctx, target)
  if body.betas ~= nil then
    st.body_betas = body.betas
    body.betas = nil
  end
  _M.thinking_rules(body)
  local owned = {}
  local counting = ctx.endpoint == "count_tokens"
  -- The API requires max_tokens: the model's output limit, else 1024.
  if body.max_tokens == nil and not counting then
    local c = catalog.find(ctx.upstream_model or target.upstream_model or "")
    body.max_tokens = c and c.output or _M.default_max_tokens
  end
  if st.cloaked and not counting then
    local ua = header_default(ctx.config or {}, "user-agent")
    local seed = st.session_seed
    local md = body.metadata
    if type(md) == "table" and type(md.user_id) == "string" and md.user_id ~= "" then seed = md.user_id end
    local rev, session
    body, rev, session = cloak.apply(body, profile, {
      user_agent = ua, strict = st.settings.strict, words = st.settings.words,
      account_seed = st.account_seed, session_seed = seed,
      account_uuid = target.entry and target.entry.account_uuid, owned = owned,
    })
    st.session = session
    if next(rev) then
      ctx.tool_reverse = rev
      ctx.fixup_response = true
    end
  end
  local _, dropped = _M.limit_breakpoints(body, _M.max_breakpoints, owned)
  if #dropped > 0 then
    log("debug", "claude: kept " .. _M.max_breakpoints .. " cache_control breakpoints, removed "
      .. concat(dropped, ", "))
  end
  return body
end

function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  local base = util.base(entry, _M.base_url)
  local client = ctx.info and ctx.info.headers or {}
  local cfg = ctx.config or {}
  local st = state(ctx, target)
  local claude_client = ctx.client_format == "claude"
  local headers = {
    ["Content-Type"] = "application/json",
    ["Anthropic-Version"] = (claude_client and client["anthropic-version"]) or profile.anthropic_version,
    ["User-Agent"] = _M.user_agent,
    ["Accept"] = stream and "text/event-stream" or "application/json",
  }
  headers["Anthropic-Beta"] = _M.merge_betas(profile, claude_client and client["anthropic-beta"] or nil,
                                             st.body_betas, st.fingerprint, st.oauth,
                                             client[profile.context_1m_header] ~= nil)
  local k = key and key["api-key"] or entry["api-key"]
  if official(base) and not entry.oauth then
    headers["X-Api-Key"] = k
  else
    headers["Authorization"] = "Bearer " .. k
  end
  if st.fingerprint then
    -- Claude Code's own values pass (unless stabilize-device-profile);
    -- anyone else gets the defaults.
    local d = cfg["claude-header-defaults"]
    local pass = st.claude_code and not (type(d) == "table" and d["stabilize-device-profile"] == true)
    local function pick(name, dflt)
      local v = pass and client[name:lower()] or nil
      if v ~= nil and v ~= "" then return v end
      return dflt
    end
    for name, v in pairs(profile.fixed_headers) do headers[name] = pick(name, v) end
    headers["User-Agent"] = pick("User-Agent", header_default(cfg, "user-agent"))
    headers["X-Stainless-Package-Version"] = pick("X-Stainless-Package-Version", header_default(cfg, "package-version"))
    headers["X-Stainless-Runtime-Version"] = pick("X-Stainless-Runtime-Version", header_default(cfg, "runtime-version"))
    headers["X-Stainless-OS"] = pick("X-Stainless-OS", header_default(cfg, "os"))
    headers["X-Stainless-Arch"] = pick("X-Stainless-Arch", header_default(cfg, "arch"))
    headers["X-Stainless-Timeout"] = pick("X-Stainless-Timeout", header_default(cfg, "timeout"))
    headers["X-Claude-Code-Session-Id"] = pick("X-Claude-Code-Session-Id", st.session
      or util.stable_uuid("cliproxy:claude-session:" .. st.account_seed .. "\0" .. st.session_seed))
    if not entry.oauth then headers["Anthropic-Dangerous-Direct-Browser-Access"] = "true" end
    if official(base) then headers["X-Client-Request-Id"] = cpx.uuid() end
    if stream then headers["Accept-Encoding"] = "identity" end
  end
  util.add_entry_headers(headers, entry)
  local path = ctx.endpoint == "count_tokens" and "/v1/messages/count_tokens?beta=true" or "/v1/messages?beta=true"
  return { method = "POST", url = base .. path, headers = headers, body = body,
           proxy = util.proxy(entry, key) }
end

-- The cloak's tool names back to the client's, on the upstream's own
-- answer (before it is translated for the client, so every client format
-- gets them). Only called for attempts that set ctx.fixup_response.
function _M.response_fixup(body, ctx)
  if ctx.tool_reverse then cloak.reverse_response(body, ctx.tool_reverse) end
  return body
end

function _M.stream_fixup(ev, ctx)
  if ctx.tool_reverse then return cloak.reverse_event(ev, ctx.tool_reverse) end
  return ev
end

-- Anthropic sends retry-after with its 429s, and the reset of every limit
-- as anthropic-ratelimit-*-reset (RFC 3339); 529 overloaded is transient.
function _M.classify(status, headers, body)
  local hint
  if status == 429 then hint = cooldown.retry_after(headers) or cooldown.anthropic_reset(headers) end
  return cooldown.classify(status, headers, body, hint)
end

return _M
