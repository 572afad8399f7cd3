-- translators.openai_responses: OpenAI Responses (and Codex) <-> IR (docs/ir.md).
local json = require("lib.json")
local ir = require("lib.ir")
local schema = require("lib.schema")

local type = type
local ipairs = ipairs
local pairs = pairs
local concat = table.concat
local encode = json.encode
local decode = json.decode
local arr = json.array
local null = json.null

local FMT = "openai_responses"
local _M = { name = FMT }

-- Subtrees this codec only carries (see translators/claude.lua).
_M.carries = {
  request = { "tools[].parameters", "text.format.schema" },
}

local s = ir.str
local num = ir.num
local tbl = ir.tbl

-- Request fields response.completed echoes back.
local ECHO = {
  "instructions", "tools", "tool_choice", "temperature", "top_p", "max_output_tokens",
  "parallel_tool_calls", "reasoning", "store", "text", "truncation", "user", "metadata",
  "previous_response_id", "prompt_cache_key", "service_tier", "safety_identifier",
  "max_tool_calls", "top_logprobs", "background",
}

local function custom_args(input) return encode({ input = input or "" }) end
local function custom_input(args)
  local d = args and decode(args)
  if type(d) == "table" and s(d.input) then return d.input end
  return args or ""
end

---------------------------------------------------------------- requests --

