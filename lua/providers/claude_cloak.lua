-- providers/claude_cloak: makes a request from another client look like one
-- from Claude Code, for Claude subscription (OAuth) accounts, and undoes
-- the visible parts in the answer. Pure functions over Claude Messages
-- tables; the strings they use come from providers/claude_profile.lua.
--
-- Bodies are edited copy-on-write: the pipeline hands the same decoded
-- client body to every attempt (another account may get it next), so a
-- nested table is copied before it changes and the caller's tables stay as
-- they were. Untouched parts keep their key order and number text.
local json = require("lib.json")
local util = require("lib.provider_util")
local cpx = require("cpx")

local type = type
local ipairs = ipairs
local next = next
local setmetatable = setmetatable
local concat = table.concat
local find = string.find
local gsub = string.gsub
local shallow_copy = json.shallow_copy
local array = json.array

local _M = {}

local MODES = { auto = true, always = true, never = true }
_M.MODES = MODES

-- ---- copy-on-write helpers --------------------------------------------------

-- A fresh table replacing parent[key] (a copy of the old one); `owned`
-- remembers the copies so each is made once.
local function own(owned, parent, key)
  local t = parent[key]
  if type(t) ~= "table" then return nil end
  if owned[t] then return t end
  local c = shallow_copy(t)
  owned[c] = true
  parent[key] = c
  return c
end
_M.own = own

-- ---- who is the client ------------------------------------------------------

-- True when the request comes from Claude Code (headers: lower-case names).
function _M.is_claude_code(headers, profile)
  if type(headers) ~= "table" then return false end
  local ua = headers["user-agent"]
  if type(ua) == "string" then
    for _, p in ipairs(profile.client_user_agents or {}) do
      if find(ua, p) then return true end
    end
  end
  for _, h in ipairs(profile.client_headers or {}) do
    if headers[h] ~= nil then return true end
  end
  return false
end

-- The cloak settings of an account: { mode, strict, words, cache_user_id }.
-- entry.cloak is the config's `cloak` block of a claude-api-key entry, or
-- (credential files) { mode = cloak_mode, ["strict-mode"] = ..., ... }
-- from the file. OAuth accounts default to auto; an API key without a
-- `cloak` block is never cloaked (a key is billed per token; nothing to
-- impersonate), with one, its mode defaults to auto.
function _M.settings(entry, disabled)
  local c = type(entry) == "table" and entry.cloak or nil
  local mode
  if type(c) == "table" then
    mode = c.mode
    if mode == nil or mode == "" then mode = "auto" end
  else
    c = {}
    mode = (type(entry) == "table" and entry.oauth) and "auto" or "never"
  end
  if not MODES[mode] then mode = "auto" end
  if disabled then mode = "never" end
  local words = type(c["sensitive-words"]) == "table" and c["sensitive-words"] or {}
  return { mode = mode, strict = c["strict-mode"] == true, words = words,
           cache_user_id = c["cache-user-id"] ~= false }
end

-- Whether this request is cloaked.
function _M.applies(mode, headers, profile)
  if mode == "always" then return true end
  if mode == "never" then return false end
  return not _M.is_claude_code(headers, profile)
end

-- ---- system prompt ----------------------------------------------------------

