-- lib.ir: helpers shared by the wire-format codecs (lua/translators/*).
-- The IR itself is documented in docs/ir.md. Everything here is pure.
local type = type
local tonumber = tonumber
local tostring = tostring
local floor = math.floor
local random = math.random
local concat = table.concat
local sub = string.sub

local _M = {}

-- Thinking level <-> budget (fact sheet §4.3).
local LEVEL_BUDGET = {
  none = 0, auto = -1, minimal = 512, low = 1024, medium = 8192,
  high = 24576, xhigh = 32768, max = 128000,
}
_M.LEVEL_BUDGET = LEVEL_BUDGET

-- Typed reads of decoded JSON, shared by the codecs: the value when it has
-- that type, else nil.
function _M.str(v) if type(v) == "string" then return v end return nil end
function _M.num(v) if type(v) == "number" then return v end return nil end
function _M.tbl(v) if type(v) == "table" then return v end return nil end

-- A required list field of a client body, checked where every codec checks
-- it: the value, or nil and an error naming the client's own field.
function _M.need_list(body, field)
  local v = body[field]
  if v == nil then return nil, field .. ": field required" end
  if type(v) ~= "table" then return nil, field .. ": expected an array" end
  return v
end

function _M.level_to_budget(level)
  if level == nil then return nil end
  return LEVEL_BUDGET[level]
end

function _M.budget_to_level(budget)
  budget = tonumber(budget)
  if budget == nil then return nil end
  if budget < 0 then return "auto" end
  if budget == 0 then return "none" end
  if budget <= 512 then return "minimal" end
  if budget <= 1024 then return "low" end
  if budget <= 8192 then return "medium" end
  if budget <= 24576 then return "high" end
  return "xhigh"
end

-- reasoning -> effort level (budget wins when the level is absent).
function _M.effort_of(r)
  if not r then return nil end
  if r.effort then return r.effort end
  if r.budget then return _M.budget_to_level(r.budget) end
  return nil
end

-- reasoning -> budget (level converted by the table).
function _M.budget_of(r)
  if not r then return nil end
  if r.budget then return r.budget end
  if r.effort then return LEVEL_BUDGET[r.effort] end
  return nil
end

-- "gpt-5(high)" -> "gpt-5", { effort = "high" }
-- "claude-x(16384)" -> "claude-x", { budget = 16384 }; -1 auto, 0 none.
function _M.parse_model(name)
  if type(name) ~= "string" then return name, nil end
  local base, val = name:match("^(.-)%(([^()]*)%)$")
  if not base or base == "" then return name, nil end
  val = val:lower():gsub("^%s+", ""):gsub("%s+$", "")
  local n = tonumber(val)
  if n then
    n = floor(n)
    if n < 0 then return base, { effort = "auto", budget = -1 } end
    if n == 0 then return base, { effort = "none", budget = 0 } end
    return base, { budget = n }
  end
  if LEVEL_BUDGET[val] then return base, { effort = val } end
  return name, nil
end

-- Stop reasons. IR: end_turn | max_tokens | tool_use | stop_sequence |
-- content_filter | refusal | pause_turn.
local OPENAI_TO_IR = {
  stop = "end_turn", length = "max_tokens", tool_calls = "tool_use",
  function_call = "tool_use", content_filter = "content_filter",
}
local IR_TO_OPENAI = {
  end_turn = "stop", stop_sequence = "stop", max_tokens = "length",
  tool_use = "tool_calls", content_filter = "content_filter",
  refusal = "stop", pause_turn = "stop",
}
local CLAUDE_FROM_IR = {
  end_turn = "end_turn", stop_sequence = "stop_sequence", max_tokens = "max_tokens",
  tool_use = "tool_use", content_filter = "end_turn", refusal = "refusal",
  pause_turn = "pause_turn",
}
local GEMINI_TO_IR = {
  STOP = "end_turn", MAX_TOKENS = "max_tokens", SAFETY = "content_filter",
  RECITATION = "content_filter", BLOCKLIST = "content_filter",
  PROHIBITED_CONTENT = "content_filter", SPII = "content_filter",
  IMAGE_SAFETY = "content_filter", LANGUAGE = "content_filter",
  MALFORMED_FUNCTION_CALL = "end_turn", OTHER = "end_turn",
  FINISH_REASON_UNSPECIFIED = "end_turn",
}
local IR_TO_GEMINI = {
  end_turn = "STOP", stop_sequence = "STOP", tool_use = "STOP",
  max_tokens = "MAX_TOKENS", content_filter = "SAFETY", refusal = "SAFETY",
  pause_turn = "STOP",
}

function _M.stop_from_openai(r) return r and (OPENAI_TO_IR[r] or "end_turn") or nil end
function _M.stop_to_openai(s) return s and (IR_TO_OPENAI[s] or "stop") or nil end
function _M.stop_from_claude(r)
  if type(r) ~= "string" then return nil end
  return r
end
function _M.stop_to_claude(s) return s and (CLAUDE_FROM_IR[s] or "end_turn") or nil end
function _M.stop_from_gemini(r) return r and (GEMINI_TO_IR[r] or "end_turn") or nil end
function _M.stop_to_gemini(s) return s and (IR_TO_GEMINI[s] or "STOP") or nil end

-- Ids. ctx.id_gen(prefix) (tests, or the pipeline) wins over the RNG.
local ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

function _M.rand_alnum(n)
  local t = {}
  for i = 1, n do
    local k = random(1, 62)
    t[i] = sub(ALNUM, k, k)
  end
  return concat(t)
end

function _M.new_id(prefix, ctx, n)
  if ctx and ctx.id_gen then return ctx.id_gen(prefix) end
  return prefix .. _M.rand_alnum(n or 24)
end

function _M.now(ctx)
  return (ctx and ctx.now) or os.time()
end

-- Usage. IR usage = { input, output, reasoning, cache_read, cache_write, total }
-- input counts every prompt token (cached ones included, as OpenAI does);
-- output counts every generated token (reasoning included).
function _M.total(u)
  if not u then return 0 end
  return u.total or ((u.input or 0) + (u.output or 0))
end

-- Merges b into a (fields of b win when present). Returns a.
function _M.merge_usage(a, b)
  if not b then return a end
  a = a or {}
  for _, k in ipairs({ "input", "output", "reasoning", "cache_read", "cache_write", "total" }) do
    if b[k] ~= nil then a[k] = b[k] end
  end
  return a
end

-- Opaque reasoning signatures: the value travels to a client of another
-- format wrapped with its origin, so that when the client sends it back the
-- codec can tell whose it is. sig = { format = "...", value = "..." }.
local SIG_PREFIX = "cpx1."

function _M.sig_out(sig, fmt)
  if not sig or sig.value == nil then return nil end
  if sig.format == fmt then return sig.value end
  return SIG_PREFIX .. sig.format .. "." .. sig.value
end

function _M.sig_in(str, fmt)
  if type(str) ~= "string" or str == "" then return nil end
  if sub(str, 1, #SIG_PREFIX) == SIG_PREFIX then
    local f, v = str:match("^cpx1%.([%w_]+)%.(.*)$")
    if f then return { format = f, value = v } end
  end
  return { format = fmt, value = str }
end

-- Signature value for an upstream of format fmt: only its own.
function _M.sig_for(sig, fmt)
  if sig and sig.format == fmt then return sig.value end
  return nil
end

-- data:<mime>;base64,<data>
function _M.parse_data_url(url)
  if type(url) ~= "string" then return nil end
  local mime, data = url:match("^data:([^;,]*);base64,(.*)$")
  if mime then return mime, data end
  return nil
end

function _M.data_url(mime, data)
  return "data:" .. (mime or "application/octet-stream") .. ";base64," .. data
end

-- Text of a list of parts (text parts only), joined by sep.
function _M.text_of(parts, sep)
  if type(parts) ~= "table" then return "" end
  local t = {}
  for _, p in ipairs(parts) do
    if p.type == "text" and p.text then t[#t + 1] = p.text end
  end
  return concat(t, sep or "")
end

-- Content of a tool result as one string (encoders whose format only takes text).
function _M.result_text(p)
  if type(p.content) ~= "table" then return p.content and tostring(p.content) or "" end
  return _M.text_of(p.content, "\n")
end

-- Error types by status (fact sheet §1.6).
function _M.error_type(status)
  status = tonumber(status) or 500
  if status == 401 then return "authentication_error", "invalid_api_key" end
  if status == 403 then return "permission_error", "insufficient_quota" end
  if status == 429 then return "rate_limit_error", "rate_limit_exceeded" end
  if status == 404 then return "invalid_request_error", "model_not_found" end
  if status >= 500 then return "server_error", "internal_server_error" end
  return "invalid_request_error", nil
end

-- Stream decoders: opens the next IR block (state st numbers them from 1),
-- appends its block_start to out and returns its index.
function _M.open_block(st, kind, out, extra)
  st.n = (st.n or 0) + 1
  local ev = { t = "block_start", i = st.n, kind = kind }
  if extra then ev.id, ev.name = extra.id, extra.name end
  out[#out + 1] = ev
  return st.n
end

return _M