local function decode_content(c, role)
  local parts = {}
  if type(c) == "string" then
    parts[1] = { type = "text", text = c }
    return parts
  end
  for _, p in ipairs(tbl(c) or {}) do
    local t = type(p) == "table" and p.type
    if t == "input_text" or t == "output_text" or t == "text" then
      parts[#parts + 1] = { type = "text", text = s(p.text) or "" }
    elseif t == "refusal" then
      parts[#parts + 1] = { type = "text", text = s(p.refusal) or "" }
    elseif t == "input_image" then
      local url = s(p.image_url)
      local mime, data = ir.parse_data_url(url)
      if mime then parts[#parts + 1] = { type = "image", mime = mime, data = data, detail = s(p.detail) }
      else parts[#parts + 1] = { type = "image", url = url, file_id = s(p.file_id), detail = s(p.detail) } end
    elseif t == "input_file" then
      local fp = { type = "file", name = s(p.filename), file_id = s(p.file_id), url = s(p.file_url) }
      if s(p.file_data) then
        local mime, data = ir.parse_data_url(p.file_data)
        if mime then fp.mime, fp.data = mime, data else fp.data = p.file_data end
      end
      parts[#parts + 1] = fp
    end
  end
  local _ = role
  return parts
end

function _M.decode_request(body, ctx)
  if type(body) ~= "table" then return nil, "request body must be a JSON object" end
  local r = { model = s(body.model), stream = body.stream == true, system = {}, messages = {} }
  if s(body.instructions) and body.instructions ~= "" then
    r.system[1] = { type = "text", text = body.instructions }
  end
  local msgs = r.messages
  local function assistant()
    local last = msgs[#msgs]
    if last and last.role == "assistant" then return last end
    last = { role = "assistant", content = {} }
    msgs[#msgs + 1] = last
    return last
  end
  local function tool()
    local last = msgs[#msgs]
    if last and last.role == "tool" then return last end
    last = { role = "tool", content = {} }
    msgs[#msgs + 1] = last
    return last
  end
  if s(body.input) then
    msgs[1] = { role = "user", content = { { type = "text", text = body.input } } }
  elseif type(body.input) == "table" then
    for _, it in ipairs(body.input) do
      if type(it) == "table" then
        local t = it.type or "message"
        if t == "message" then
          local role = it.role
          if role == "assistant" then
            local a = assistant()
            for _, p in ipairs(decode_content(it.content, role)) do a.content[#a.content + 1] = p end
          elseif role == "system" or role == "developer" or role == "user" then
            msgs[#msgs + 1] = { role = role, content = decode_content(it.content, role) }
          end
        elseif t == "function_call" then
          local a = assistant()
          a.content[#a.content + 1] = { type = "tool_call", id = s(it.call_id), name = s(it.name),
                                        args = s(it.arguments) or "" }
        elseif t == "custom_tool_call" then
          local a = assistant()
          a.content[#a.content + 1] = { type = "tool_call", id = s(it.call_id), name = s(it.name),
                                        custom = true, args = custom_args(s(it.input)) }
        elseif t == "function_call_output" or t == "custom_tool_call_output" then
          local tm = tool()
          local out = it.output
          local content = s(out) and { { type = "text", text = out } } or decode_content(out, "tool")
          tm.content[#tm.content + 1] = { type = "tool_result", id = s(it.call_id), content = content }
        elseif t == "reasoning" then
          local a = assistant()
          local texts = {}
          for _, sp in ipairs(tbl(it.summary) or {}) do
            if type(sp) == "table" and s(sp.text) then texts[#texts + 1] = sp.text end
          end
          a.content[#a.content + 1] = { type = "thinking", text = concat(texts, "\n\n"),
                                        sig = ir.sig_in(s(it.encrypted_content), FMT), item_id = s(it.id) }
        end
      end
    end
  end

  local customs = {}
  if type(body.tools) == "table" then
    r.tools = {}
    for _, t in ipairs(body.tools) do
      if type(t) == "table" then
        if t.type == "function" then
          r.tools[#r.tools + 1] = { kind = "function", name = s(t.name), description = s(t.description),
                                    schema = t.parameters, strict = t.strict }
        elseif t.type == "custom" then
          customs[t.name or ""] = true
          r.tools[#r.tools + 1] = { kind = "custom", name = s(t.name), description = s(t.description),
                                    format = t.format }
        elseif s(t.type) then
          local ty = t.type:find("^web_search") and "web_search" or t.type
          r.tools[#r.tools + 1] = { kind = "builtin", type = ty, config = t, origin = FMT }
        end
      end
    end
  end
  local tc = body.tool_choice
  if s(tc) then r.tool_choice = { mode = tc }
  elseif type(tc) == "table" and s(tc.name) then r.tool_choice = { mode = "tool", name = tc.name } end
  if body.parallel_tool_calls == false then
    r.tool_choice = r.tool_choice or { mode = "auto" }
    r.tool_choice.parallel = false
  end
  r.max_tokens = num(body.max_output_tokens)
  r.temperature, r.top_p = num(body.temperature), num(body.top_p)
  local re = tbl(body.reasoning)
  if re then r.reasoning = { effort = s(re.effort), summary = s(re.summary) } end
  local fmt = tbl(body.text) and tbl(body.text.format)
  if fmt then
    if fmt.type == "json_schema" then
      r.output = { format = "json_schema", schema = fmt.schema, name = s(fmt.name), strict = fmt.strict }
    elseif fmt.type == "json_object" then
      r.output = { format = "json_object" }
    end
  end
  if s(body.user) or s(body.safety_identifier) or tbl(body.metadata) or s(body.prompt_cache_key) then
    r.meta = { user = s(body.user) or s(body.safety_identifier), metadata = body.metadata,
               cache_key = s(body.prompt_cache_key) }
  end
  if ctx then
    ctx.responses_custom = customs
    local echo = {}
    for _, k in ipairs(ECHO) do echo[k] = body[k] end
    ctx.responses_echo = echo
  end
  return r
end

local function encode_user_part(p)
  if p.type == "text" then return { type = "input_text", text = p.text or "" } end
  if p.type == "image" then
    local url = p.url or (p.data and ir.data_url(p.mime or "image/png", p.data))
    return { type = "input_image", image_url = url, file_id = p.file_id, detail = p.detail or "auto" }
  end
  if p.type == "file" then
    return { type = "input_file", filename = p.name, file_id = p.file_id, file_url = p.url,
             file_data = p.data and ir.data_url(p.mime, p.data) or nil }
  end
  return nil
end

function _M.encode_request(r, ctx)
  ctx = ctx or {}
  local names = ctx.responses_names or schema.name_mapper({ max = 64, mcp_shorten = true, bad = "[^%w_%-]" })
  ctx.responses_names = names
  local b = { model = ctx.upstream_model or r.model }
  if r.system and #r.system > 0 then b.instructions = ir.text_of(r.system, "\n\n") end
  local customs = {}
  for _, t in ipairs(r.tools or {}) do
    if t.kind == "custom" then customs[t.name or ""] = true end
  end
  local custom_ids = {}
  local input = arr()
  for _, m in ipairs(r.messages or {}) do
    local role = m.role
    if role == "assistant" then
      local text = arr()
      local function flush()
        if #text > 0 then
          input[#input + 1] = { type = "message", role = "assistant", content = text }
          text = arr()
        end
      end
      for _, p in ipairs(m.content or {}) do
        if p.type == "text" then
          text[#text + 1] = { type = "output_text", text = p.text or "" }
        elseif p.type == "thinking" then
          local v = ir.sig_for(p.sig, FMT)
          if v then
            flush()
            local summ = arr()
            if p.text and p.text ~= "" then summ[1] = { type = "summary_text", text = p.text } end
            input[#input + 1] = { type = "reasoning", id = p.item_id, summary = summ, encrypted_content = v }
          end
        elseif p.type == "tool_call" then
          flush()
          if p.custom or customs[p.name or ""] then
            custom_ids[p.id or ""] = true
            input[#input + 1] = { type = "custom_tool_call", call_id = p.id, name = names:name(p.name),
                                  input = custom_input(p.args) }
          else
            input[#input + 1] = { type = "function_call", call_id = p.id, name = names:name(p.name),
                                  arguments = (p.args ~= "" and p.args) or "{}" }
          end
        end
      end
      flush()
    elseif role == "tool" then
      local rest = arr()
      for _, p in ipairs(m.content or {}) do
        if p.type == "tool_result" then
          input[#input + 1] = { type = custom_ids[p.id or ""] and "custom_tool_call_output" or "function_call_output",
                                call_id = p.id, output = ir.result_text(p) }
        else
          local e = encode_user_part(p)
          if e then rest[#rest + 1] = e end
        end
      end
      if #rest > 0 then input[#input + 1] = { type = "message", role = "user", content = rest } end
    else
      local content = arr()
      for _, p in ipairs(m.content or {}) do
        local e = encode_user_part(p)
        if e then content[#content + 1] = e end
      end
      local out_role = (role == "system" or role == "developer") and "developer" or "user"
      input[#input + 1] = { type = "message", role = out_role, content = content }
    end
  end
  b.input = input

  if r.tools and #r.tools > 0 then
    local tools = arr()
    for _, t in ipairs(r.tools) do
      if t.kind == "function" then
        tools[#tools + 1] = { type = "function", name = names:name(t.name), description = t.description,
                              parameters = type(t.schema) == "table" and t.schema
                                or { type = "object", properties = {} },
                              strict = t.strict == true }
      elseif t.kind == "custom" then
        tools[#tools + 1] = { type = "custom", name = names:name(t.name), description = t.description,
                              format = t.format }
      elseif t.kind == "builtin" then
        if t.origin == FMT then tools[#tools + 1] = t.config
        elseif t.type == "web_search" then tools[#tools + 1] = { type = "web_search" } end
      end
    end
    if #tools > 0 then b.tools = tools end
  end
  local tc = r.tool_choice
  if tc and b.tools then
    if tc.mode == "tool" then
      b.tool_choice = { type = customs[tc.name or ""] and "custom" or "function", name = names:name(tc.name) }
    elseif tc.mode then
      b.tool_choice = tc.mode
    end
  end
  if b.tools then b.parallel_tool_calls = not (tc and tc.parallel == false) end
  b.max_output_tokens = r.max_tokens
  b.temperature, b.top_p = r.temperature, r.top_p
  local effort = ir.effort_of(r.reasoning)
  if effort and effort ~= "auto" then
    if effort == "max" then effort = "xhigh" end
    b.reasoning = { effort = effort, summary = (r.reasoning.summary or "auto") }
    if effort ~= "none" then b.include = arr { "reasoning.encrypted_content" } end
  end
  if r.output then
    if r.output.format == "json_schema" then
      b.text = { format = { type = "json_schema", name = r.output.name or "response", schema = r.output.schema,
                            strict = r.output.strict } }
    elseif r.output.format == "json_object" then
      b.text = { format = { type = "json_object" } }
    end
  end
  if r.meta then
    if r.meta.cache_key then b.prompt_cache_key = r.meta.cache_key end
    b.user = r.meta.user
  end
  b.store = false
  if r.stream then b.stream = true end
  return b
end

--------------------------------------------------------------- responses --

local function usage_in(u)
  if type(u) ~= "table" then return nil end
  local o = { input = num(u.input_tokens), output = num(u.output_tokens), total = num(u.total_tokens) }
  if tbl(u.input_tokens_details) then o.cache_read = num(u.input_tokens_details.cached_tokens) end
  if tbl(u.output_tokens_details) then o.reasoning = num(u.output_tokens_details.reasoning_tokens) end
  return o
end

local function usage_out(u)
  u = u or {}
  local o = { input_tokens = u.input or 0, output_tokens = u.output or 0 }
  o.input_tokens_details = { cached_tokens = u.cache_read or 0 }
  o.output_tokens_details = { reasoning_tokens = u.reasoning or 0 }
  o.total_tokens = u.total or (o.input_tokens + o.output_tokens)
  return o
end

local function stop_of(status, details, saw_tool)
  if status == "incomplete" then
    local reason = tbl(details) and s(details.reason)
    if reason == "content_filter" then return "content_filter" end
    return "max_tokens"
  end
  if saw_tool then return "tool_use" end
  return "end_turn"
end

local function orig_name(ctx, name)
  if ctx and ctx.responses_names then return ctx.responses_names:orig(name) end
  return name
end

function _M.decode_response(body, ctx)
  if type(body) ~= "table" then return nil, "response body must be a JSON object" end
  if tbl(body.response) then body = body.response end
  local res = { id = s(body.id), model = s(body.model), content = {}, usage = usage_in(body.usage) or {} }
  local c, saw_tool = res.content, false
  for _, it in ipairs(tbl(body.output) or {}) do
    if type(it) == "table" then
      if it.type == "message" then
        for _, p in ipairs(decode_content(it.content, "assistant")) do c[#c + 1] = p end
      elseif it.type == "reasoning" then
        local texts = {}
        for _, sp in ipairs(tbl(it.summary) or {}) do
          if type(sp) == "table" and s(sp.text) then texts[#texts + 1] = sp.text end
        end
        c[#c + 1] = { type = "thinking", text = concat(texts, "\n\n"),
                      sig = ir.sig_in(s(it.encrypted_content), FMT) }
      elseif it.type == "function_call" then
        saw_tool = true
        c[#c + 1] = { type = "tool_call", id = s(it.call_id), name = orig_name(ctx, s(it.name)),
                      args = s(it.arguments) or "" }
      elseif it.type == "custom_tool_call" then
        saw_tool = true
        c[#c + 1] = { type = "tool_call", id = s(it.call_id), name = orig_name(ctx, s(it.name)),
                      custom = true, args = custom_args(s(it.input)) }
      end
    end
  end
  res.stop = stop_of(body.status, body.incomplete_details, saw_tool)
  return res
end

local function resp_id(id, ctx)
  if type(id) == "string" and id:find("^resp_") then return id end
  return ir.new_id("resp_", ctx)
end

local function base_response(ctx, id, created, status)
  local o = { id = id, object = "response", created_at = created, status = status,
              model = (ctx and ctx.model) or "", output = arr(), error = null, incomplete_details = null }
  local echo = ctx and ctx.responses_echo or {}
  for _, k in ipairs(ECHO) do
    if echo[k] ~= nil then o[k] = echo[k] end
  end
  if o.tools == nil then o.tools = arr() end
  if o.parallel_tool_calls == nil then o.parallel_tool_calls = true end
  if o.tool_choice == nil then o.tool_choice = "auto" end
  return o
end

local function is_custom(ctx, name)
  return ctx and ctx.responses_custom and ctx.responses_custom[name or ""] or false
end

local function item_of(p, ctx)
  if p.type == "thinking" then
    local summ = arr()
    if p.text and p.text ~= "" then summ[1] = { type = "summary_text", text = p.text } end
    return { id = ir.new_id("rs_", ctx), type = "reasoning", summary = summ,
             encrypted_content = p.sig and ir.sig_out(p.sig, FMT) or nil }
  elseif p.type == "tool_call" then
    if p.custom or is_custom(ctx, p.name) then
      return { id = ir.new_id("ctc_", ctx), type = "custom_tool_call", status = "completed",
               call_id = p.id or ir.new_id("call_", ctx), name = p.name, input = custom_input(p.args) }
    end
    return { id = ir.new_id("fc_", ctx), type = "function_call", status = "completed",
             call_id = p.id or ir.new_id("call_", ctx), name = p.name,
             arguments = (p.args ~= "" and p.args) or "{}" }
  end
  return nil
end

local function text_part(text)
  return { type = "output_text", text = text or "", annotations = arr(), logprobs = arr() }
end

function _M.encode_response(res, ctx)
  local o = base_response(ctx, resp_id(res.id, ctx), ir.now(ctx), "completed")
  if not (ctx and ctx.model) then o.model = res.model end
  local msg
  for _, p in ipairs(res.content or {}) do
    if p.type == "text" then
      if not msg then
        msg = { id = ir.new_id("msg_", ctx), type = "message", status = "completed", role = "assistant",
                content = arr() }
        o.output[#o.output + 1] = msg
      end
      msg.content[#msg.content + 1] = text_part(p.text)
    else
      local it = item_of(p, ctx)
      if it then o.output[#o.output + 1] = it; msg = nil end
    end
  end
  if res.stop == "max_tokens" or res.stop == "content_filter" then
    o.status = "incomplete"
    o.incomplete_details = { reason = res.stop == "max_tokens" and "max_output_tokens" or "content_filter" }
  end
  o.usage = usage_out(res.usage)
  return o
end

----------------------------------------------------------------- streams --

local function bkey(oi, ci) return (oi or 0) * 64 + (ci or 0) end

-- stream_decode, step by step: the event's JSON (event_body), the stream's
-- opening (open_stream), then one handler per upstream event type,
-- ON[type](d, oi, st, ctx, out, type), each appending IR events to out. st.items
-- holds the output items still open, by output_index.

local function event_body(ev)
  local data = ev.data
  if data == nil or data == "" or data == "[DONE]" then return nil end
  local d = decode(data)
  if type(d) ~= "table" then return nil end
  return d
end

-- The first event that is not an error starts the IR stream. True when the
-- event says nothing more (response.created).
local function open_stream(t, d, st, out)
  if t == "response.created" or (not st.started and t ~= "error" and t ~= "response.failed") then
    if not st.started then
      st.started = true
      local r = tbl(d.response) or {}
      out[#out + 1] = { t = "start", id = s(r.id), model = s(r.model) }
    end
    return t == "response.created"
  end
  return false
end

-- Closes every open block (the stream's end, or its cut).
local function close_items(items, out)
  for k, item in pairs(items) do
    for i in pairs(item.open or {}) do out[#out + 1] = { t = "block_stop", i = i } end
    items[k] = nil
  end
end

local function open_text(item, i, out)
  if not item.open[i] then
    item.open[i] = true
    out[#out + 1] = { t = "block_start", i = i, kind = "text" }
  end
end

local ON = {}

ON["response.output_item.added"] = function(d, oi, st, ctx, out)
  local it = tbl(d.item) or {}
  local i = bkey(oi)
  if it.type == "reasoning" then
    st.items[oi] = { kind = "reasoning", open = { [i] = true }, any = false }
    out[#out + 1] = { t = "block_start", i = i, kind = "thinking" }
  elseif it.type == "function_call" or it.type == "custom_tool_call" then
    local custom = it.type == "custom_tool_call"
    st.items[oi] = { kind = "tool", custom = custom, open = { [i] = true }, any = false }
    st.saw_tool = true
    out[#out + 1] = { t = "block_start", i = i, kind = "tool_call", id = s(it.call_id),
                      name = orig_name(ctx, s(it.name)) }
    if custom then out[#out + 1] = { t = "delta", i = i, args = '{"input":"' } end
  elseif it.type == "message" then
    st.items[oi] = { kind = "message", open = {}, any = false }
  end
end

ON["response.content_part.added"] = function(d, oi, st, ctx, out)
  local item = st.items[oi]
  if item then open_text(item, bkey(oi, num(d.content_index)), out) end
end

local function text_delta(d, oi, st, ctx, out)
  local item = st.items[oi] or { kind = "message", open = {} }
  st.items[oi] = item
  local i = bkey(oi, num(d.content_index))
  open_text(item, i, out)
  item.any = true
  out[#out + 1] = { t = "delta", i = i, text = s(d.delta) or "" }
end
ON["response.output_text.delta"] = text_delta
ON["response.refusal.delta"] = text_delta

ON["response.content_part.done"] = function(d, oi, st, ctx, out)
  local item = st.items[oi]
  local i = bkey(oi, num(d.content_index))
  if item and item.open[i] then
    local part = tbl(d.part) or {}
    if not item.any and s(part.text) and part.text ~= "" then
      out[#out + 1] = { t = "delta", i = i, text = part.text }
    end
    item.open[i] = nil
    out[#out + 1] = { t = "block_stop", i = i }
  end
end

ON["response.reasoning_summary_part.added"] = function(d, oi, st, ctx, out)
  local item = st.items[oi]
  if item and (num(d.summary_index) or 0) > 0 and item.any then
    out[#out + 1] = { t = "delta", i = bkey(oi), thinking = "\n\n" }
  end
end

-- A delta of an open item: the IR delta's field and its text.
local function item_delta(field, text_of)
  return function(d, oi, st, ctx, out)
    local item = st.items[oi]
    if item then
      item.any = true
      out[#out + 1] = { t = "delta", i = bkey(oi), [field] = text_of(d.delta) }
    end
  end
end
local function plain(v) return s(v) or "" end
-- a custom tool's input streams as the inside of a JSON string
local function json_inside(v) return encode(s(v) or ""):sub(2, -2) end

ON["response.reasoning_summary_text.delta"] = item_delta("thinking", plain)
ON["response.reasoning_text.delta"] = item_delta("thinking", plain)
ON["response.function_call_arguments.delta"] = item_delta("args", plain)
ON["response.custom_tool_call_input.delta"] = item_delta("args", json_inside)

-- response.output_item.done, by the kind of item it closes: what did not
-- stream as deltas comes from the final item.
local ITEM_DONE = {}

function ITEM_DONE.reasoning(item, it, i, out)
  if not item.any then
    local texts = {}
    for _, sp in ipairs(tbl(it.summary) or {}) do
      if type(sp) == "table" and s(sp.text) then texts[#texts + 1] = sp.text end
    end
    if #texts > 0 then out[#out + 1] = { t = "delta", i = i, thinking = concat(texts, "\n\n") } end
  end
  local sig = ir.sig_in(s(it.encrypted_content), FMT)
  if sig then out[#out + 1] = { t = "delta", i = i, sig = sig } end
  out[#out + 1] = { t = "block_stop", i = i }
end

function ITEM_DONE.tool(item, it, i, out)
  if item.custom then
    if not item.any and s(it.input) then
      out[#out + 1] = { t = "delta", i = i, args = encode(it.input):sub(2, -2) }
    end
    out[#out + 1] = { t = "delta", i = i, args = '"}' }
  elseif not item.any and s(it.arguments) and it.arguments ~= "" then
    out[#out + 1] = { t = "delta", i = i, args = it.arguments }
  end
  out[#out + 1] = { t = "block_stop", i = i }
end

function ITEM_DONE.message(item, it, i, out)
  local ci = 0
  for k in pairs(item.open) do
    out[#out + 1] = { t = "block_stop", i = k }
    ci = ci + 1
  end
  if ci == 0 and not item.any then
    -- a message that came whole in .done
    for _, p in ipairs(decode_content(it.content, "assistant")) do
      if p.text and p.text ~= "" then
        out[#out + 1] = { t = "block_start", i = i, kind = "text" }
        out[#out + 1] = { t = "delta", i = i, text = p.text }
        out[#out + 1] = { t = "block_stop", i = i }
      end
    end
  end
end

ON["response.output_item.done"] = function(d, oi, st, ctx, out)
  local item = st.items[oi]
  if not item then return end
  local done = ITEM_DONE[item.kind]
  if done then done(item, tbl(d.item) or {}, bkey(oi), out) end
  st.items[oi] = nil
end

local function finish(d, oi, st, ctx, out, t)
  local r = tbl(d.response) or {}
  close_items(st.items, out)
  st.finished = true
  out[#out + 1] = { t = "finish", stop = stop_of(s(r.status) or (t == "response.incomplete" and "incomplete"),
                                                 r.incomplete_details, st.saw_tool),
                    usage = usage_in(r.usage) }
end
ON["response.completed"] = finish
ON["response.incomplete"] = finish
ON["response.done"] = finish

local function fail(d, oi, st, ctx, out)
  local r = tbl(d.response) or {}
  local e = tbl(r.error) or tbl(d.error) or d
  st.finished = true
  out[#out + 1] = { t = "error", status = 500, type = s(e.type) or "server_error",
                    message = s(e.message) or "upstream error", code = s(e.code) }
end
ON["response.failed"] = fail
ON["error"] = fail

function _M.stream_decode(ev, st, ctx)
  local out = {}
  local d = event_body(ev)
  if not d then return out end
  local t = s(d.type) or ev.event
  st.items = st.items or {}
  if open_stream(t, d, st, out) then return out end
  local on = ON[t]
  if on then on(d, num(d.output_index) or 0, st, ctx, out, t) end
  return out
end

function _M.stream_flush(st, ctx)
  if st.finished then return {} end
  st.finished = true
  local out = {}
  close_items(st.items or {}, out)
  out[#out + 1] = { t = "finish", stop = st.saw_tool and "tool_use" or "end_turn" }
  return out
end

local function emit(st, out, ty, obj)
  obj.type = ty
  obj.sequence_number = st.seq
  st.seq = st.seq + 1
  out[#out + 1] = "event: " .. ty .. "\ndata: " .. encode(obj) .. "\n\n"
end

local function ensure(st, ctx, ev, out)
  if st.seq then return end
  st.seq = 0
  st.id = resp_id(ev and ev.id, ctx)
  st.created = ir.now(ctx)
  st.blocks, st.output, st.nout = {}, arr(), 0
  local r = base_response(ctx, st.id, st.created, "in_progress")
  if not (ctx and ctx.model) then r.model = ev and ev.model or "" end
  st.model = r.model
  emit(st, out, "response.created", { response = r })
  emit(st, out, "response.in_progress", { response = r })
end

local function close_block(st, ctx, i, out)
  local b = st.blocks[i]
  if not b then return end
  st.blocks[i] = nil
  local it = b.item
  if b.kind == "text" then
    local text = concat(b.buf)
    emit(st, out, "response.output_text.done", { item_id = it.id, output_index = b.oi, content_index = 0,
                                                 text = text, logprobs = arr() })
    local part = text_part(text)
    emit(st, out, "response.content_part.done", { item_id = it.id, output_index = b.oi, content_index = 0,
                                                  part = part })
    it.status = "completed"
    it.content = arr { part }
  elseif b.kind == "thinking" then
    local text = concat(b.buf)
    emit(st, out, "response.reasoning_summary_text.done", { item_id = it.id, output_index = b.oi,
                                                            summary_index = 0, text = text })
    emit(st, out, "response.reasoning_summary_part.done", { item_id = it.id, output_index = b.oi,
      summary_index = 0, part = { type = "summary_text", text = text } })
    it.summary = arr { { type = "summary_text", text = text } }
    if b.sig then it.encrypted_content = ir.sig_out(b.sig, FMT) end
  elseif b.kind == "tool_call" then
    local args = concat(b.buf)
    if it.type == "custom_tool_call" then
      it.input = custom_input(args)
      emit(st, out, "response.custom_tool_call_input.delta", { item_id = it.id, output_index = b.oi,
                                                               delta = it.input })
      emit(st, out, "response.custom_tool_call_input.done", { item_id = it.id, output_index = b.oi,
                                                              input = it.input })
    else
      if args == "" then args = "{}" end
      emit(st, out, "response.function_call_arguments.done", { item_id = it.id, output_index = b.oi,
                                                               arguments = args })
      it.arguments = args
    end
    it.status = "completed"
  end
  st.output[b.oi + 1] = it
  emit(st, out, "response.output_item.done", { output_index = b.oi, item = it })
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
    local oi = st.nout
    st.nout = oi + 1
    local b = { kind = ev.kind, oi = oi, buf = {} }
    if ev.kind == "text" then
      b.item = { id = ir.new_id("msg_", ctx), type = "message", status = "in_progress", role = "assistant",
                 content = arr() }
      emit(st, out, "response.output_item.added", { output_index = oi, item = b.item })
      emit(st, out, "response.content_part.added", { item_id = b.item.id, output_index = oi, content_index = 0,
                                                     part = text_part("") })
    elseif ev.kind == "thinking" then
      b.item = { id = ir.new_id("rs_", ctx), type = "reasoning", summary = arr() }
      emit(st, out, "response.output_item.added", { output_index = oi, item = b.item })
      emit(st, out, "response.reasoning_summary_part.added", { item_id = b.item.id, output_index = oi,
        summary_index = 0, part = { type = "summary_text", text = "" } })
    elseif ev.kind == "tool_call" then
      st.saw_tool = true
      if is_custom(ctx, ev.name) then
        b.item = { id = ir.new_id("ctc_", ctx), type = "custom_tool_call", status = "in_progress",
                   call_id = ev.id or ir.new_id("call_", ctx), name = ev.name, input = "" }
      else
        b.item = { id = ir.new_id("fc_", ctx), type = "function_call", status = "in_progress",
                   call_id = ev.id or ir.new_id("call_", ctx), name = ev.name, arguments = "" }
      end
      emit(st, out, "response.output_item.added", { output_index = oi, item = b.item })
    else
      return out
    end
    st.blocks[ev.i] = b
  elseif t == "delta" then
    local b = st.blocks[ev.i]
    if not b then return out end
    local it = b.item
    if ev.text and b.kind == "text" then
      b.buf[#b.buf + 1] = ev.text
      emit(st, out, "response.output_text.delta", { item_id = it.id, output_index = b.oi, content_index = 0,
                                                    delta = ev.text, logprobs = arr() })
    elseif ev.thinking and b.kind == "thinking" then
      b.buf[#b.buf + 1] = ev.thinking
      emit(st, out, "response.reasoning_summary_text.delta", { item_id = it.id, output_index = b.oi,
                                                               summary_index = 0, delta = ev.thinking })
    elseif ev.args and b.kind == "tool_call" then
      b.buf[#b.buf + 1] = ev.args
      if it.type == "function_call" and ev.args ~= "" then
        emit(st, out, "response.function_call_arguments.delta", { item_id = it.id, output_index = b.oi,
                                                                  delta = ev.args })
      end
    elseif ev.sig then
      b.sig = ev.sig
    end
  elseif t == "block_stop" then
    close_block(st, ctx, ev.i, out)
  elseif t == "finish" then
    local open = {}
    for i, b in pairs(st.blocks) do open[#open + 1] = { i = i, oi = b.oi } end
    table.sort(open, function(a, c) return a.oi < c.oi end)
    for _, x in ipairs(open) do close_block(st, ctx, x.i, out) end
    st.usage = ir.merge_usage(st.usage, ev.usage)
    local r = base_response(ctx, st.id, st.created, "completed")
    r.model = st.model
    local output = arr()
    for k = 1, st.nout do if st.output[k] then output[#output + 1] = st.output[k] end end
    r.output = output
    r.usage = usage_out(st.usage)
    local name = "response.completed"
    if ev.stop == "max_tokens" or ev.stop == "content_filter" then
      r.status = "incomplete"
      r.incomplete_details = { reason = ev.stop == "max_tokens" and "max_output_tokens" or "content_filter" }
      name = "response.incomplete"
    end
    emit(st, out, name, { response = r })
    st.done = true
  end
  return out
end

------------------------------------------------------------------ errors --

function _M.decode_error(status, body, ctx)
  local d = type(body) == "string" and decode(body) or body
  local e = type(d) == "table" and (tbl(d.error) or (tbl(d.response) and tbl(d.response.error)))
  if e then
    return { status = status, type = s(e.type), message = s(e.message) or "", code = s(e.code) }
  end
  return { status = status, message = type(body) == "string" and body or "" }
end

local OPENAI_TYPES = {
  invalid_request_error = true, authentication_error = true, permission_error = true,
  rate_limit_error = true, server_error = true, not_found_error = true,
}

function _M.encode_error(err, ctx)
  local ty, code = ir.error_type(err.status)
  if OPENAI_TYPES[err.type] then ty = err.type end
  return { error = json.object({ { "message", err.message or "" }, { "type", ty }, { "param", null },
                                 { "code", (type(err.code) == "string" and err.code) or code or null } }) }
end

function _M.stream_error(err, st, ctx)
  local out = {}
  st = st or {}
  ensure(st, ctx, nil, out)
  local r = base_response(ctx, st.id, st.created, "failed")
  r.model = st.model
  local _, code = ir.error_type(err.status)
  r.error = { code = (type(err.code) == "string" and err.code) or code or "server_error",
              message = err.message or "" }
  emit(st, out, "response.failed", { response = r })
  st.done = true
  return out
end

-- The usage object of this format -> IR usage (rt.record reads answers
-- that pass through untranslated with it).
_M.usage_in = usage_in

return _M
