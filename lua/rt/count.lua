-- rt.count: token counts for the count endpoints and for Claude clients'
-- message_start. First-party Claude and Gemini accounts are asked upstream
-- (by rt.routes.count, on the pool's pick); everything else is estimated
-- here with the C tokenizer over the request as the upstream would see it:
-- system, message text, tool calls and results, tool definitions.
local cpx = require("cpx")
local json = require("lib.json")
local translators = require("translators")

local type = type
local ipairs = ipairs
local floor = math.floor
local concat = table.concat

local _M = {}

-- Text beyond this is not tokenized: the count of the first part is scaled.
-- Counting is linear, so this bounds the CPU one request can take.
local MAX_BYTES = 8 * 1024 * 1024
_M.MAX_BYTES = MAX_BYTES
-- Texts up to this size are counted on the loop, longer ones in the
-- threadpool (a 4 KB count takes about 40 us).
_M.SYNC_BYTES = 4096

-- Model -> encoding, as tiktoken-go's mapping in CLIProxyAPI.
function _M.encoding_for(model)
  model = type(model) == "string" and model:lower() or ""
  if model:find("^gpt%-4o") or model:find("^gpt%-4%.1") or model:find("^gpt%-5")
      or model:find("^o[134]") then
    return "o200k_base"
  end
  if model:find("^gpt%-4") or model:find("^gpt%-3") then return "cl100k_base" end
  return "o200k_base"
end

local function add_parts(out, parts)
  for _, p in ipairs(parts or {}) do
    if p.type == "text" or p.type == "thinking" then
      out[#out + 1] = p.text
    elseif p.type == "tool_call" then
      out[#out + 1] = p.name
      out[#out + 1] = p.args
    elseif p.type == "tool_result" then
      add_parts(out, p.content)
    end
  end
end

-- Text the upstream would tokenize, from a client body in format fmt.
function _M.text_of(fmt, body)
  local r = translators.codecs[fmt].decode_request(body, {})
  if not r then return "" end
  local out = {}
  add_parts(out, r.system)
  for _, m in ipairs(r.messages or {}) do
    out[#out + 1] = m.role
    add_parts(out, m.content)
  end
  for _, t in ipairs(r.tools or {}) do
    out[#out + 1] = t.name
    out[#out + 1] = t.description
    if type(t.schema) == "table" then out[#out + 1] = json.encode(t.schema) end
  end
  local clean = {}
  for _, s in ipairs(out) do
    if type(s) == "string" and s ~= "" then clean[#clean + 1] = s end
  end
  return concat(clean, "\n")
end

-- Counts text with the encoding (in the threadpool during the request
-- phase); text over MAX_BYTES is counted on its first part and scaled.
function _M.count_text(text, encoding)
  local tokens = cpx.tokens
  if not tokens then return nil, "tokenizer not available" end
  -- A short text costs less to count here (about 10 us per KB) than the
  -- threadpool round trip, which a streamed answer waits for.
  local count = (#text > _M.SYNC_BYTES and tokens.count_async) or tokens.count
  local max = _M.MAX_BYTES
  if #text <= max then return count(text, encoding) end
  local n, err = count(text:sub(1, max), encoding)
  if not n then return nil, err end
  return floor(n * #text / max)
end

-- Returns the estimated count of a client request or nil, err. opts is
-- the config's count-tokens block: encoding "auto" (by model) or a fixed
-- one, "off" to refuse, and a factor (e.g. cl100k x 1.15 as a Claude
-- approximation).
function _M.estimate(fmt, body, model, opts)
  local enc = opts and opts.encoding or "auto"
  if enc == "off" then return nil, "local token counting is disabled (count-tokens.encoding: off)" end
  if enc == "auto" then enc = _M.encoding_for(model) end
  local n, err = _M.count_text(_M.text_of(fmt, body), enc)
  if not n then return nil, err end
  local factor = opts and opts.factor or 1
  if factor ~= 1 then n = floor(n * factor + 0.5) end
  return n
end

return _M