-- The text of a Claude `system` (string or text blocks), "" when none.
local function system_text(system)
  if type(system) == "string" then return system end
  if type(system) ~= "table" then return "" end
  local out = {}
  for _, b in ipairs(system) do
    if type(b) == "table" and b.type == "text" and type(b.text) == "string" and b.text ~= "" then
      out[#out + 1] = b.text
    end
  end
  return concat(out, "\n\n")
end
_M.system_text = system_text

-- The text of the first user message (for the billing block's {build}).
local function first_user_text(messages)
  for _, m in ipairs(type(messages) == "table" and messages or {}) do
    if type(m) == "table" and m.role == "user" then
      if type(m.content) == "string" then return m.content end
      return system_text(m.content)
    end
  end
  return ""
end

local function version_of(ua)
  return type(ua) == "string" and ua:match("^[%w%-]+/([%d%.]+)") or "0.0.0"
end

local function fill(template, vars)
  return (gsub(template, "{(%w+)}", function(k) return vars[k] or "" end))
end

-- Whether a system already is Claude Code's (starts with the billing block).
local function is_cloaked_system(system)
  local b = type(system) == "table" and system[1]
  return type(b) == "table" and type(b.text) == "string" and find(b.text, "^x%-anthropic%-billing%-header:") ~= nil
end

-- Replaces `system` with Claude Code's blocks and moves the client's own
-- system text into a <system-reminder> block at the start of the first
-- user message (strict: the text is dropped). body is edited in place
-- (top level) and copy-on-write below; returns body.
function _M.relocate_system(body, profile, opts, owned)
  owned = owned or {}
  if is_cloaked_system(body.system) then return body end
  local text = system_text(body.system)
  local vars = { version = version_of(opts.user_agent),
                 build = cpx.sha256_hex(first_user_text(body.messages)):sub(1, 3) }
  local sys = array({})
  local n = #profile.system
  for i, t in ipairs(profile.system) do
    local b = { type = "text", text = fill(t, vars) }
    if i == n then b.cache_control = { type = "ephemeral" } end
    sys[i] = b
  end
  body.system = sys
  if text == "" or opts.strict then return body end
  local msgs = own(owned, body, "messages")
  if not msgs then return body end
  for i, m in ipairs(msgs) do
    if type(m) == "table" and m.role == "user" then
      local nm = own(owned, msgs, i)
      local reminder = { type = "text", text = fill(profile.reminder, { text = text }) }
      if type(nm.content) == "string" then
        nm.content = array({ reminder, { type = "text", text = nm.content } })
      elseif type(nm.content) == "table" then
        local c = array({ reminder })
        for _, p in ipairs(nm.content) do c[#c + 1] = p end
        nm.content = c
        owned[c] = true
      end
      break
    end
  end
  return body
end

-- ---- tool names -------------------------------------------------------------

-- A tool Claude runs itself (web_search_20250305, ...) has a `type`; only
-- client tools are renamed.
local function client_tool(t)
  return type(t) == "table" and type(t.name) == "string" and (t.type == nil or t.type == "custom")
end

-- Renames the client's tools with lower-case names to Claude Code's
-- (map: profile.tool_names), in tools, tool_choice and the tool_use blocks
-- of the history. A name whose target is already taken stays. Returns
-- body and the reverse map { [new] = old } (empty: nothing renamed).
function _M.map_tools(body, map, owned)
  owned = owned or {}
  local rev = {}
  if type(body.tools) ~= "table" then return body, rev end
  local taken = {}
  for _, t in ipairs(body.tools) do
    if type(t) == "table" and type(t.name) == "string" then taken[t.name] = true end
  end
  local fwd = {}
  local tools
  for i, t in ipairs(body.tools) do
    local to = client_tool(t) and map[t.name]
    if to and not taken[to] and not rev[to] then
      tools = tools or own(owned, body, "tools")
      local nt = own(owned, tools, i)
      nt.name = to
      rev[to], fwd[t.name] = t.name, to
    end
  end
  if not next(rev) then return body, rev end
  local tc = body.tool_choice
  if type(tc) == "table" and tc.type == "tool" and fwd[tc.name] then
    own(owned, body, "tool_choice").name = fwd[tc.name]
  end
  local msgs = type(body.messages) == "table" and body.messages or {}
  for i, m in ipairs(msgs) do
    if type(m) == "table" and m.role == "assistant" and type(m.content) == "table" then
      for j, p in ipairs(m.content) do
        if type(p) == "table" and p.type == "tool_use" and fwd[p.name] then
          local nm = own(owned, own(owned, body, "messages"), i)
          local nc = own(owned, nm, "content")
          own(owned, nc, j).name = fwd[p.name]
        end
      end
    end
  end
  return body, rev
end

-- The reverse in a non-stream Messages answer: tool_use names back to the
-- client's. Edits body (the decoded upstream answer, owned by the caller).
function _M.reverse_response(body, rev)
  if type(body) ~= "table" or type(body.content) ~= "table" or not next(rev) then return body end
  for _, p in ipairs(body.content) do
    if type(p) == "table" and p.type == "tool_use" and rev[p.name] then p.name = rev[p.name] end
  end
  return body
end

-- The reverse in a stream: a content_block_start of a tool_use block gets
-- the client's name. ev = { event, data } as framed; returns the event to
-- use (the same table when nothing changes).
function _M.reverse_event(ev, rev)
  if not next(rev) or type(ev) ~= "table" or type(ev.data) ~= "string" then return ev end
  if ev.event ~= "content_block_start" and not find(ev.data, '"content_block_start"', 1, true) then return ev end
  if not find(ev.data, '"tool_use"', 1, true) then return ev end
  local d = json.decode(ev.data)
  local b = type(d) == "table" and d.content_block
  if type(b) ~= "table" or b.type ~= "tool_use" or not rev[b.name] then return ev end
  b.name = rev[b.name]
  return { event = ev.event, data = json.encode(d), id = ev.id }
end

-- ---- metadata.user_id -------------------------------------------------------

-- A user id in Claude Code's format, stable for the same account and
-- session seeds (hashes only: neither seed can be read back).
-- account_uuid: the credential file's, when it has one.
function _M.user_id(profile, account_seed, session_seed, account_uuid)
  local device = cpx.sha256_hex("cliproxy:claude-device:" .. account_seed)
  local session = util.stable_uuid("cliproxy:claude-session:" .. account_seed .. "\0" .. (session_seed or ""))
  if profile.user_id_format == "legacy" then
    local acct = account_uuid or util.stable_uuid("cliproxy:claude-account:" .. account_seed)
    return "user_" .. device .. "_account_" .. acct .. "_session_" .. session, session
  end
  return json.encode(setmetatable({ device_id = device, account_uuid = account_uuid or "", session_id = session },
                                  { "device_id", "account_uuid", "session_id" })), session
end

-- Sets metadata.user_id (copying metadata); returns body.
function _M.set_user_id(body, uid, owned)
  if type(body.metadata) == "table" then
    own(owned or {}, body, "metadata").user_id = uid
  else
    body.metadata = { user_id = uid }
  end
  return body
end

-- ---- sensitive words --------------------------------------------------------

local ZWSP = "\226\128\139" -- U+200B ZERO WIDTH SPACE

-- One word obfuscated: a zero-width space after its first character
-- (UTF-8 aware).
local function obfuscate_word(w)
  local first = w:match("^[%z\1-\127\194-\244][\128-\191]*")
  return first and (first .. ZWSP .. w:sub(#first + 1)) or w
end

local function obfuscate_text(s, words)
  for _, w in ipairs(words) do
    if type(w) == "string" and w ~= "" and find(s, w, 1, true) then
      local o = obfuscate_word(w)
      local out, i = {}, 1
      while true do
        local a, b = find(s, w, i, true)
        if not a then break end
        out[#out + 1] = s:sub(i, a - 1)
        out[#out + 1] = o
        i = b + 1
      end
      out[#out + 1] = s:sub(i)
      s = concat(out)
    end
  end
  return s
end
_M.obfuscate_text = obfuscate_text

-- The cloak's `sensitive-words` in the text of the user's messages get a
-- zero-width space, so they no longer match as written.
function _M.obfuscate(body, words, owned)
  if type(words) ~= "table" or #words == 0 or type(body.messages) ~= "table" then return body end
  owned = owned or {}
  for i, m in ipairs(body.messages) do
    if type(m) == "table" and m.role == "user" then
      if type(m.content) == "string" then
        local s = obfuscate_text(m.content, words)
        if s ~= m.content then own(owned, own(owned, body, "messages"), i).content = s end
      elseif type(m.content) == "table" then
        for j, p in ipairs(m.content) do
          if type(p) == "table" and p.type == "text" and type(p.text) == "string" then
            local s = obfuscate_text(p.text, words)
            if s ~= p.text then
              local nm = own(owned, own(owned, body, "messages"), i)
              own(owned, own(owned, nm, "content"), j).text = s
            end
          end
        end
      end
    end
  end
  return body
end

-- ---- the whole cloak --------------------------------------------------------

-- Cloaks body (a Claude Messages request table, top level owned by the
-- caller). opts = { user_agent, strict, words, account_seed, session_seed,
-- account_uuid, count (a count_tokens body: no metadata), owned (the
-- copy-on-write set to share) }. Returns body, reverse tool map, session id.
function _M.apply(body, profile, opts)
  local owned = opts.owned or {}
  _M.relocate_system(body, profile, opts, owned)
  local rev
  body, rev = _M.map_tools(body, profile.tool_names or {}, owned)
  _M.obfuscate(body, opts.words, owned)
  local uid, session = _M.user_id(profile, opts.account_seed or "", opts.session_seed, opts.account_uuid)
  if not opts.count then _M.set_user_id(body, uid, owned) end
  return body, rev, session
end

return _M
