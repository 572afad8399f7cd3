-- translators.gemini: Gemini generateContent <-> IR (docs/ir.md).
local json = require("lib.json")
local ir = require("lib.ir")
local schema = require("lib.schema")

local type = type
local ipairs = ipairs
local pairs = pairs
local next = next
local remove = table.remove
local tonumber = tonumber
local upper = string.upper
local lower = string.lower
local concat = table.concat
local encode = json.encode
local decode = json.decode
local arr = json.array
local raw = json.raw

local FMT = "gemini"
local _M = { name = FMT }

-- Subtrees this codec only carries (see translators/claude.lua).
_M.carries = {
  request = { "tools[].functionDeclarations[].parameters", "tools[].functionDeclarations[].parametersJsonSchema",
              "tools[].function_declarations[].parameters",
              "tools[].function_declarations[].parametersJsonSchema",
              "contents[].parts[].functionCall.args", "contents[].parts[].function_call.args",
              "generationConfig.responseJsonSchema", "generationConfig.response_json_schema",
              "generationConfig.responseSchema" },
}
local SKIP_SIG = "skip_thought_signature_validator"

local s = ir.str
local num = ir.num
local tbl = ir.tbl

local function tool_prefix(ctx) return (ctx and ctx.tool_id_prefix) or "call_" end

---------------------------------------------------------------- requests --

local function result_from_response(resp)
  if type(resp) ~= "table" then return { { type = "text", text = resp ~= nil and encode(resp) or "" } } end
  local n = 0
  for _ in pairs(resp) do n = n + 1 end
  for _, k in ipairs({ "output", "result", "content" }) do
    if n == 1 and s(resp[k]) then return { { type = "text", text = resp[k] } } end
  end
  return { { type = "text", text = encode(resp) } }
end

local function response_from_result(p)
  local text = ir.result_text(p)
  local d = text:sub(1, 1) == "{" and decode(text) or nil
  if type(d) == "table" and not json.is_array(d) then return d end
  if p.is_error then return { error = text } end
  return { output = text }
end

-- A request's history may omit call ids: the ids given instead are
-- numbered in the order of the history, so the same request always gives
-- the same upstream bytes (prompt caches key on them) and a later request of
-- the same conversation gives its earlier turns the same ids again.
local function history_id(seq, ctx)
  seq.n = seq.n + 1
  return tool_prefix(ctx) .. "h" .. seq.n
end

