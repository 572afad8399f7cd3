-- providers/claude_profile: what the Claude Code CLI looks like on the wire,
-- as data. providers/claude.lua and providers/claude_cloak.lua read it; a
-- user follows a new Claude Code release by editing this file (or putting a
-- copy under a `lua.paths` directory), without touching code.
--
-- Sources: CLIProxyAPI's fact sheet (§3.2: beta list, fallbacks of
-- claude-header-defaults, the tool rename map, metadata.user_id) and the
-- captured Claude Code 2.1.197 requests (headers, metadata.user_id as a JSON
-- string, the system blocks).
return {
  -- Header fallbacks when claude-header-defaults leaves one out.
  headers = {
    ["user-agent"] = "claude-cli/2.1.63 (external, cli)",
    ["package-version"] = "0.74.0",
    ["runtime-version"] = "v24.3.0",
    os = "MacOS",
    arch = "arm64",
    timeout = "600",
  },
  -- Fixed fingerprint headers, sent as they are.
  fixed_headers = {
    ["X-App"] = "cli",
    ["X-Stainless-Retry-Count"] = "0",
    ["X-Stainless-Runtime"] = "node",
    ["X-Stainless-Lang"] = "js",
  },
  anthropic_version = "2023-06-01",

  -- The Anthropic-Beta list sent when the client sends none; a client's
  -- list replaces it, but `always` (OAuth) is added to any list.
  betas = {
    "claude-code-20250219", "oauth-2025-04-20", "interleaved-thinking-2025-05-14",
    "context-management-2025-06-27", "prompt-caching-scope-2026-01-05", "structured-outputs-2025-12-15",
    "fast-mode-2026-02-01", "redact-thinking-2026-02-12", "token-efficient-tools-2026-03-28",
  },
  always_betas = { "oauth-2025-04-20", "interleaved-thinking-2025-05-14" },
  -- The betas an API key must not be sent (they only make sense with a login).
  oauth_only_betas = { ["oauth-2025-04-20"] = true },
  -- A client header that asks for the 1M context window (CLIProxyAPI's).
  context_1m_header = "x-cpa-claude-1m",
  context_1m_beta = "context-1m-2025-08-07",

  -- How a Claude Code client is recognised (cloak mode auto): a user-agent
  -- matching one of these Lua patterns, or one of these headers present.
  client_user_agents = { "^claude%-cli/", "^claude%-code/" },
  client_headers = { "x-claude-code-session-id" },

  -- The system blocks a cloaked request starts with. {version} is the
  -- version from the user-agent, {build} three hex digits derived from the
  -- first user message (Claude Code sends a per-prompt suffix there). The
  -- last block carries the cache breakpoint.
  system = {
    "x-anthropic-billing-header: cc_version={version}.{build}; cc_entrypoint=cli;",
    "You are Claude Code, Anthropic's official CLI for Claude.",
    "\nYou are an interactive agent that helps users with software engineering tasks. Use the instructions "
      .. "below and the tools available to you to assist the user.\n\n"
      .. "IMPORTANT: Assist with authorized security testing, defensive security, CTF challenges, and educational "
      .. "contexts. Refuse requests for destructive techniques, DoS attacks, mass targeting, supply chain "
      .. "compromise, or detection evasion for malicious purposes.\n\n"
      .. "# Tone and style\n - Be concise, direct, and to the point.\n"
      .. " - Only use emojis if the user explicitly requests it.\n\n"
      .. "# Doing tasks\n - Follow the conventions of the code you are working in.\n"
      .. " - Prefer editing existing files to creating new ones.\n",
  },
  -- The user's own system text goes into the first user message, wrapped
  -- like this ({text} is replaced); strict mode drops it instead.
  reminder = "<system-reminder>\n{text}\n</system-reminder>\n\n",

  -- Lower-case tool names of other coding agents -> Claude Code's names.
  -- Responses and streams get the exact reverse, per request.
  tool_names = {
    agent = "Agent", bash = "Bash", edit = "Edit", exitplanmode = "ExitPlanMode", glob = "Glob",
    grep = "Grep", ls = "LS", multiedit = "MultiEdit", notebookedit = "NotebookEdit",
    notebookread = "NotebookRead", read = "Read", skill = "Skill", task = "Task", todoread = "TodoRead",
    todowrite = "TodoWrite", webfetch = "WebFetch", websearch = "WebSearch", write = "Write",
  },

  -- metadata.user_id: "json" is what Claude Code 2.x sends (a JSON string
  -- {"device_id", "account_uuid", "session_id"}); "legacy" is CLIProxyAPI
  -- v6's user_<sha256>_account_<uuid>_session_<uuid>.
  user_id_format = "json",
}
