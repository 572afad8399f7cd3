-- fuzz driver (runtime/fuzz/fuzz_lua.c): the upstream error-body parsers.
-- The first byte picks the status and the second a header set; the rest is
-- the body. Every provider's classify answers a verdict, and the OAuth token
-- answer parser answers tokens or an error of a known kind; nothing raises.
local oauth = require("rt.oauth")
local cooldown = require("lib.cooldown")

local PROVIDERS = { "openai_compat", "claude", "gemini", "codex", "vertex" }
local STATUSES = { 200, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504, 529 }
local KINDS = { invalid_grant = true, rate_limited = true, http = true, bad_response = true }
local HEADERS = {
  {},
  { ["retry-after"] = "17" },
  { ["retry-after"] = "Wed, 21 Oct 2015 07:28:00 GMT" },
  { ["anthropic-ratelimit-requests-reset"] = "2026-01-02T03:04:05Z" },
  { ["x-codex-primary-reset-after-seconds"] = "120", ["x-codex-primary-used-percent"] = "100" },
  { ["x-ratelimit-reset-requests"] = "1m30s", ["x-ratelimit-reset-tokens"] = "6ms" },
}

local providers = {}
for i, name in ipairs(PROVIDERS) do providers[i] = require("providers." .. name) end
local facts = { assert(oauth.facts("claude", {})), assert(oauth.facts("codex", {})) }

return function(s)
  if #s < 2 then return end
  local status = STATUSES[s:byte(1) % #STATUSES + 1]
  local headers = HEADERS[s:byte(2) % #HEADERS + 1]
  local body = s:sub(3)
  for _, p in ipairs(providers) do
    if p.classify then
      local v = p.classify(status, headers, body)
      assert(v ~= nil, p.name .. ": classify answered nothing")
    end
  end
  assert(cooldown.classify(status, headers, body) ~= nil)
  cooldown.parse_duration(body)
  cooldown.parse_rfc3339(body)
  cooldown.parse_http_date(body)
  for _, f in ipairs(facts) do
    local t, err = oauth.parse_token_response(f, status, headers, body)
    if t then
      assert(type(t.access_token) == "string")
    else
      assert(type(err) == "table" and KINDS[err.kind], "unknown error kind " .. tostring(err and err.kind))
      assert(type(err.message) == "string")
    end
  end
end
