-- rt.catalog: the built-in model catalog (data only). A credential without
-- its own `models` list registers its provider's catalog, minus
-- `excluded-models`; the model lists (/v1/models, the Anthropic and Gemini
-- lists) show what is registered and enabled now.
--
-- Entry fields: id, owned_by, context (input tokens), output (max output
-- tokens), thinking = nil | { levels = {...} } | { min, max } (budget).
-- Users override this module like any other (lua.paths).
local pairs = pairs
local ipairs = ipairs

local _M = {}

local CLAUDE_THINK = { min = 1024, max = 128000 }
local GEMINI_THINK = { min = 128, max = 32768, dynamic = true }
local GPT_LEVELS = { levels = { "minimal", "low", "medium", "high" } }
local CODEX_LEVELS = { levels = { "low", "medium", "high", "xhigh" } }

local function m(id, owned_by, context, output, thinking)
  return { id = id, owned_by = owned_by, context = context, output = output, thinking = thinking }
end

_M.claude = {
  m("claude-opus-4-5-20251101", "anthropic", 200000, 64000, CLAUDE_THINK),
  m("claude-sonnet-4-5-20250929", "anthropic", 200000, 64000, CLAUDE_THINK),
  m("claude-haiku-4-5-20251001", "anthropic", 200000, 64000, CLAUDE_THINK),
  m("claude-opus-4-1-20250805", "anthropic", 200000, 32000, CLAUDE_THINK),
  m("claude-sonnet-4-20250514", "anthropic", 200000, 64000, CLAUDE_THINK),
}

_M.codex = {
  m("gpt-5", "openai", 400000, 128000, GPT_LEVELS),
  m("gpt-5-codex", "openai", 400000, 128000, GPT_LEVELS),
  m("gpt-5-codex-mini", "openai", 400000, 128000, GPT_LEVELS),
  m("gpt-5.1", "openai", 400000, 128000, GPT_LEVELS),
  m("gpt-5.1-codex", "openai", 400000, 128000, GPT_LEVELS),
  m("gpt-5.1-codex-mini", "openai", 400000, 128000, GPT_LEVELS),
  m("gpt-5.1-codex-max", "openai", 400000, 128000, CODEX_LEVELS),
}

_M.gemini = {
  m("gemini-2.5-pro", "google", 1048576, 65536, GEMINI_THINK),
  m("gemini-2.5-flash", "google", 1048576, 65536, GEMINI_THINK),
  m("gemini-2.5-flash-lite", "google", 1048576, 65536, GEMINI_THINK),
  m("gemini-3-pro-preview", "google", 1048576, 65536, { levels = { "low", "high" } }),
}

_M.qwen = {
  m("qwen3-coder-plus", "qwen", 1000000, 65536),
  m("qwen3-coder-flash", "qwen", 1000000, 65536),
  m("coder-model", "qwen", 1000000, 65536),
  m("vision-model", "qwen", 256000, 32768),
}

_M.iflow = {
  m("qwen3-coder-plus", "iflow", 256000, 65536),
  m("qwen3-max", "iflow", 256000, 32768),
  m("kimi-k2", "iflow", 128000, 32768),
  m("deepseek-v3.2", "iflow", 128000, 32768),
  m("deepseek-r1", "iflow", 128000, 32768, { levels = { "low", "medium", "high" } }),
  m("glm-4.6", "iflow", 200000, 131072, { levels = { "none", "low", "medium", "high" } }),
}

-- provider module -> catalog key
_M.by_provider = { claude = "claude", codex = "codex", gemini = "gemini", vertex = "gemini",
                   gemini_cli = "gemini", antigravity = "gemini", qwen = "qwen", iflow = "iflow",
                   vertex_sa = "gemini" }

local index
-- The catalog entry of a model id, or nil.
function _M.find(id)
  if not index then
    index = {}
    for _, key in pairs({ "claude", "codex", "gemini", "qwen", "iflow" }) do
      for _, entry in ipairs(_M[key]) do index[entry.id] = entry end
    end
  end
  return index[id]
end

function _M.for_provider(provider)
  local key = _M.by_provider[provider]
  return key and _M[key] or {}
end

return _M