-- pending: name -> list of call ids not yet answered (Gemini may omit ids);
-- seq: the request's id counter (nil when decoding a response: a new call's
-- id is random, as an upstream's would be).
local function decode_parts(parts, role, pending, ctx, seq)
  local out = {}
  if type(parts) ~= "table" then return out end
  for _, p in ipairs(parts) do
    if type(p) == "table" then
      local sig = ir.sig_in(s(p.thoughtSignature) or s(p.thought_signature), FMT)
      if sig and sig.value == SKIP_SIG then sig = nil end
      local inline = tbl(p.inlineData) or tbl(p.inline_data)
      local fdata = tbl(p.fileData) or tbl(p.file_data)
      if s(p.text) then
        if p.thought == true then
          out[#out + 1] = { type = "thinking", text = p.text, sig = sig }
        else
          out[#out + 1] = { type = "text", text = p.text, sig = sig }
        end
      elseif tbl(p.functionCall) or tbl(p.function_call) then
        local fc = tbl(p.functionCall) or p.function_call
        local name = s(fc.name)
        if ctx and ctx.gemini_names then name = ctx.gemini_names:orig(name) end
        local id = s(fc.id) or (seq and history_id(seq, ctx)) or ir.new_id(tool_prefix(ctx), ctx)
        if pending then
          pending[name or ""] = pending[name or ""] or {}
          local q = pending[name or ""]
          q[#q + 1] = id
        end
        out[#out + 1] = { type = "tool_call", id = id, name = name,
                          args = encode(tbl(fc.args) or {}), sig = sig }
      elseif tbl(p.functionResponse) or tbl(p.function_response) then
        local fr = tbl(p.functionResponse) or p.function_response
        local name = s(fr.name)
        local id = s(fr.id)
        local q = pending and pending[name or ""]
        if q and #q > 0 then
          if id then
            for k, v in ipairs(q) do if v == id then remove(q, k); break end end
          else
            id = remove(q, 1)
          end
        end
        id = id or (seq and history_id(seq, ctx)) or ir.new_id(tool_prefix(ctx), ctx)
        out[#out + 1] = { type = "tool_result", id = id, name = name,
                          content = result_from_response(fr.response) }
      elseif inline then
        local mime = s(inline.mimeType) or s(inline.mime_type)
        local kind = (mime and mime:find("^image/")) and "image" or "file"
        out[#out + 1] = { type = kind, mime = mime, data = s(inline.data) }
      elseif fdata then
        local mime = s(fdata.mimeType) or s(fdata.mime_type)
        local kind = (mime and mime:find("^image/")) and "image" or "file"
        out[#out + 1] = { type = kind, mime = mime, url = s(fdata.fileUri) or s(fdata.file_uri) }
      end
    end
  end
  local _ = role
  return out
end

local LEVELS = { minimal = "minimal", low = "low", medium = "medium", high = "high" }

function _M.decode_request(body, ctx)
  if type(body) ~= "table" then return nil, "request body must be a JSON object" end
  local _, lerr = ir.need_list(body, "contents")
  if lerr then return nil, lerr end
  local r = { model = (ctx and ctx.model) or s(body.model), stream = ctx and ctx.stream or false,
              system = {}, messages = {} }
  local si = tbl(body.systemInstruction) or tbl(body.system_instruction)
  if si then
    for _, p in ipairs(tbl(si.parts) or {}) do
      if type(p) == "table" and s(p.text) then r.system[#r.system + 1] = { type = "text", text = p.text } end
    end
  end
  local pending, seq = {}, { n = 0 }
  for _, c in ipairs(body.contents) do
    if type(c) == "table" then
      local parts = decode_parts(c.parts, c.role, pending, ctx, seq)
      if c.role == "model" then
        r.messages[#r.messages + 1] = { role = "assistant", content = parts }
      else
        local cur
        for _, p in ipairs(parts) do
          local want = p.type == "tool_result" and "tool" or "user"
          if not cur or cur.role ~= want then
            cur = { role = want, content = {} }
            r.messages[#r.messages + 1] = cur
          end
          cur.content[#cur.content + 1] = p
        end
      end
    end
  end

  if type(body.tools) == "table" then
    r.tools = {}
    for _, t in ipairs(body.tools) do
      if type(t) == "table" then
        local decls = tbl(t.functionDeclarations) or tbl(t.function_declarations)
        for _, f in ipairs(decls or {}) do
          r.tools[#r.tools + 1] = { kind = "function", name = s(f.name), description = s(f.description),
                                    schema = tbl(f.parametersJsonSchema) or tbl(f.parameters) }
        end
        for k, v in pairs(t) do
          if k ~= "functionDeclarations" and k ~= "function_declarations" then
            local ty = (k == "googleSearch" or k == "google_search") and "web_search" or k
            r.tools[#r.tools + 1] = { kind = "builtin", type = ty, config = { [k] = v }, origin = FMT }
          end
        end
      end
    end
  end
  local tc = tbl(body.toolConfig) or tbl(body.tool_config)
  local fcc = tc and (tbl(tc.functionCallingConfig) or tbl(tc.function_calling_config))
  if fcc then
    local mode = upper(s(fcc.mode) or "AUTO")
    local names = tbl(fcc.allowedFunctionNames) or tbl(fcc.allowed_function_names)
    if mode == "ANY" and names and #names == 1 then
      r.tool_choice = { mode = "tool", name = names[1] }
    elseif mode == "ANY" then r.tool_choice = { mode = "required" }
    elseif mode == "NONE" then r.tool_choice = { mode = "none" }
    else r.tool_choice = { mode = "auto" } end
  end

  local g = tbl(body.generationConfig) or tbl(body.generation_config) or {}
  r.max_tokens = num(g.maxOutputTokens) or num(g.max_output_tokens)
  r.temperature = num(g.temperature)
  r.top_p = num(g.topP) or num(g.top_p)
  r.top_k = num(g.topK) or num(g.top_k)
  r.n = num(g.candidateCount) or num(g.candidate_count)
  r.seed = num(g.seed)
  r.presence_penalty, r.frequency_penalty = num(g.presencePenalty), num(g.frequencyPenalty)
  local stops = tbl(g.stopSequences) or tbl(g.stop_sequences)
  if stops then
    r.stop = {}
    for _, v in ipairs(stops) do r.stop[#r.stop + 1] = v end
  end
  local mime = s(g.responseMimeType) or s(g.response_mime_type)
  local rs = tbl(g.responseJsonSchema) or tbl(g.response_json_schema) or tbl(g.responseSchema)
  if rs then r.output = { format = "json_schema", schema = rs }
  elseif mime == "application/json" then r.output = { format = "json_object" } end
  local th = tbl(g.thinkingConfig) or tbl(g.thinking_config)
  if th then
    local budget = num(th.thinkingBudget) or num(th.thinking_budget)
    local level = s(th.thinkingLevel) or s(th.thinking_level)
    r.reasoning = { include = th.includeThoughts == true or th.include_thoughts == true or nil }
    if level then r.reasoning.effort = LEVELS[lower(level)] or "medium" end
    if budget then
      r.reasoning.budget = budget
      r.reasoning.effort = r.reasoning.effort or ir.budget_to_level(budget)
    end
  end
  return r
end

local function encode_media(p)
  if p.data then
    return { inlineData = { mimeType = p.mime or "application/octet-stream", data = p.data } }
  end
  if p.url then
    local mime, data = ir.parse_data_url(p.url)
    if mime then return { inlineData = { mimeType = mime, data = data } } end
    return { fileData = { mimeType = p.mime or (p.type == "image" and "image/jpeg") or "application/octet-stream",
                          fileUri = p.url } }
  end
  return nil
end

local function encode_parts(parts, out, names, ctx)
  for _, p in ipairs(parts) do
    local t = p.type
    if t == "text" then
      if p.text and p.text ~= "" then
        out[#out + 1] = { text = p.text, thoughtSignature = ir.sig_for(p.sig, FMT) }
      end
    elseif t == "thinking" then
      local v = ir.sig_for(p.sig, FMT)
      if v and not p.redacted then
        out[#out + 1] = { text = p.text or "", thought = true, thoughtSignature = v }
      end
    elseif t == "image" or t == "file" then
      local e = encode_media(p)
      if e then out[#out + 1] = e end
    elseif t == "tool_call" then
      -- the arguments text becomes `args` as it is (validated, not decoded)
      local args = p.args and p.args ~= "" and raw(p.args, "object") or {}
      out[#out + 1] = { functionCall = { name = names:name(p.name), args = args },
                        thoughtSignature = ir.sig_for(p.sig, FMT) or SKIP_SIG }
    elseif t == "tool_result" then
      out[#out + 1] = { functionResponse = { name = names:name(p.name or (ctx.call_names[p.id]) or "tool"),
                                             response = response_from_result(p) } }
    end
  end
  return out
end

local function is_gemini3(model)
  return type(model) == "string" and model:find("gemini%-3") ~= nil
end

function _M.encode_request(r, ctx)
  ctx = ctx or {}
  local names = ctx.gemini_names or schema.name_mapper({ max = 64 })
  ctx.gemini_names = names
  -- names of calls by id, for results that carry no name
  ctx.call_names = {}
  for _, m in ipairs(r.messages or {}) do
    for _, p in ipairs(m.content or {}) do
      if p.type == "tool_call" and p.id then ctx.call_names[p.id] = p.name end
    end
  end
  local model = ctx.upstream_model or r.model
  local b = {}
  local sys = arr()
  for _, p in ipairs(r.system or {}) do
    if p.type == "text" then sys[#sys + 1] = { text = p.text or "" } end
  end
  local contents = arr()
  local last
  for _, m in ipairs(r.messages or {}) do
    if m.role == "system" or m.role == "developer" then
      for _, p in ipairs(m.content or {}) do
        if p.type == "text" then sys[#sys + 1] = { text = p.text or "" } end
      end
    else
      local role = m.role == "assistant" and "model" or "user"
      local parts = encode_parts(m.content or {}, arr(), names, ctx)
      if #parts > 0 then
        if last and last.role == role then
          for _, x in ipairs(parts) do last.parts[#last.parts + 1] = x end
        else
          last = { role = role, parts = parts }
          contents[#contents + 1] = last
        end
      end
    end
  end
  b.contents = contents
  if #sys > 0 then b.systemInstruction = { role = "user", parts = sys } end

  if r.tools and #r.tools > 0 then
    local decls, tools = arr(), arr()
    for _, t in ipairs(r.tools) do
      if t.kind == "function" then
        decls[#decls + 1] = { name = names:name(t.name), description = t.description,
                              parametersJsonSchema = schema.clean_for_gemini(t.schema) }
      elseif t.kind == "custom" then
        decls[#decls + 1] = { name = names:name(t.name), description = t.description,
                              parametersJsonSchema = { type = "object", properties = { input = { type = "string" } },
                                                       required = arr { "input" } } }
      elseif t.kind == "builtin" then
        if t.origin == FMT then tools[#tools + 1] = t.config
        elseif t.type == "web_search" then tools[#tools + 1] = { googleSearch = {} } end
      end
    end
    if #decls > 0 then table.insert(tools, 1, { functionDeclarations = decls }) end
    if #tools > 0 then b.tools = tools end
  end
  local tc = r.tool_choice
  if tc and b.tools then
    local fcc
    if tc.mode == "required" then fcc = { mode = "ANY" }
    elseif tc.mode == "none" then fcc = { mode = "NONE" }
    elseif tc.mode == "tool" then fcc = { mode = "ANY", allowedFunctionNames = arr { names:name(tc.name) } }
    elseif tc.mode == "auto" then fcc = { mode = "AUTO" } end
    if fcc then b.toolConfig = { functionCallingConfig = fcc } end
  end

  local g = {}
  g.maxOutputTokens = r.max_tokens
  g.temperature, g.topP, g.topK = r.temperature, r.top_p, r.top_k
  g.candidateCount, g.seed = r.n, r.seed
  g.presencePenalty, g.frequencyPenalty = r.presence_penalty, r.frequency_penalty
  if r.stop and #r.stop > 0 then g.stopSequences = arr(r.stop) end
  if r.output then
    if r.output.format == "json_object" then g.responseMimeType = "application/json"
    elseif r.output.format == "json_schema" then
      g.responseMimeType = "application/json"
      g.responseJsonSchema = r.output.schema
    end
  end
  local re = r.reasoning
  if re then
    local effort = ir.effort_of(re)
    local tcfg = {}
    if is_gemini3(model) and re.effort and re.effort ~= "auto" then
      local lv = ({ none = "low", minimal = "minimal", low = "low", medium = "medium",
                    high = "high", xhigh = "high", max = "high" })[re.effort] or "high"
      tcfg.thinkingLevel = lv
    else
      local budget = ir.budget_of(re)
      if budget then
        if budget > 32768 then budget = 32768 end
        tcfg.thinkingBudget = budget
      end
    end
    if effort ~= "none" then tcfg.includeThoughts = true end
    g.thinkingConfig = tcfg
  end
  if next(g) ~= nil then b.generationConfig = g end
  return b
end

--------------------------------------------------------------- responses --

local function usage_in(u)
  if type(u) ~= "table" then return nil end
  local th = num(u.thoughtsTokenCount) or 0
  local o = { input = num(u.promptTokenCount), output = (num(u.candidatesTokenCount) or 0) + th,
              total = num(u.totalTokenCount), cache_read = num(u.cachedContentTokenCount) }
  if num(u.thoughtsTokenCount) then o.reasoning = th end
  return o
end

local function usage_out(u)
  u = u or {}
  local th = u.reasoning or 0
  local o = { promptTokenCount = u.input or 0, candidatesTokenCount = math.max((u.output or 0) - th, 0) }
  o.totalTokenCount = u.total or (o.promptTokenCount + (u.output or 0))
  if u.reasoning then o.thoughtsTokenCount = th end
  if u.cache_read then o.cachedContentTokenCount = u.cache_read end
  return o
end

function _M.decode_response(body, ctx)
  if type(body) ~= "table" then return nil, "response body must be a JSON object" end
  if json.is_array(body) then body = body[1] or {} end
  local cand = tbl(body.candidates) and body.candidates[1] or {}
  local content = tbl(cand.content) or {}
  local res = { id = s(body.responseId), model = s(body.modelVersion),
                content = decode_parts(content.parts, "model", nil, ctx),
                usage = usage_in(body.usageMetadata) or {} }
  res.stop = ir.stop_from_gemini(s(cand.finishReason)) or "end_turn"
  for _, p in ipairs(res.content) do
    if p.type == "tool_call" and res.stop == "end_turn" then res.stop = "tool_use" end
  end
  return res
end

local function part_out(p, ctx)
  if p.type == "text" then
    return { text = p.text or "", thoughtSignature = p.sig and ir.sig_out(p.sig, FMT) or nil }
  elseif p.type == "thinking" then
    if p.redacted then return nil end
    return { text = p.text or "", thought = true, thoughtSignature = p.sig and ir.sig_out(p.sig, FMT) or nil }
  elseif p.type == "tool_call" then
    local args = p.args and p.args ~= "" and raw(p.args, "object") or {}
    return { functionCall = { id = p.id, name = p.name, args = args },
             thoughtSignature = p.sig and ir.sig_out(p.sig, FMT) or nil }
  elseif p.type == "image" and p.data then
    return { inlineData = { mimeType = p.mime, data = p.data } }
  end
  return nil
end

function _M.encode_response(res, ctx)
  local parts = arr()
  for _, p in ipairs(res.content or {}) do
    local e = part_out(p, ctx)
    if e then parts[#parts + 1] = e end
  end
  if #parts == 0 then parts[1] = { text = "" } end
  return {
    candidates = arr { { content = { role = "model", parts = parts },
                         finishReason = ir.stop_to_gemini(res.stop or "end_turn"), index = 0 } },
    usageMetadata = usage_out(res.usage),
    modelVersion = (ctx and ctx.model) or res.model,
    responseId = res.id or ir.new_id("", ctx, 22),
  }
end

----------------------------------------------------------------- streams --

local open_block = ir.open_block

local function close_block(st, key, out)
  if st[key] then
    out[#out + 1] = { t = "block_stop", i = st[key] }
    st[key] = nil
  end
end

function _M.stream_decode(ev, st, ctx)
  local out = {}
  local data = ev.data
  if data == nil or data == "" or data == "[DONE]" then return out end
  local d = decode(data)
  if type(d) ~= "table" then return out end
  if json.is_array(d) then d = d[1] end
  -- an array's first element must be an object too (found by fuzz_codec)
  if type(d) ~= "table" or st.finished then return out end
  if type(d.error) == "table" then
    st.finished = true
    out[1] = { t = "error", status = num(d.error.code) or 500, type = s(d.error.status),
               message = s(d.error.message) or "upstream error" }
    return out
  end
  if not st.started then
    st.started = true
    out[#out + 1] = { t = "start", id = s(d.responseId), model = s(d.modelVersion) }
  end
  local cand = tbl(d.candidates) and d.candidates[1] or {}
  local content = tbl(cand.content) or {}
  for _, p in ipairs(decode_parts(content.parts, "model", nil, ctx)) do
    if p.type == "thinking" then
      if not st.think then close_block(st, "text", out); st.think = open_block(st, "thinking", out) end
      if p.text ~= "" then out[#out + 1] = { t = "delta", i = st.think, thinking = p.text } end
      if p.sig then out[#out + 1] = { t = "delta", i = st.think, sig = p.sig } end
    elseif p.type == "text" then
      if p.text ~= "" or p.sig then
        if not st.text then close_block(st, "think", out); st.text = open_block(st, "text", out) end
        if p.text ~= "" then out[#out + 1] = { t = "delta", i = st.text, text = p.text } end
        if p.sig then out[#out + 1] = { t = "delta", i = st.text, sig = p.sig } end
      end
    elseif p.type == "tool_call" then
      close_block(st, "think", out); close_block(st, "text", out)
      local i = open_block(st, "tool_call", out, { id = p.id, name = p.name })
      out[#out + 1] = { t = "delta", i = i, args = p.args }
      if p.sig then out[#out + 1] = { t = "delta", i = i, sig = p.sig } end
      out[#out + 1] = { t = "block_stop", i = i }
      st.saw_tool = true
    end
  end
  local u = usage_in(d.usageMetadata)
  if u then st.usage = u end
  if s(cand.finishReason) then
    st.stop = ir.stop_from_gemini(cand.finishReason)
    if u then
      for _, e in ipairs(_M.stream_flush(st, ctx)) do out[#out + 1] = e end
    end
  end
  return out
end

function _M.stream_flush(st, ctx)
  if st.finished then return {} end
  st.finished = true
  local out = {}
  close_block(st, "think", out)
  close_block(st, "text", out)
  local stop = st.stop or "end_turn"
  if st.saw_tool and stop == "end_turn" then stop = "tool_use" end
  out[#out + 1] = { t = "finish", stop = stop, usage = st.usage }
  return out
end

local function frame(st, ctx, obj)
  local body = encode(obj)
  if ctx and ctx.gemini_array then
    if st.count == 0 then
      st.count = 1
      return "[" .. body
    end
    st.count = st.count + 1
    return ",\r\n" .. body
  end
  st.count = st.count + 1
  return "data: " .. body .. "\r\n\r\n"
end

local function chunk(st, ctx, parts, finish, usage)
  local cand = { content = { role = "model", parts = parts }, index = 0 }
  if finish then cand.finishReason = finish end
  local o = { candidates = arr { cand }, modelVersion = st.model, responseId = st.id }
  if usage then o.usageMetadata = usage end
  return frame(st, ctx, o)
end

function _M.stream_encode(ev, st, ctx)
  local out = {}
  if st.done then return out end
  if not st.count then
    st.count, st.blocks = 0, {}
    st.model = (ctx and ctx.model) or ""
  end
  local t = ev.t
  if t == "error" then return _M.stream_error(ev, st, ctx) end
  if t == "start" then
    st.id = st.id or ev.id or ir.new_id("", ctx, 22)
    if st.model == "" then st.model = ev.model or "" end
    st.usage = ir.merge_usage(st.usage, ev.usage)
    return out
  end
  st.id = st.id or ir.new_id("", ctx, 22)
  if t == "block_start" then
    st.blocks[ev.i] = { kind = ev.kind, id = ev.id, name = ev.name, args = {} }
  elseif t == "delta" then
    local b = st.blocks[ev.i] or { kind = "text", args = {} }
    st.blocks[ev.i] = b
    if ev.text then
      out[#out + 1] = chunk(st, ctx, arr { { text = ev.text } })
    elseif ev.thinking then
      out[#out + 1] = chunk(st, ctx, arr { { text = ev.thinking, thought = true } })
    elseif ev.args then
      b.args[#b.args + 1] = ev.args
    elseif ev.sig then
      if b.kind == "tool_call" then
        b.sig = ev.sig
      else
        local p = { text = "", thoughtSignature = ir.sig_out(ev.sig, FMT) }
        if b.kind == "thinking" then p.thought = true end
        out[#out + 1] = chunk(st, ctx, arr { p })
      end
    end
  elseif t == "block_stop" then
    local b = st.blocks[ev.i]
    if b and b.kind == "tool_call" then
      st.saw_tool = true
      local args = decode(concat(b.args))
      if type(args) ~= "table" or json.is_array(args) then args = {} end
      out[#out + 1] = chunk(st, ctx, arr { {
        functionCall = { id = b.id, name = b.name, args = args },
        thoughtSignature = b.sig and ir.sig_out(b.sig, FMT) or nil } })
    end
    st.blocks[ev.i] = nil
  elseif t == "finish" then
    st.usage = ir.merge_usage(st.usage, ev.usage)
    out[#out + 1] = chunk(st, ctx, arr { { text = "" } }, ir.stop_to_gemini(ev.stop or "end_turn"),
                          usage_out(st.usage))
    if ctx and ctx.gemini_array then out[#out + 1] = "]" end
    st.done = true
  end
  return out
end

------------------------------------------------------------------ errors --

local STATUS = {
  [400] = "INVALID_ARGUMENT", [401] = "UNAUTHENTICATED", [403] = "PERMISSION_DENIED",
  [404] = "NOT_FOUND", [409] = "ABORTED", [413] = "INVALID_ARGUMENT", [429] = "RESOURCE_EXHAUSTED",
  [499] = "CANCELLED", [500] = "INTERNAL", [501] = "UNIMPLEMENTED", [502] = "UNAVAILABLE",
  [503] = "UNAVAILABLE", [504] = "DEADLINE_EXCEEDED", [529] = "UNAVAILABLE",
}

function _M.decode_error(status, body, ctx)
  local d = type(body) == "string" and decode(body) or body
  if type(d) == "table" and json.is_array(d) then d = d[1] end
  local e = type(d) == "table" and tbl(d.error)
  if e then
    return { status = status, type = s(e.status), message = s(e.message) or "", code = num(e.code) }
  end
  return { status = status, message = type(body) == "string" and body or "" }
end

function _M.encode_error(err, ctx)
  local st = tonumber(err.status) or 500
  local status = STATUS[st] or (st >= 500 and "INTERNAL" or "INVALID_ARGUMENT")
  return { error = json.object({ { "code", st }, { "message", err.message or "" }, { "status", status } }) }
end

function _M.stream_error(err, st, ctx)
  local body = encode(_M.encode_error(err, ctx))
  if st then st.done = true end
  if ctx and ctx.gemini_array then
    if st and (st.count or 0) > 0 then return { ",\r\n" .. body, "]" } end
    return { "[" .. body, "]" }
  end
  -- A plain data frame, as Google sends it: the genai SDK reads only
  -- "data:" frames, so an "event: error" frame would be skipped silently.
  return { "data: " .. body .. "\r\n\r\n" }
end

-- The usage object of this format -> IR usage (rt.record reads answers
-- that pass through untranslated with it).
_M.usage_in = usage_in

return _M
