-- translators.claude: Anthropic Messages <-> IR (docs/ir.md).
local json = require("lib.json")
local ir = require("lib.ir")

local type = type
local ipairs = ipairs
local next = next
local tostring = tostring
local tonumber = tonumber
local remove = table.remove
local encode = json.encode
local decode = json.decode
local arr = json.array
local null = json.null
local raw = json.raw

local FMT = "claude"
local _M = { name = FMT }

-- Subtrees this codec only carries (translators.init compiles them with
-- json.spec): decode_request leaves them as spans, copied as bytes by the
-- encoder. A codec that looks inside one calls json.materialize.
_M.carries = {
  request = { "tools[].input_schema", "messages[].content[].input", "output_config.format.schema",
              "output_format.schema", "context_management" },
}

local s = ir.str
local num = ir.num

---------------------------------------------------------------- requests --

local function decode_source(src, kind)
  if type(src) ~= "table" then return nil end
  local p = { type = kind }
  if src.type == "base64" then
    p.mime, p.data = s(src.media_type), s(src.data)
  elseif src.type == "url" then
    p.url = s(src.url)
  elseif src.type == "file" then
    p.file_id = s(src.file_id)
  elseif src.type == "text" then
    return { type = "text", text = s(src.data) or "" }
  else
    return nil
  end
  return p
end

