-- rt.config: validates config.yaml (CLIProxyAPI's keys plus cliproxy's own)
-- against a schema written as data (checked by rt.validate, the validator
-- middleware settings also use), fills defaults, and names file, line and
-- key in every error.
local cpx = require("cpx")
local validate = require("rt.validate")

local pairs = pairs
local ipairs = ipairs
local setmetatable = setmetatable
local format = string.format

local array_mt = cpx.json.array_mt

local _M = {}

-- The field specs are rt.validate's (record: fixed fields; map: string
-- keys). Absent, a list is empty and a record has its fields' defaults
-- (unless optional = true: a cloak block's presence means something).
local function str(d) return { type = "string", default = d } end
local function int(d, min, max) return { type = "integer", default = d, min = min, max = max } end
local function num(d, min, max) return { type = "number", default = d, min = min, max = max } end
local function bool(d) return { type = "boolean", default = d } end
local function list(items) return { type = "list", items = items, default = setmetatable({}, array_mt) } end
local function map(fields) return { type = "record", fields = fields, default = {} } end
local function dict(values) return { type = "map", values = values } end
local ANY = { type = "any" }

local url = { type = "string", check = function(v)
  if v == "" or v:match("^https?://[^%s]+$") then return true end
  return nil, "expected an http:// or https:// URL"
end }

local proxy_url = { type = "string", check = function(v)
  if v == "" or v == "direct" or v == "none" or v:match("^https?://%S+$")
      or v:match("^socks5h?://%S+$") then
    return true
  end
  return nil, "expected http://, https://, socks5:// URL, or direct/none"
end }

local models = list(map({
  name = { type = "string", required = true },
  alias = str(),
  thinking = ANY,
  ["display-name"] = str(),
  ["max-context-length"] = int(),
  ["force-mapping"] = bool(),
}))

local excluded = list(str())

-- cloak on a claude-api-key entry (providers/claude_cloak.lua).
local cloak = map({
  mode = { type = "string", enum = { "auto", "always", "never" } },
  ["strict-mode"] = bool(false),
  ["sensitive-words"] = list(str()),
  ["cache-user-id"] = bool(),
})

local key_entry = map({
  ["api-key"] = { type = "string", required = true },
  priority = int(0),
  prefix = str(),
  ["base-url"] = url,
  headers = dict(str()),
  ["proxy-url"] = proxy_url,
  models = models,
  ["excluded-models"] = excluded,
  weight = int(nil, 0),
  ["disable-cooling"] = bool(),
  ["request-retry"] = int(nil, 0, 100),
  websockets = bool(),
  cloak = { type = "record", fields = cloak.fields, optional = true },
  ["experimental-cch-signing"] = bool(),
})

local payload_rule = map({
  models = list(map({ name = str(), protocol = str() })),
  params = ANY,
})

local schema = map({
  host = str(""),
  port = int(8317, 1, 65535),
  tls = map({ enable = bool(false), cert = str(""), key = str("") }),
  ["remote-management"] = map({
    ["allow-remote"] = bool(false),
    ["secret-key"] = str(""),
    ["disable-control-panel"] = bool(false),
    ["disable-auto-update-panel"] = bool(false),
    ["panel-github-repository"] = str(),
  }),
  ["auth-dir"] = str("~/.cli-proxy-api"),
  ["api-keys"] = list(str()),
  debug = bool(false),
  pprof = ANY,
  ["commercial-mode"] = bool(false),
  ["logging-to-file"] = bool(false),
  ["logs-max-total-size-mb"] = int(0, 0),
  ["error-logs-max-files"] = int(10, 0),
  ["request-log"] = bool(false),
  ["usage-statistics-enabled"] = bool(false),
  ["proxy-url"] = proxy_url,
  -- PEM file of the CAs upstream servers are checked against instead of the
  -- system store (a local or corporate CA); read at start (cpx_h1, libcurl)
  ["upstream-ca-file"] = str(""),
  ["force-model-prefix"] = bool(false),
  ["passthrough-headers"] = bool(false),
  ["fast-path"] = bool(true),
  ["request-retry"] = int(3, 0, 100),
  ["max-retry-credentials"] = int(0, 0),
  ["max-retry-interval"] = int(30, 0),
  ["disable-cooling"] = bool(false),
  ["auth-auto-refresh-workers"] = int(16, 1),
  ["quota-exceeded"] = ANY,
  routing = map({
    strategy = { type = "string", default = "round-robin",
                 enum = { "round-robin", "fill-first", "weighted-round-robin" } },
    ["session-affinity"] = bool(false),
    -- a Go-style duration ("1h", "30m") or seconds; default 1h
    ["session-affinity-ttl"] = { type = "string", default = "1h", check = function(v)
      if v:match("^%d+%.?%d*$") or v:match("^[%d%.hms]+$") then return true end
      return nil, "expected a duration such as 1h, 30m or 90s"
    end },
  }),
  ["ws-auth"] = bool(false),
  ["enable-gemini-cli-endpoint"] = bool(false),
  ["nonstream-keepalive-interval"] = int(0, 0),
  streaming = map({ ["keepalive-seconds"] = int(0, 0), ["bootstrap-retries"] = int(0, 0) }),
  ["antigravity-signature-cache-enabled"] = bool(true),
  ["antigravity-signature-bypass-strict"] = bool(false),
  ["claude-header-defaults"] = map({
    ["user-agent"] = str(), ["package-version"] = str(), ["runtime-version"] = str(),
    os = str(), arch = str(), timeout = str(), timezone = str(),
    ["stabilize-device-profile"] = bool(false),
  }),
  ["codex-header-defaults"] = map({ ["user-agent"] = str(), ["beta-features"] = str() }),
  ["disable-claude-cloak-mode"] = bool(false),
  ["gemini-api-key"] = list(key_entry),
  ["generative-language-api-key"] = list(str()),
  ["vertex-api-key"] = list(key_entry),
  ["claude-api-key"] = list(key_entry),
  ["codex-api-key"] = list(key_entry),
  ["openai-compatibility"] = list(map({
    name = { type = "string", required = true },
    prefix = str(),
    priority = int(0),
    ["base-url"] = { type = "string", required = true, check = url.check },
    headers = dict(str()),
    ["api-key-entries"] = list(map({ ["api-key"] = str(""), ["proxy-url"] = proxy_url })),
    ["api-keys"] = list(str()),
    models = models,
    ["excluded-models"] = excluded,
    disabled = bool(false),
    ["proxy-url"] = proxy_url,
    ["request-retry"] = int(nil, 0, 100),
  })),
  -- Amp CLI's settings (CLIProxyAPI v6): kept, validated and edited over
  -- the management API; cliproxy does not serve Amp's own routes
  -- (docs/management.md says why).
  -- the top-level spellings before v6 (migrated into ampcode below)
  ["amp-upstream-url"] = url,
  ["amp-upstream-api-key"] = str(),
  ["amp-restrict-management-to-localhost"] = bool(),
  ["amp-model-mappings"] = list(map({
    from = { type = "string", required = true },
    to = { type = "string", required = true },
    regex = bool(false),
  })),
  ampcode = map({
    ["upstream-url"] = url,
    ["upstream-api-key"] = str(""),
    ["upstream-api-keys"] = list(map({
      ["upstream-api-key"] = { type = "string", required = true },
      ["api-keys"] = list(str()),
    })),
    ["restrict-management-to-localhost"] = bool(false),
    ["model-mappings"] = list(map({
      from = { type = "string", required = true },
      to = { type = "string", required = true },
      regex = bool(false),
    })),
    ["force-model-mappings"] = bool(false),
  }),
  ["oauth-model-alias"] = dict(list(map({ name = str(), alias = str(), fork = bool() }))),
  ["oauth-excluded-models"] = dict(excluded),
  -- cliproxy: where each OAuth provider's login, refresh and inference go
  -- (mirrors, tests); rt.oauth and the registry read it.
  ["oauth-endpoints"] = dict(map({
    ["auth-url"] = url, ["token-url"] = url, ["device-url"] = url, ["device-token-url"] = url,
    ["device-verify-url"] = url, ["api-base-url"] = url,
    -- Google logins: the account lookup and the project list; Antigravity's
    -- inference hosts in the order they are tried
    ["userinfo-url"] = url, ["projects-url"] = url, ["service-usage-url"] = url, ["api-base-urls"] = list(url),
    -- iFlow: userinfo-url is its API-key lookup; the cookie login's key endpoint
    ["api-key-url"] = url,
    -- the fixed callback port of a code login (its redirect_uri, the
    -- `cliproxy login` listener and the is_webui forwarder)
    ["callback-port"] = int(nil, 1, 65535),
  })),
  -- cliproxy: the refresh engine of OAuth accounts (rt.refresh)
  ["oauth-refresh"] = map({
    ["check-seconds"] = num(60, 0.05, 60),
    ["backoff-seconds"] = num(300, 1),
    ["max-backoff-seconds"] = num(3600, 1),
  }),
  payload = map({
    default = list(payload_rule), ["default-raw"] = list(payload_rule),
    override = list(payload_rule), ["override-raw"] = list(payload_rule),
    filter = list(payload_rule),
  }),
  -- cliproxy's own keys
  workers = int(1, 1, 64),
  -- the usage store (rt.usage); enabled unset follows usage-statistics-enabled
  usage = map({
    enabled = bool(),
    path = str(""),
    ["retention-days"] = num(30, 0),
    ["queue-size"] = int(16384, 16, 1048576),
    ["batch-size"] = int(256, 1, 65536),
    ["flush-interval-ms"] = int(1000, 10, 60000),
  }),
  -- GET /metrics (rt.metrics): off unless enabled; key: Bearer key to ask
  metrics = map({ enabled = bool(false), key = str("") }),
  -- OpenTelemetry traces over OTLP/HTTP JSON (rt.otel); endpoint "" = off
  otel = map({ endpoint = url, ["service-name"] = str("cliproxy") }),
  ["count-tokens"] = map({
    encoding = { type = "string", default = "auto", enum = { "auto", "o200k_base", "cl100k_base", "off" } },
    factor = num(1, 0.1, 10),
  }),
  lua = map({
    paths = list(str()),
    ["memory-limit-mb"] = int(256, 16, 65536),
    -- a generation that stays at its cap after a full collection is
    -- replaced by a fresh one, as a reload does (runtime/lua/cpx_lua.c)
    ["memory-recycle"] = bool(true),
    ["max-timers"] = int(1024, 1, 1000000),
    middleware = list(ANY),
  }),
  limits = map({
    ["max-header-bytes"] = int(65536, 1024, 16777216),
    ["max-header-fields"] = int(100, 8, 1000),
    ["max-body-bytes"] = int(33554432, 1024),
    ["header-timeout-seconds"] = num(10, 0.1),
    ["body-timeout-seconds"] = num(60, 0.1),
    ["keepalive-timeout-seconds"] = num(60, 0.1),
    ["write-stall-timeout-seconds"] = num(300, 1),
    ["drain-timeout-seconds"] = num(30, 0),
    ["write-buffer-high-bytes"] = int(262144, 4096),
    ["write-buffer-low-bytes"] = int(65536, 1024),
    ["lingering-time-seconds"] = num(30, 0),
    ["lingering-timeout-seconds"] = num(5, 0.1),
    ["lingering-max-bytes"] = int(67108864, 0),
    ["max-connections"] = int(10000, 0),
    ["max-connections-per-ip"] = int(0, 0),
    ["upstream-connect-timeout-seconds"] = num(10, 0.1),
    ["upstream-first-byte-timeout-seconds"] = num(300, 0.1),
    ["upstream-idle-timeout-seconds"] = num(300, 0.1),
    ["upstream-max-body-bytes"] = int(67108864, 1024),
  }),
})

-- config.yaml's strings take a YAML number or boolean as its text
-- (`api-key: 12345`), as CLIProxyAPI's YAML decoding does: the one place
-- rt.validate is told to coerce.
local function coerce_strings(spec, seen)
  if seen[spec] then return end
  seen[spec] = true
  if spec.type == "string" then spec.coerce = true end
  if spec.items then coerce_strings(spec.items, seen) end
  if spec.values then coerce_strings(spec.values, seen) end
  for _, f in pairs(spec.fields or {}) do coerce_strings(f, seen) end
end
coerce_strings(schema, {})

_M.schema = schema

-- Returns the normalized config table, or nil, "file:line: key: reason".
function _M.validate(doc, lines, file)
  local st = { lines = lines or {}, file = file or "config.yaml", unknown = {} }
  local cfg, path, msg = validate.value(schema, doc or {}, "", { unknown = st.unknown })
  if path then return nil, validate.message(st.file, st.lines, path, msg) end
  -- cross-field rules
  if cfg.tls.enable and (cfg.tls.cert == "" or cfg.tls.key == "") then
    local line = st.lines["tls.enable"]
    return nil, format("%s%s: tls: enable needs both cert and key", st.file, line and (":" .. line) or "")
  end
  if cfg.limits["write-buffer-low-bytes"] >= cfg.limits["write-buffer-high-bytes"] then
    return nil, format("%s: limits.write-buffer-low-bytes: must be below write-buffer-high-bytes", st.file)
  end
  -- legacy keys CLIProxyAPI migrates
  for i, e in ipairs(cfg["openai-compatibility"]) do
    if #e["api-key-entries"] == 0 and #e["api-keys"] > 0 then
      for j, k in ipairs(e["api-keys"]) do
        e["api-key-entries"][j] = { ["api-key"] = k }
      end
    end
    e.index = i
  end
  -- amp-* (top level, before v6) -> ampcode.*, unless ampcode sets it
  local amp = cfg.ampcode
  for old, new in pairs({ ["amp-upstream-url"] = "upstream-url", ["amp-upstream-api-key"] = "upstream-api-key",
                          ["amp-restrict-management-to-localhost"] = "restrict-management-to-localhost",
                          ["amp-model-mappings"] = "model-mappings" }) do
    local v = cfg[old]
    local present = type(doc) == "table" and type(doc.ampcode) == "table" and doc.ampcode[new] ~= nil
    if v ~= nil and not present and not (type(v) == "table" and #v == 0) then amp[new] = v end
    cfg[old] = nil -- one place to read it (GET /config shows ampcode only)
  end
  for _, k in ipairs(cfg["generative-language-api-key"]) do
    local list_ = cfg["gemini-api-key"]
    list_[#list_ + 1] = { ["api-key"] = k, priority = 0, models = setmetatable({}, array_mt),
                          ["excluded-models"] = setmetatable({}, array_mt) }
  end
  cfg._unknown = st.unknown
  cfg._file = st.file
  return cfg
end

return _M
