-- translators.openai_chat: OpenAI Chat Completions <-> IR (docs/ir.md).
local json = require("lib.json")
local ir = require("lib.ir")

local type = type
local ipairs = ipairs
local concat = table.concat
local encode = json.encode
local decode = json.decode
local arr = json.array
local null = json.null

local FMT = "openai_chat"
local _M = { name = FMT }

-- Subtrees this codec only carries (see translators/claude.lua).
_M.carries = {
  request = { "tools[].function.parameters", "response_format.json_schema.schema" },
}

local s = ir.str
local num = ir.num

---------------------------------------------------------------- requests --

local function decode_content(c)
  local parts = {}
  if type(c) == "string" then
    parts[1] = { type = "text", text = c }
    return parts
  end
  if type(c) ~= "table" then return parts end
  for _, p in ipairs(c) do
    local t = type(p) == "table" and p.type
    if t == "text" then
      parts[#parts + 1] = { type = "text", text = s(p.text) or "" }
    elseif t == "image_url" then
      local iu = p.image_url
      local url = type(iu) == "table" and s(iu.url) or s(iu)
      if url then
        local mime, data = ir.parse_data_url(url)
        if mime then
          parts[#parts + 1] = { type = "image", mime = mime, data = data,
                                detail = type(iu) == "table" and s(iu.detail) or nil }
        else
          parts[#parts + 1] = { type = "image", url = url, detail = type(iu) == "table" and s(iu.detail) or nil }
        end
      end
    elseif t == "file" and type(p.file) == "table" then
      local f = p.file
      local fp = { type = "file", name = s(f.filename), file_id = s(f.file_id) }
      if s(f.file_data) then
        local mime, data = ir.parse_data_url(f.file_data)
        if mime then fp.mime, fp.data = mime, data else fp.data = f.file_data end
      end
      parts[#parts + 1] = fp
    elseif t == "input_audio" and type(p.input_audio) == "table" then
      parts[#parts + 1] = { type = "file", mime = "audio/" .. (s(p.input_audio.format) or "wav"),
                            data = s(p.input_audio.data) }
    elseif t == "refusal" then
      parts[#parts + 1] = { type = "text", text = s(p.refusal) or "" }
    end
  end
  return parts
end

function _M.decode_request(body, ctx)
  if type(body) ~= "table" then return nil, "request body must be a JSON object" end
  local _, lerr = ir.need_list(body, "messages")
  if lerr then return nil, lerr end
  local r = { model = s(body.model), stream = body.stream == true, system = {}, messages = {} }
  for _, m in ipairs(body.messages) do
    if type(m) == "table" then
      local role = m.role
      if role == "system" or role == "developer" or role == "user" then
        r.messages[#r.messages + 1] = { role = role, content = decode_content(m.content), name = s(m.name) }
      elseif role == "assistant" then
        local parts = {}
        local rc = s(m.reasoning_content) or s(m.reasoning)
        if rc and rc ~= "" then parts[1] = { type = "thinking", text = rc } end
        for _, p in ipairs(decode_content(m.content)) do parts[#parts + 1] = p end
        if s(m.refusal) then parts[#parts + 1] = { type = "text", text = m.refusal } end
        if type(m.tool_calls) == "table" then
          for _, tc in ipairs(m.tool_calls) do
            local f = type(tc) == "table" and tc["function"] or nil
            if type(f) == "table" then
              parts[#parts + 1] = { type = "tool_call", id = s(tc.id), name = s(f.name),
                                    args = s(f.arguments) or (f.arguments and encode(f.arguments)) or "" }
            elseif type(tc) == "table" and tc.type == "custom" and type(tc.custom) == "table" then
              parts[#parts + 1] = { type = "tool_call", id = s(tc.id), name = s(tc.custom.name),
                                    custom = true, args = encode({ input = s(tc.custom.input) or "" }) }
            end
          end
        elseif type(m.function_call) == "table" then
          parts[#parts + 1] = { type = "tool_call", name = s(m.function_call.name),
                                args = s(m.function_call.arguments) or "" }
        end
        r.messages[#r.messages + 1] = { role = "assistant", content = parts, name = s(m.name) }
      elseif role == "tool" or role == "function" then
        r.messages[#r.messages + 1] = { role = "tool", content = {
          { type = "tool_result", id = s(m.tool_call_id), name = s(m.name), content = decode_content(m.content) } } }
      end
    end
  end

  if type(body.tools) == "table" then
    r.tools = {}
    for _, t in ipairs(body.tools) do
      if type(t) == "table" then
        if t.type == "function" and type(t["function"]) == "table" then
          local f = t["function"]
          r.tools[#r.tools + 1] = { kind = "function", name = s(f.name), description = s(f.description),
                                    schema = f.parameters, strict = f.strict }
        elseif t.type == "custom" and type(t.custom) == "table" then
          r.tools[#r.tools + 1] = { kind = "custom", name = s(t.custom.name),
                                    description = s(t.custom.description), format = t.custom.format }
        elseif s(t.type) then
          r.tools[#r.tools + 1] = { kind = "builtin", type = t.type, config = t, origin = FMT }
        end
      end
    end
  end
  local tc = body.tool_choice
  if s(tc) then
    r.tool_choice = { mode = tc }
  elseif type(tc) == "table" then
    local name = type(tc["function"]) == "table" and s(tc["function"].name)
      or type(tc.custom) == "table" and s(tc.custom.name) or nil
    r.tool_choice = { mode = "tool", name = name }
  end
  if body.parallel_tool_calls == false then
    r.tool_choice = r.tool_choice or { mode = "auto" }
    r.tool_choice.parallel = false
  end

  r.max_tokens = num(body.max_completion_tokens) or num(body.max_tokens)
  if s(body.stop) then r.stop = { body.stop }
  elseif type(body.stop) == "table" then
    r.stop = {}
    for _, v in ipairs(body.stop) do r.stop[#r.stop + 1] = v end
  end
  r.temperature, r.top_p, r.top_k = num(body.temperature), num(body.top_p), num(body.top_k)
  r.n, r.seed = num(body.n), num(body.seed)
  r.presence_penalty, r.frequency_penalty = num(body.presence_penalty), num(body.frequency_penalty)
  if s(body.reasoning_effort) then r.reasoning = { effort = body.reasoning_effort } end
  local rf = body.response_format
  if type(rf) == "table" then
    if rf.type == "json_object" then
      r.output = { format = "json_object" }
    elseif rf.type == "json_schema" and type(rf.json_schema) == "table" then
      r.output = { format = "json_schema", schema = rf.json_schema.schema, name = s(rf.json_schema.name),
                   strict = rf.json_schema.strict }
    end
  end
  if s(body.user) or type(body.metadata) == "table" or s(body.prompt_cache_key) or s(body.safety_identifier) then
    r.meta = { user = s(body.user) or s(body.safety_identifier), metadata = body.metadata,
               cache_key = s(body.prompt_cache_key) }
  end
  if type(body.stream_options) == "table" and body.stream_options.include_usage == true then
    r.stream_usage = true
  end
  if ctx then ctx.chat_include_usage = r.stream_usage end
  return r
end

local function encode_part(p)
  if p.type == "text" then
    return { type = "text", text = p.text or "" }
  elseif p.type == "image" then
    local url = p.url or (p.data and ir.data_url(p.mime or "image/png", p.data))
    if url then return { type = "image_url", image_url = { url = url, detail = p.detail } } end
  elseif p.type == "file" then
    local f = { filename = p.name, file_id = p.file_id }
    if p.data then f.file_data = ir.data_url(p.mime, p.data)
    elseif p.url then f.file_data = p.url end
    return { type = "file", file = f }
  end
  return nil
end

local function encode_content(parts, text_only)
  local only_text = true
  local n = 0
  for _, p in ipairs(parts) do
    if p.type == "text" then n = n + 1
    elseif p.type == "image" or p.type == "file" then only_text = false; n = n + 1 end
  end
  if only_text or text_only then
    return ir.text_of(parts, only_text and "" or "\n")
  end
  local out = arr()
  for _, p in ipairs(parts) do
    local e = encode_part(p)
    if e then out[#out + 1] = e end
  end
  return out
end

local EFFORT_OUT = { none = "none", minimal = "minimal", low = "low", medium = "medium",
                     high = "high", xhigh = "xhigh", max = "xhigh" }

function _M.encode_request(r, ctx)
  local b = { model = (ctx and ctx.upstream_model) or r.model }
  local msgs = arr()
  if r.system and #r.system > 0 then
    msgs[#msgs + 1] = { role = "system", content = ir.text_of(r.system, "\n\n") }
  end
  for _, m in ipairs(r.messages or {}) do
    local role = m.role
    if role == "system" or role == "developer" then
      msgs[#msgs + 1] = { role = "system", content = encode_content(m.content or {}, true) }
    elseif role == "user" then
      msgs[#msgs + 1] = { role = "user", content = encode_content(m.content or {}), name = m.name }
    elseif role == "assistant" then
      local text, think, calls = {}, {}, arr()
      for _, p in ipairs(m.content or {}) do
        if p.type == "text" then text[#text + 1] = p.text or ""
        elseif p.type == "thinking" and p.text and p.text ~= "" then think[#think + 1] = p.text
        elseif p.type == "tool_call" then
          calls[#calls + 1] = { id = p.id, type = "function",
                                ["function"] = { name = p.name, arguments = (p.args ~= "" and p.args) or "{}" } }
        end
      end
      local am = { role = "assistant", content = #text > 0 and concat(text) or null }
      if #think > 0 then am.reasoning_content = concat(think) end
      if #calls > 0 then am.tool_calls = calls end
      msgs[#msgs + 1] = am
    elseif role == "tool" then
      local rest = {}
      for _, p in ipairs(m.content or {}) do
        if p.type == "tool_result" then
          msgs[#msgs + 1] = { role = "tool", tool_call_id = p.id, content = ir.result_text(p) }
        else
          rest[#rest + 1] = p
        end
      end
      if #rest > 0 then msgs[#msgs + 1] = { role = "user", content = encode_content(rest) } end
    end
  end
  b.messages = msgs

  if r.tools and #r.tools > 0 then
    local tools = arr()
    for _, t in ipairs(r.tools) do
      if t.kind == "function" then
        tools[#tools + 1] = { type = "function", ["function"] = {
          name = t.name, description = t.description,
          parameters = type(t.schema) == "table" and t.schema or { type = "object", properties = {} },
          strict = t.strict } }
      elseif t.kind == "custom" then
        tools[#tools + 1] = { type = "function", ["function"] = {
          name = t.name, description = t.description,
          parameters = { type = "object", properties = { input = { type = "string" } }, required = arr { "input" } } } }
      elseif t.kind == "builtin" and t.origin == FMT then
        tools[#tools + 1] = t.config
      end
    end
    if #tools > 0 then b.tools = tools end
  end
  local tc = r.tool_choice
  if tc and b.tools then
    if tc.mode == "tool" then
      b.tool_choice = { type = "function", ["function"] = { name = tc.name } }
    elseif tc.mode == "auto" or tc.mode == "none" or tc.mode == "required" then
      b.tool_choice = tc.mode
    end
    if tc.parallel == false then b.parallel_tool_calls = false end
  end

  if r.max_tokens then b.max_tokens = r.max_tokens end
  if r.stop and #r.stop > 0 then b.stop = arr(r.stop) end
  b.temperature, b.top_p, b.n, b.seed = r.temperature, r.top_p, r.n, r.seed
  b.presence_penalty, b.frequency_penalty = r.presence_penalty, r.frequency_penalty
  local effort = ir.effort_of(r.reasoning)
  if effort and EFFORT_OUT[effort] then b.reasoning_effort = EFFORT_OUT[effort] end
  if r.output then
    if r.output.format == "json_object" then
      b.response_format = { type = "json_object" }
    elseif r.output.format == "json_schema" then
      b.response_format = { type = "json_schema", json_schema = {
        name = r.output.name or "response", schema = r.output.schema, strict = r.output.strict } }
    end
  end
  if r.meta then
    b.user = r.meta.user
    if r.meta.cache_key then b.prompt_cache_key = r.meta.cache_key end
  end
  if r.stream then
    b.stream = true
    b.stream_options = { include_usage = true }
  end
  return b
end

--------------------------------------------------------------- responses --

local function usage_in(u)
  if type(u) ~= "table" then return nil end
  local o = { input = num(u.prompt_tokens), output = num(u.completion_tokens), total = num(u.total_tokens) }
  if type(u.prompt_tokens_details) == "table" then o.cache_read = num(u.prompt_tokens_details.cached_tokens) end
  if type(u.completion_tokens_details) == "table" then
    o.reasoning = num(u.completion_tokens_details.reasoning_tokens)
  end
  return o
end

local function usage_out(u)
  u = u or {}
  local o = { prompt_tokens = u.input or 0, completion_tokens = u.output or 0 }
  o.total_tokens = u.total or (o.prompt_tokens + o.completion_tokens)
  o.prompt_tokens_details = { cached_tokens = u.cache_read or 0 }
  o.completion_tokens_details = { reasoning_tokens = u.reasoning or 0 }
  return o
end

function _M.decode_response(body, ctx)
  if type(body) ~= "table" then return nil, "response body must be a JSON object" end
  local ch = type(body.choices) == "table" and body.choices[1] or {}
  local m = type(ch.message) == "table" and ch.message or {}
  local res = { id = s(body.id), model = s(body.model), content = {}, usage = usage_in(body.usage) or {} }
  local c = res.content
  local rc = s(m.reasoning_content) or s(m.reasoning)
  if rc and rc ~= "" then c[#c + 1] = { type = "thinking", text = rc } end
  if s(m.content) and m.content ~= "" then c[#c + 1] = { type = "text", text = m.content }
  elseif type(m.content) == "table" then
    for _, p in ipairs(decode_content(m.content)) do c[#c + 1] = p end
  end
  if s(m.refusal) then c[#c + 1] = { type = "text", text = m.refusal } end
  if type(m.images) == "table" then
    for _, im in ipairs(m.images) do
      local url = type(im) == "table" and type(im.image_url) == "table" and s(im.image_url.url)
      local mime, data = ir.parse_data_url(url)
      if mime then c[#c + 1] = { type = "image", mime = mime, data = data } end
    end
  end
  if type(m.tool_calls) == "table" then
    for _, tc in ipairs(m.tool_calls) do
      local f = type(tc) == "table" and tc["function"]
      if type(f) == "table" then
        c[#c + 1] = { type = "tool_call", id = s(tc.id), name = s(f.name), args = s(f.arguments) or "" }
      end
    end
  end
  res.stop = ir.stop_from_openai(s(ch.finish_reason)) or "end_turn"
  if s(m.refusal) then res.stop = "refusal" end
  return res
end

local function chat_id(id, ctx)
  if type(id) == "string" and id:find("^chatcmpl") then return id end
  return ir.new_id("chatcmpl-", ctx)
end

function _M.encode_response(res, ctx)
  local text, think, calls, images = {}, {}, arr(), arr()
  for _, p in ipairs(res.content or {}) do
    if p.type == "text" then text[#text + 1] = p.text or ""
    elseif p.type == "thinking" then think[#think + 1] = p.text or ""
    elseif p.type == "tool_call" then
      calls[#calls + 1] = { id = p.id or ir.new_id("call_", ctx), type = "function",
                            ["function"] = { name = p.name, arguments = (p.args ~= "" and p.args) or "{}" } }
    elseif p.type == "image" and p.data then
      images[#images + 1] = { type = "image_url", image_url = { url = ir.data_url(p.mime, p.data) } }
    end
  end
  local msg = { role = "assistant", content = #text > 0 and concat(text) or null }
  if #think > 0 then msg.reasoning_content = concat(think) end
  if #calls > 0 then msg.tool_calls = calls end
  if #images > 0 then msg.images = images end
  local stop = res.stop or "end_turn"
  if #calls > 0 and stop == "end_turn" then stop = "tool_use" end
  return {
    id = chat_id(res.id, ctx), object = "chat.completion", created = ir.now(ctx),
    model = (ctx and ctx.model) or res.model,
    choices = arr { { index = 0, message = msg, finish_reason = ir.stop_to_openai(stop), logprobs = null } },
    usage = usage_out(res.usage),
  }
end

----------------------------------------------------------------- streams --

local open_block = ir.open_block

local function close_block(st, key, out)
  local i = st[key]
  if i then
    out[#out + 1] = { t = "block_stop", i = i }
    st[key] = nil
  end
end

local function close_all(st, out)
  close_block(st, "think", out)
  close_block(st, "text", out)
  close_block(st, "tool", out)
end

function _M.stream_decode(ev, st, ctx)
  local data = ev.data
  local out = {}
  if data == nil or data == "" then return out end
  if data == "[DONE]" then
    return _M.stream_flush(st, ctx)
  end
  local d = decode(data)
  if type(d) ~= "table" then return out end
  if type(d.error) == "table" then
    st.finished = true
    local e = d.error
    out[1] = { t = "error", status = num(e.code) or num(e.status) or 500, type = s(e.type) or "server_error",
               message = s(e.message) or "upstream error", code = s(e.code) }
    return out
  end
  if not st.started then
    st.started = true
    out[#out + 1] = { t = "start", id = s(d.id), model = s(d.model) }
  end
  local u = usage_in(d.usage)
  if u then st.usage = ir.merge_usage(st.usage, u) end
  local ch = type(d.choices) == "table" and d.choices[1]
  if type(ch) ~= "table" then return out end
  local dl = type(ch.delta) == "table" and ch.delta or {}
  local rc = s(dl.reasoning_content) or s(dl.reasoning)
  if rc and rc ~= "" then
    if not st.think then
      close_block(st, "text", out); close_block(st, "tool", out)
      st.think = open_block(st, "thinking", out)
    end
    out[#out + 1] = { t = "delta", i = st.think, thinking = rc }
  end
  if s(dl.content) and dl.content ~= "" then
    if not st.text then
      close_block(st, "think", out); close_block(st, "tool", out)
      st.text = open_block(st, "text", out)
    end
    out[#out + 1] = { t = "delta", i = st.text, text = dl.content }
  end
  if type(dl.tool_calls) == "table" then
    st.tools = st.tools or {}
    for _, tc in ipairs(dl.tool_calls) do
      local k = num(tc.index) or 0
      local f = type(tc["function"]) == "table" and tc["function"] or {}
      local i = st.tools[k]
      if not i then
        close_all(st, out)
        i = open_block(st, "tool_call", out, { id = s(tc.id) or ir.new_id("call_", ctx), name = s(f.name) })
        st.tools[k] = i
        st.tool = i
        st.saw_tool = true
      end
      if s(f.arguments) and f.arguments ~= "" then
        out[#out + 1] = { t = "delta", i = i, args = f.arguments }
      end
    end
  end
  if s(ch.finish_reason) then
    close_all(st, out)
    st.stop = ir.stop_from_openai(ch.finish_reason)
  end
  return out
end

function _M.stream_flush(st, ctx)
  if st.finished then return {} end
  st.finished = true
  local out = {}
  close_all(st, out)
  local stop = st.stop or "end_turn"
  if st.saw_tool and stop == "end_turn" then stop = "tool_use" end
  out[#out + 1] = { t = "finish", stop = stop, usage = st.usage }
  return out
end

local function chunk(st, ctx, delta, finish)
  return "data: " .. encode({
    id = st.id, object = "chat.completion.chunk", created = st.created, model = st.model,
    choices = arr { { index = 0, delta = delta, finish_reason = finish or null } },
  }) .. "\n\n"
end

local function ensure(st, ctx, ev, out)
  if st.id then return end
  st.id = chat_id(ev and ev.id, ctx)
  st.created = ir.now(ctx)
  st.model = (ctx and ctx.model) or (ev and ev.model) or ""
  st.tools, st.ntools = {}, 0
  out[#out + 1] = chunk(st, ctx, { role = "assistant", content = "" })
end

function _M.stream_encode(ev, st, ctx)
  local out = {}
  if st.done then return out end
  local t = ev.t
  if t == "error" then return _M.stream_error(ev, st, ctx) end
  ensure(st, ctx, t == "start" and ev or nil, out)
  if t == "start" then
    st.usage = ir.merge_usage(st.usage, ev.usage)
  elseif t == "block_start" then
    if ev.kind == "tool_call" then
      local k = st.ntools
      st.ntools = k + 1
      st.tools[ev.i] = k
      st.saw_tool = true
      out[#out + 1] = chunk(st, ctx, { tool_calls = arr { {
        index = k, id = ev.id or ir.new_id("call_", ctx), type = "function",
        ["function"] = { name = ev.name, arguments = "" } } } })
    end
  elseif t == "delta" then
    if ev.text then
      out[#out + 1] = chunk(st, ctx, { content = ev.text })
    elseif ev.thinking then
      out[#out + 1] = chunk(st, ctx, { reasoning_content = ev.thinking })
    elseif ev.args and ev.args ~= "" and st.tools[ev.i] then
      out[#out + 1] = chunk(st, ctx, { tool_calls = arr { {
        index = st.tools[ev.i], ["function"] = { arguments = ev.args } } } })
    end
  elseif t == "finish" then
    st.usage = ir.merge_usage(st.usage, ev.usage)
    local stop = ev.stop or "end_turn"
    if st.saw_tool and stop == "end_turn" then stop = "tool_use" end
    out[#out + 1] = chunk(st, ctx, {}, ir.stop_to_openai(stop))
    if ctx and ctx.chat_include_usage then
      out[#out + 1] = "data: " .. encode({
        id = st.id, object = "chat.completion.chunk", created = st.created, model = st.model,
        choices = arr(), usage = usage_out(st.usage) }) .. "\n\n"
    end
    out[#out + 1] = "data: [DONE]\n\n"
    st.done = true
  end
  return out
end

------------------------------------------------------------------ errors --

function _M.decode_error(status, body, ctx)
  local d = type(body) == "string" and decode(body) or body
  local e = type(d) == "table" and d.error
  if type(e) == "table" then
    return { status = status, type = s(e.type), message = s(e.message) or "", code = s(e.code) }
  end
  if type(d) == "table" and json.is_array(d) and type(d[1]) == "table" and type(d[1].error) == "table" then
    e = d[1].error
    return { status = status, type = s(e.type) or s(e.status), message = s(e.message) or "" }
  end
  return { status = status, message = type(body) == "string" and body or "" }
end

local OPENAI_TYPES = {
  invalid_request_error = true, authentication_error = true, permission_error = true,
  rate_limit_error = true, server_error = true, not_found_error = true, insufficient_quota = true,
}

function _M.encode_error(err, ctx)
  local ty, code = ir.error_type(err.status)
  if OPENAI_TYPES[err.type] then ty = err.type end
  return { error = json.object({ { "message", err.message or "" }, { "type", ty }, { "param", null },
                                 { "code", (type(err.code) == "string" and err.code) or code or null } }) }
end

function _M.stream_error(err, st, ctx)
  if st then st.done = true end
  return { "data: " .. encode(_M.encode_error(err, ctx)) .. "\n\n" }
end

-- The usage object of this format -> IR usage (rt.record reads answers
-- that pass through untranslated with it).
_M.usage_in = usage_in

return _M