local function decode_blocks(content)
  local parts = {}
  if type(content) == "string" then
    parts[1] = { type = "text", text = content }
    return parts
  end
  if type(content) ~= "table" then return parts end
  for _, b in ipairs(content) do
    local t = type(b) == "table" and b.type
    if t == "text" then
      parts[#parts + 1] = { type = "text", text = s(b.text) or "", cache = b.cache_control }
    elseif t == "image" then
      parts[#parts + 1] = decode_source(b.source, "image")
    elseif t == "document" then
      local p = decode_source(b.source, "file")
      if p then p.name = s(b.title); parts[#parts + 1] = p end
    elseif t == "tool_use" then
      parts[#parts + 1] = { type = "tool_call", id = s(b.id), name = s(b.name),
                            args = encode(type(b.input) == "table" and b.input or {}) }
    elseif t == "tool_result" then
      local c = decode_blocks(b.content)
      parts[#parts + 1] = { type = "tool_result", id = s(b.tool_use_id), content = c,
                            is_error = b.is_error == true or nil }
    elseif t == "thinking" then
      parts[#parts + 1] = { type = "thinking", text = s(b.thinking) or "",
                            sig = ir.sig_in(b.signature, FMT) }
    elseif t == "redacted_thinking" then
      parts[#parts + 1] = { type = "thinking", text = "", redacted = true, sig = ir.sig_in(b.data, FMT) }
    end
  end
  return parts
end

local function is_billing(text)
  return type(text) == "string" and text:find("^x%-anthropic%-billing%-header:") ~= nil
end

function _M.decode_request(body, ctx)
  if type(body) ~= "table" then return nil, "request body must be a JSON object" end
  local _, lerr = ir.need_list(body, "messages")
  if lerr then return nil, lerr end
  local r = { model = s(body.model), stream = body.stream == true, system = {}, messages = {} }

  if type(body.system) == "string" then
    r.system[1] = { type = "text", text = body.system }
  elseif type(body.system) == "table" then
    for _, b in ipairs(body.system) do
      if type(b) == "table" and b.type == "text" and not is_billing(b.text) then
        r.system[#r.system + 1] = { type = "text", text = s(b.text) or "", cache = b.cache_control }
      end
    end
  end

  for _, m in ipairs(body.messages) do
    if type(m) == "table" then
      local role = m.role
      local parts = decode_blocks(m.content)
      if role == "user" then
        -- tool results become a "tool" message; other blocks stay "user"
        local cur
        for _, p in ipairs(parts) do
          local want = p.type == "tool_result" and "tool" or "user"
          if not cur or cur.role ~= want then
            cur = { role = want, content = {} }
            r.messages[#r.messages + 1] = cur
          end
          cur.content[#cur.content + 1] = p
        end
        if #parts == 0 then r.messages[#r.messages + 1] = { role = "user", content = {} } end
      elseif role == "assistant" or role == "system" then
        r.messages[#r.messages + 1] = { role = role, content = parts }
      end
    end
  end

  if type(body.tools) == "table" then
    r.tools = {}
    for _, t in ipairs(body.tools) do
      if type(t) == "table" then
        if t.type == nil or t.type == "custom" then
          r.tools[#r.tools + 1] = { kind = "function", name = s(t.name), description = s(t.description),
                                    schema = t.input_schema }
        elseif type(t.type) == "string" and t.type:find("^web_search") then
          r.tools[#r.tools + 1] = { kind = "builtin", type = "web_search", config = t, origin = FMT }
        else
          r.tools[#r.tools + 1] = { kind = "builtin", type = t.type, config = t, origin = FMT }
        end
      end
    end
  end
  local tc = body.tool_choice
  if type(tc) == "table" then
    local mode = ({ auto = "auto", any = "required", tool = "tool", none = "none" })[tc.type] or "auto"
    r.tool_choice = { mode = mode, name = s(tc.name) }
    if tc.disable_parallel_tool_use == true then r.tool_choice.parallel = false end
  end

  r.max_tokens = num(body.max_tokens)
  if type(body.stop_sequences) == "table" then
    r.stop = {}
    for _, v in ipairs(body.stop_sequences) do r.stop[#r.stop + 1] = v end
  end
  r.temperature, r.top_p, r.top_k = num(body.temperature), num(body.top_p), num(body.top_k)

  local th = body.thinking
  local oc = type(body.output_config) == "table" and body.output_config or {}
  if type(th) == "table" then
    if th.type == "enabled" then
      r.reasoning = { budget = num(th.budget_tokens), include = true }
    elseif th.type == "disabled" then
      r.reasoning = { effort = "none", budget = 0 }
    elseif th.type == "adaptive" then
      r.reasoning = { effort = s(oc.effort) or "auto", adaptive = true, include = true }
    end
  elseif s(oc.effort) then
    r.reasoning = { effort = oc.effort }
  end
  local of = type(oc.format) == "table" and oc.format or body.output_format
  if type(of) == "table" and of.type == "json_schema" then
    r.output = { format = "json_schema", schema = of.schema, name = s(of.name) }
  end
  if type(body.metadata) == "table" then
    r.meta = { user = s(body.metadata.user_id) }
  end
  return r
end

local function encode_source(p)
  if p.data then
    return { type = "base64", media_type = p.mime or "application/octet-stream", data = p.data }
  end
  if p.url then
    local mime, data = ir.parse_data_url(p.url)
    if mime then return { type = "base64", media_type = mime, data = data } end
    return { type = "url", url = p.url }
  end
  if p.file_id then return { type = "file", file_id = p.file_id } end
  return nil
end

local function encode_text_block(p)
  return { type = "text", text = p.text or "", cache_control = p.cache }
end

local function encode_parts(parts, out, ctx)
  for _, p in ipairs(parts) do
    local t = p.type
    if t == "text" then
      if p.text and p.text ~= "" then out[#out + 1] = encode_text_block(p) end
    elseif t == "image" then
      local src = encode_source(p)
      if src then out[#out + 1] = { type = "image", source = src } end
    elseif t == "file" then
      local src = encode_source(p)
      if src then out[#out + 1] = { type = "document", source = src, title = p.name } end
    elseif t == "thinking" then
      local v = ir.sig_for(p.sig, FMT)
      if v then
        if p.redacted then
          out[#out + 1] = { type = "redacted_thinking", data = v }
        else
          out[#out + 1] = { type = "thinking", thinking = p.text or "", signature = v }
        end
      end
    elseif t == "tool_call" then
      -- the arguments text becomes `input` as it is (validated, not decoded)
      local input = p.args and p.args ~= "" and raw(p.args, "object") or {}
      out[#out + 1] = { type = "tool_use", id = p.id, name = p.name, input = input }
    elseif t == "tool_result" then
      local content
      if type(p.content) == "table" then
        local only_text = true
        for _, c in ipairs(p.content) do if c.type ~= "text" then only_text = false end end
        if only_text then
          content = ir.text_of(p.content, "\n")
        else
          content = arr()
          encode_parts(p.content, content, ctx)
        end
      else
        content = p.content and tostring(p.content) or ""
      end
      out[#out + 1] = { type = "tool_result", tool_use_id = p.id, content = content,
                        is_error = p.is_error or nil }
    end
  end
  return out
end

local function encode_tool(t)
  if t.kind == "function" then
    local sc = t.schema
    if type(sc) ~= "table" then sc = { type = "object", properties = {} } end
    return { name = t.name, description = t.description, input_schema = sc }
  elseif t.kind == "custom" then
    return { name = t.name, description = t.description,
             input_schema = { type = "object", properties = { input = { type = "string" } },
                              required = arr { "input" } } }
  elseif t.kind == "builtin" then
    if t.origin == FMT then return t.config end
    if t.type == "web_search" then return { type = "web_search_20250305", name = "web_search" } end
  end
  return nil
end

function _M.encode_request(r, ctx)
  local b = { model = (ctx and ctx.upstream_model) or r.model }
  local system = arr()
  for _, p in ipairs(r.system or {}) do
    if p.type == "text" then system[#system + 1] = encode_text_block(p) end
  end
  local msgs = arr()
  local last
  for _, m in ipairs(r.messages or {}) do
    if m.role == "system" or m.role == "developer" then
      for _, p in ipairs(m.content or {}) do
        if p.type == "text" then system[#system + 1] = encode_text_block(p) end
      end
    else
      local role = m.role == "assistant" and "assistant" or "user"
      local blocks = encode_parts(m.content or {}, arr(), ctx)
      if #blocks > 0 then
        if last and last.role == role then
          -- tool results must lead a user turn
          if role == "user" and m.role == "tool" then
            local merged = arr()
            for _, x in ipairs(blocks) do merged[#merged + 1] = x end
            for _, x in ipairs(last.content) do merged[#merged + 1] = x end
            local res, other = arr(), arr()
            for _, x in ipairs(merged) do
              if x.type == "tool_result" then res[#res + 1] = x else other[#other + 1] = x end
            end
            for _, x in ipairs(other) do res[#res + 1] = x end
            last.content = res
          else
            for _, x in ipairs(blocks) do last.content[#last.content + 1] = x end
          end
        else
          last = { role = role, content = blocks }
          msgs[#msgs + 1] = last
        end
      end
    end
  end
  if #system > 0 then b.system = system end
  b.messages = msgs

  if r.tools and #r.tools > 0 then
    local tools = arr()
    for _, t in ipairs(r.tools) do
      local e = encode_tool(t)
      if e then tools[#tools + 1] = e end
    end
    if #tools > 0 then b.tools = tools end
  end
  local tc = r.tool_choice
  if tc and b.tools then
    local c
    if tc.mode == "required" then c = { type = "any" }
    elseif tc.mode == "tool" then c = { type = "tool", name = tc.name }
    elseif tc.mode == "none" then c = { type = "none" }
    elseif tc.mode == "auto" or tc.parallel == false then c = { type = "auto" }
    end
    if c and tc.parallel == false and c.type ~= "none" then c.disable_parallel_tool_use = true end
    b.tool_choice = c
  end

  b.max_tokens = r.max_tokens or 32000
  if r.stop and #r.stop > 0 then b.stop_sequences = arr(r.stop) end
  b.temperature, b.top_p, b.top_k = r.temperature, r.top_p, r.top_k

  local re = r.reasoning
  if re then
    local effort = ir.effort_of(re)
    if effort == "none" then
      b.thinking = { type = "disabled" }
    elseif re.adaptive then
      b.thinking = { type = "adaptive" }
      local e = effort
      if e == "minimal" then e = "low" elseif e == "xhigh" then e = "max" elseif e == "auto" then e = nil end
      if e then b.output_config = { effort = e } end
    elseif effort then
      local budget = ir.budget_of(re)
      if budget == nil or budget < 0 then budget = ir.LEVEL_BUDGET.medium end
      if budget < 1024 then budget = 1024 end
      if budget >= b.max_tokens then
        if b.max_tokens > 1024 then budget = b.max_tokens - 1 else budget = nil end
      end
      if budget then
        b.thinking = { type = "enabled", budget_tokens = budget }
        -- Anthropic rejects temperature/top_k with thinking on
        b.temperature, b.top_k = nil, nil
        if b.top_p and b.top_p < 0.95 then b.top_p = nil end
      end
    end
  end
  if r.output and r.output.format == "json_schema" and type(r.output.schema) == "table" then
    b.output_config = b.output_config or {}
    b.output_config.format = { type = "json_schema", schema = r.output.schema }
  end
  if r.meta and r.meta.user then b.metadata = { user_id = r.meta.user } end
  if r.stream then b.stream = true end
  return b
end

--------------------------------------------------------------- responses --

local function usage_in(u, into)
  if type(u) ~= "table" then return into end
  into = into or {}
  local cr, cw = num(u.cache_read_input_tokens), num(u.cache_creation_input_tokens)
  if num(u.input_tokens) then into.input = u.input_tokens + (cr or 0) + (cw or 0) end
  if num(u.output_tokens) then into.output = u.output_tokens end
  if cr then into.cache_read = cr end
  if cw then into.cache_write = cw end
  return into
end

local function usage_out(u, full)
  u = u or {}
  local cr, cw = u.cache_read or 0, u.cache_write or 0
  local o = {
    input_tokens = math.max((u.input or 0) - cr - cw, 0),
    output_tokens = u.output or 0,
  }
  if full or u.cache_read or u.cache_write then
    o.cache_creation_input_tokens = cw
    o.cache_read_input_tokens = cr
  end
  return o
end

function _M.decode_response(body, ctx)
  if type(body) ~= "table" then return nil, "response body must be a JSON object" end
  local res = { id = s(body.id), model = s(body.model), content = decode_blocks(body.content or {}),
                stop = ir.stop_from_claude(body.stop_reason), stop_sequence = s(body.stop_sequence),
                usage = usage_in(body.usage, {}) }
  return res
end

local function msg_id(id, ctx)
  if type(id) == "string" and id:find("^msg_") then return id end
  return ir.new_id("msg_", ctx)
end

local function tool_id(id, ctx)
  if type(id) == "string" and id ~= "" then return id end
  return ir.new_id("toolu_", ctx)
end

function _M.encode_response(res, ctx)
  local content = arr()
  for _, p in ipairs(res.content or {}) do
    if p.type == "text" then
      content[#content + 1] = { type = "text", text = p.text or "" }
    elseif p.type == "thinking" then
      if p.redacted then
        content[#content + 1] = { type = "redacted_thinking", data = ir.sig_out(p.sig, FMT) or "" }
      else
        content[#content + 1] = { type = "thinking", thinking = p.text or "", signature = ir.sig_out(p.sig, FMT) or "" }
      end
    elseif p.type == "tool_call" then
      local input = p.args and p.args ~= "" and raw(p.args, "object") or {}
      content[#content + 1] = { type = "tool_use", id = tool_id(p.id, ctx), name = p.name, input = input }
    elseif p.type == "image" and p.data then
      content[#content + 1] = { type = "image", source = { type = "base64", media_type = p.mime, data = p.data } }
    end
  end
  return {
    id = msg_id(res.id, ctx), type = "message", role = "assistant",
    model = (ctx and ctx.model) or res.model, content = content,
    stop_reason = ir.stop_to_claude(res.stop or "end_turn"),
    stop_sequence = res.stop_sequence or null,
    usage = usage_out(res.usage, true),
  }
end

----------------------------------------------------------------- streams --

function _M.stream_decode(ev, st, ctx)
  local name, data = ev.event, ev.data
  if name == "ping" or data == nil or data == "" then return {} end
  local d = decode(data)
  if type(d) ~= "table" then return {} end
  local t = d.type or name
  local out = {}
  if t == "message_start" then
    local m = type(d.message) == "table" and d.message or {}
    st.usage = usage_in(m.usage, {})
    out[1] = { t = "start", id = s(m.id), model = s(m.model), usage = st.usage }
  elseif t == "content_block_start" then
    local i, b = d.index or 0, type(d.content_block) == "table" and d.content_block or {}
    if b.type == "text" then
      out[1] = { t = "block_start", i = i, kind = "text" }
      if s(b.text) and b.text ~= "" then out[2] = { t = "delta", i = i, text = b.text } end
    elseif b.type == "thinking" then
      out[1] = { t = "block_start", i = i, kind = "thinking" }
      if s(b.thinking) and b.thinking ~= "" then out[2] = { t = "delta", i = i, thinking = b.thinking } end
    elseif b.type == "redacted_thinking" then
      out[1] = { t = "block_start", i = i, kind = "thinking", redacted = true }
      out[2] = { t = "delta", i = i, sig = ir.sig_in(b.data, FMT) }
    elseif b.type == "tool_use" then
      out[1] = { t = "block_start", i = i, kind = "tool_call", id = s(b.id), name = s(b.name) }
      if type(b.input) == "table" and next(b.input) ~= nil then
        out[2] = { t = "delta", i = i, args = encode(b.input) }
      end
    else
      st.skip = st.skip or {}
      st.skip[i] = true
    end
  elseif t == "content_block_delta" then
    local i, dl = d.index or 0, type(d.delta) == "table" and d.delta or {}
    if st.skip and st.skip[i] then return out end
    if dl.type == "text_delta" then out[1] = { t = "delta", i = i, text = s(dl.text) or "" }
    elseif dl.type == "thinking_delta" then out[1] = { t = "delta", i = i, thinking = s(dl.thinking) or "" }
    elseif dl.type == "signature_delta" then out[1] = { t = "delta", i = i, sig = ir.sig_in(dl.signature, FMT) }
    elseif dl.type == "input_json_delta" then out[1] = { t = "delta", i = i, args = s(dl.partial_json) or "" }
    end
  elseif t == "content_block_stop" then
    local i = d.index or 0
    if not (st.skip and st.skip[i]) then out[1] = { t = "block_stop", i = i } end
  elseif t == "message_delta" then
    local dl = type(d.delta) == "table" and d.delta or {}
    st.stop = ir.stop_from_claude(dl.stop_reason) or st.stop
    st.stop_sequence = s(dl.stop_sequence) or st.stop_sequence
    st.usage = usage_in(d.usage, st.usage or {})
  elseif t == "message_stop" then
    st.finished = true
    out[1] = { t = "finish", stop = st.stop or "end_turn", stop_sequence = st.stop_sequence, usage = st.usage }
  elseif t == "error" then
    local e = type(d.error) == "table" and d.error or {}
    st.finished = true
    out[1] = { t = "error", status = (e.type == "overloaded_error") and 529 or 500,
               type = s(e.type) or "api_error", message = s(e.message) or "upstream error" }
  end
  return out
end

-- Upstream ended: a finish if message_stop never came.
function _M.stream_flush(st, ctx)
  if st.finished then return {} end
  st.finished = true
  if st.stop then
    return { { t = "finish", stop = st.stop, stop_sequence = st.stop_sequence, usage = st.usage } }
  end
  return {}
end

local function frame(name, tbl)
  return "event: " .. name .. "\ndata: " .. encode(tbl) .. "\n\n"
end

local function emit_start(st, ctx, ev, out)
  st.started = true
  local u = usage_out(ev and ev.usage, true)
  u.output_tokens = (ev and ev.usage and ev.usage.output) or 1
  -- An upstream that reports no input usage up front (every non-Claude
  -- one): the pipeline's local estimate stands in (ctx.input_estimate).
  if u.input_tokens == 0 and ctx and ctx.input_estimate then
    u.input_tokens = ctx.input_estimate
  end
  out[#out + 1] = frame("message_start", { type = "message_start", message = {
    id = msg_id(ev and ev.id, ctx), type = "message", role = "assistant",
    model = (ctx and ctx.model) or (ev and ev.model) or "", content = arr(),
    stop_reason = null, stop_sequence = null, usage = u } })
end

local handle

local function close_cur(st, out)
  if st.cur == nil then return end
  out[#out + 1] = frame("content_block_stop", { type = "content_block_stop", index = st.idx })
  st.closed[st.cur] = true
  st.cur, st.cur_kind = nil, nil
  st.idx = st.idx + 1
end

local function drain(st, ctx, out)
  local progress = true
  while progress and #st.queue > 0 do
    progress = false
    local q = st.queue
    st.queue = {}
    local before = #q
    for _, e in ipairs(q) do handle(e, st, ctx, out) end
    if #st.queue < before then progress = true end
  end
end

handle = function(ev, st, ctx, out)
  local t = ev.t
  if t == "block_start" then
    if st.cur ~= nil and st.cur ~= ev.i then st.queue[#st.queue + 1] = ev; return end
    if ev.redacted then st.closed[ev.i] = true; return end
    local cb
    if ev.kind == "text" then cb = { type = "text", text = "" }
    elseif ev.kind == "thinking" then cb = { type = "thinking", thinking = "", signature = "" }
    elseif ev.kind == "tool_call" then
      cb = { type = "tool_use", id = tool_id(ev.id, ctx), name = ev.name, input = {} }
    else st.closed[ev.i] = true; return end
    st.cur, st.cur_kind = ev.i, ev.kind
    out[#out + 1] = frame("content_block_start", { type = "content_block_start", index = st.idx,
                                                   content_block = cb })
  elseif t == "delta" then
    if st.closed[ev.i] then return end
    if st.cur ~= ev.i then st.queue[#st.queue + 1] = ev; return end
    local dl
    if ev.text then dl = { type = "text_delta", text = ev.text }
    elseif ev.thinking then dl = { type = "thinking_delta", thinking = ev.thinking }
    elseif ev.args then
      if ev.args == "" then return end
      dl = { type = "input_json_delta", partial_json = ev.args }
    elseif ev.sig then
      if st.cur_kind ~= "thinking" then return end
      dl = { type = "signature_delta", signature = ir.sig_out(ev.sig, FMT) }
    end
    if dl then
      out[#out + 1] = frame("content_block_delta", { type = "content_block_delta", index = st.idx, delta = dl })
    end
  elseif t == "block_stop" then
    if st.closed[ev.i] then return end
    if st.cur ~= ev.i then st.queue[#st.queue + 1] = ev; return end
    close_cur(st, out)
    drain(st, ctx, out)
  end
end

function _M.stream_encode(ev, st, ctx)
  local out = {}
  if st.done then return out end
  if not st.idx then st.idx, st.closed, st.queue = 0, {}, {} end
  local t = ev.t
  if t == "start" then
    if not st.started then emit_start(st, ctx, ev, out) end
    st.usage = ir.merge_usage(st.usage, ev.usage)
    return out
  end
  if t == "error" then return _M.stream_error(ev, st, ctx) end
  if not st.started then emit_start(st, ctx, nil, out) end
  if t == "finish" then
    -- close everything, in order, never dropping a block
    close_cur(st, out)
    while #st.queue > 0 do
      drain(st, ctx, out)
      if #st.queue > 0 then
        if st.cur ~= nil then close_cur(st, out)
        else
          local e = remove(st.queue, 1)
          if e.t == "block_start" then handle(e, st, ctx, out) end
        end
      end
    end
    close_cur(st, out)
    st.usage = ir.merge_usage(st.usage, ev.usage)
    local u = usage_out(st.usage, true)
    out[#out + 1] = frame("message_delta", { type = "message_delta",
      delta = { stop_reason = ir.stop_to_claude(ev.stop or "end_turn"), stop_sequence = ev.stop_sequence or null },
      usage = u })
    out[#out + 1] = frame("message_stop", { type = "message_stop" })
    st.done = true
    return out
  end
  handle(ev, st, ctx, out)
  return out
end

------------------------------------------------------------------ errors --

local CLAUDE_TYPES = {
  invalid_request_error = true, authentication_error = true, permission_error = true,
  not_found_error = true, request_too_large = true, rate_limit_error = true,
  api_error = true, overloaded_error = true,
}

local function claude_type(err)
  if CLAUDE_TYPES[err.type] then return err.type end
  local st = tonumber(err.status) or 500
  if st == 401 then return "authentication_error" end
  if st == 403 then return "permission_error" end
  if st == 404 then return "not_found_error" end
  if st == 413 then return "request_too_large" end
  if st == 429 then return "rate_limit_error" end
  if st == 529 or st == 503 then return "overloaded_error" end
  if st >= 500 then return "api_error" end
  return "invalid_request_error"
end

function _M.decode_error(status, body, ctx)
  local d = type(body) == "string" and decode(body) or body
  local e = type(d) == "table" and type(d.error) == "table" and d.error or nil
  if e then
    return { status = status, type = s(e.type), message = s(e.message) or "", code = s(e.code) }
  end
  return { status = status, type = (ir.error_type(status)), message = type(body) == "string" and body or "" }
end

function _M.encode_error(err, ctx)
  -- Anthropic's order (and cpx_errbody.c's): type first.
  return json.object({ { "type", "error" },
                       { "error", json.object({ { "type", claude_type(err) }, { "message", err.message or "" } }) } })
end

function _M.stream_error(err, st, ctx)
  if st then st.done = true end
  return { frame("error", _M.encode_error(err, ctx)) }
end

-- The usage object of this format -> IR usage (rt.record reads answers
-- that pass through untranslated with it).
_M.usage_in = usage_in

return _M
