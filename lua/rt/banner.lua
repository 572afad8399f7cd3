-- rt.banner: what a new user should do next, printed once after the server
-- listens: which models are served (or how to add one), where credential
-- files go, and how to point Claude Code, Codex and the Gemini CLI at it.
-- Pure: lines(app, base_url) -> { line, ... }; no key is ever printed.
local concat = table.concat
local format = string.format
local ipairs = ipairs
local sort = table.sort
local type = type
local cpx = require("cpx")

local _M = {}

local MAX_LISTED = 12

local function model_line(list)
  if #list == 0 then
    return {
      "no models are served yet: add an upstream (openai-compatibility, claude-api-key, gemini-api-key,",
      "  codex-api-key) to the config, or put credential files in auth-dir; see config.example.yaml",
      "log in to a subscription: cliproxy login claude | cliproxy login codex [--device] "
        .. "(add -config FILE for another config; --no-browser on a remote machine)",
    }
  end
  local ids = {}
  for i, m in ipairs(list) do
    if i > MAX_LISTED then break end
    ids[#ids + 1] = m.id
  end
  local more = #list > MAX_LISTED and format(", ... (%d in all; GET /v1/models)", #list) or ""
  return { format("models (%d): %s%s", #list, concat(ids, ", "), more) }
end

-- A model of the given provider kinds, else the first one, else a placeholder.
local function pick(list, kinds)
  for _, m in ipairs(list) do
    if kinds[m.provider] then return m.id end
  end
  return list[1] and list[1].id or "<model>"
end

function _M.lines(app, base_url)
  if type(app) ~= "table" or type(base_url) ~= "string" then
    error("rt.banner.lines(app, base_url): bad arguments", 2)
  end
  local cfg = app.config
  local list = app.registry:list()
  sort(list, function(a, b) return a.id < b.id end)
  local out = model_line(list)
  local nkeys = type(cfg["api-keys"]) == "table" and #cfg["api-keys"] or 0
  local key = nkeys > 0 and "<one of your api-keys>" or "any"
  if nkeys == 0 then
    out[#out + 1] = "api-keys is empty: every client is accepted; set api-keys before exposing the port"
  end
  local dir = cfg["auth-dir"]
  if type(dir) == "string" and dir ~= "" then
    out[#out + 1] = format("credential files (claude-*.json, codex-*.json, ...) are read from %s", dir)
  end
  out[#out + 1] = format("Claude Code: ANTHROPIC_BASE_URL=%s ANTHROPIC_AUTH_TOKEN=%s ANTHROPIC_MODEL=%s claude",
                         base_url, key, pick(list, { claude = true }))
  out[#out + 1] = format("Codex CLI: model_provider with base_url = \"%s/v1\", wire_api = \"responses\" "
                         .. "(docs/clients.md), model %s", base_url, pick(list, { codex = true }))
  out[#out + 1] = format("Gemini CLI: GOOGLE_GEMINI_BASE_URL=%s GEMINI_API_KEY=%s gemini -m %s",
                         base_url, key, pick(list, { gemini = true, vertex = true }))
  out[#out + 1] = format("OpenAI SDKs: OPENAI_BASE_URL=%s/v1 OPENAI_API_KEY=%s", base_url, key)
  local rm = type(cfg["remote-management"]) == "table" and cfg["remote-management"] or {}
  if rm["disable-control-panel"] ~= true then
    local secret = (type(rm["secret-key"]) == "string" and rm["secret-key"] ~= "") or
                   (cpx.mgmt ~= nil and cpx.mgmt.env_secret() ~= nil)
    out[#out + 1] = format("control panel: %s/management.html%s", base_url,
                           secret and "" or " (set remote-management.secret-key or MANAGEMENT_PASSWORD to enable it)")
  end
  return out
end

return _M
