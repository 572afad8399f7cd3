-- Every client format x every upstream format for requests and non-stream
-- responses ({text, tool call, tool result round trip, thinking, image input,
-- system prompt}), same-format round trips, and errors.
package.path = "./lua/?/init.lua;" .. package.path
local tr = require("translators")
local json = require("lib.json")
local ir = require("lib.ir")

local fixture = require("fixture")
local function load(name) return fixture.json("translators/" .. name) end

local function new_ctx(extra)
  local n = 0
  local ctx = { model = "client-model", upstream_model = "up-model", now = 1700000000,
                id_gen = function(p) n = n + 1; return p .. "id" .. n end }
  for k, v in pairs(extra or {}) do ctx[k] = v end
  return ctx
end

-- facts of an IR request, comparable across formats
local function facts(r)
  local f = { system = {}, user = {}, images = 0, calls = {}, results = {}, tools = {}, thinking = {} }
  for _, p in ipairs(r.system) do f.system[#f.system + 1] = p.text end
  for _, m in ipairs(r.messages) do
    for _, p in ipairs(m.content) do
      if p.type == "text" and (m.role == "system" or m.role == "developer") then
        f.system[#f.system + 1] = p.text
      elseif p.type == "text" and m.role == "user" then f.user[#f.user + 1] = p.text
      elseif p.type == "image" then
        f.images = f.images + 1
        f.image = p.data or select(2, ir.parse_data_url(p.url))
      elseif p.type == "tool_call" then
        f.calls[#f.calls + 1] = { id = p.id, name = p.name, args = json.decode(p.args) }
      elseif p.type == "tool_result" then
        f.results[#f.results + 1] = { id = p.id, text = ir.result_text(p) }
      elseif p.type == "thinking" then
        f.thinking[#f.thinking + 1] = p
      end
    end
  end
  for _, t in ipairs(r.tools or {}) do
    if t.kind == "function" or t.kind == "custom" then f.tools[#f.tools + 1] = t.name end
  end
  return f
end

describe("request matrix", function()
  for _, client in ipairs(tr.formats) do
    for _, up in ipairs(tr.formats) do
      it(client .. " -> " .. up, function()
        local body = load("requests/" .. client .. ".json")
        local ctx = new_ctx({ stream = client == "gemini" or nil })
        local out, err = tr.request(client, up, body, ctx)
        assert.is_nil(err)
        assert.truthy(out)
        -- the upstream body is valid JSON of its format: decode it back
        local enc = json.encode(out)
        local back = assert(tr.codecs[up].decode_request(json.decode(enc), new_ctx()))
        local a, b = facts(ctx.ir), facts(back)
        -- system prompt
        assert.truthy(table.concat(b.system, "\n"):find("You are a helpful agent.", 1, true))
        assert.equal(#table.concat(a.system), #table.concat(b.system, ""))
        -- text turns
        assert.same(a.user, b.user)
        -- image input
        assert.equal(1, b.images)
        assert.equal("iVBORw0KGgo=", b.image)
        -- tool declarations
        assert.same(a.tools, b.tools)
        -- tool call + result, ids consistent
        assert.equal(#a.calls, #b.calls)
        for k, c in ipairs(a.calls) do
          assert.equal(c.name, b.calls[k].name)
          assert.same(c.args, b.calls[k].args)
          assert.equal("hello from the file", b.results[1].text)
        end
        assert.equal(b.calls[1].id, b.results[1].id)
        -- thinking config
        assert.truthy(back.reasoning)
        assert.truthy(ir.effort_of(back.reasoning))
        -- signatures only go back to their own format
        for _, t in ipairs(b.thinking) do
          assert.equal(up, t.sig and t.sig.format or up)
        end
        if client == up then
          assert.equal(#a.thinking, #b.thinking)
        end
        if up == "gemini" then
          assert.is_nil(out.model)
          local fc = out.contents[2].parts
          for _, p in ipairs(fc) do
            if p.functionCall then assert.truthy(p.thoughtSignature) end
          end
        else
          assert.equal("up-model", out.model)
        end
        assert.is_nil(out.stream_options and up ~= "openai_chat" or nil)
      end)
    end
  end

  it("moves a Claude mid-conversation system message into the target's system", function()
    local body = load("requests/claude.json")
    local oc = tr.request("claude", "openai_chat", body, new_ctx())
    assert.equal("system", oc.messages[1].role)
    local found
    for _, m in ipairs(oc.messages) do
      if m.role == "system" and m.content == "Mid-conversation system note." then found = true end
    end
    assert.truthy(found)
    local g = tr.request("claude", "gemini", body, new_ctx())
    assert.equal("Mid-conversation system note.", g.systemInstruction.parts[2].text)
    -- the billing header never leaves
    assert.falsy(json.encode(g):find("billing", 1, true))
  end)

  it("applies model suffixes over the body", function()
    local body = load("requests/openai_chat.json")
    body.max_completion_tokens = 32000
    local ctx = new_ctx({ upstream_model = "claude-x(16384)" })
    local out = tr.request("openai_chat", "claude", body, ctx)
    assert.equal("claude-x", out.model)
    assert.same({ type = "enabled", budget_tokens = 16384 }, out.thinking)
    ctx = new_ctx({ upstream_model = "gemini-2.5-pro(high)" })
    out = tr.request("claude", "gemini", load("requests/claude.json"), ctx)
    assert.equal("gemini-2.5-pro", ctx.upstream_model)
    assert.equal(24576, out.generationConfig.thinkingConfig.thinkingBudget)
    ctx = new_ctx({ upstream_model = "gemini-3-pro-preview(low)" })
    out = tr.request("claude", "gemini", load("requests/claude.json"), ctx)
    assert.equal("low", out.generationConfig.thinkingConfig.thinkingLevel)
    ctx = new_ctx({ upstream_model = "gpt-5(none)" })
    out = tr.request("claude", "openai_responses", load("requests/claude.json"), ctx)
    assert.equal("none", out.reasoning.effort)
  end)

  it("maps Claude adaptive thinking and output_config.effort", function()
    local body = load("requests/claude.json")
    body.thinking = { type = "adaptive" }
    body.output_config = { effort = "high" }
    local out = tr.request("claude", "openai_responses", body, new_ctx())
    assert.equal("high", out.reasoning.effort)
    out = tr.request("claude", "openai_chat", body, new_ctx())
    assert.equal("high", out.reasoning_effort)
  end)

  it("carries sampling, stops, max tokens, n, response formats and users", function()
    local body = load("requests/openai_chat.json")
    local g = tr.request("openai_chat", "gemini", body, new_ctx())
    local gc = g.generationConfig
    assert.equal(4096, gc.maxOutputTokens)
    assert.equal(0.5, gc.temperature)
    assert.equal(0.9, gc.topP)
    assert.equal(1, gc.candidateCount)
    assert.same({ "STOP" }, gc.stopSequences)
    assert.equal("application/json", gc.responseMimeType)
    assert.same(body.response_format.json_schema.schema, gc.responseJsonSchema)
    local c = tr.request("openai_chat", "claude", body, new_ctx())
    assert.same({ "STOP" }, c.stop_sequences)
    assert.same({ user_id = "user-1" }, c.metadata)
    assert.same({ type = "auto", disable_parallel_tool_use = true }, c.tool_choice)
    local r = tr.request("openai_chat", "openai_responses", body, new_ctx())
    assert.equal("json_schema", r.text.format.type)
    assert.is_false(r.parallel_tool_calls)
    local back = tr.request("gemini", "openai_chat", load("requests/gemini.json"), new_ctx())
    assert.equal(64, back.top_k == nil and 64 or back.top_k)
    assert.equal(1, back.n)
  end)

  it("cleans schemas and keeps names for Gemini; restores names in responses", function()
    local body = load("requests/claude.json")
    body.tools[1].name = "mcp__srv__Read file"
    body.messages[3].content[3].name = "mcp__srv__Read file"
    local ctx = new_ctx()
    local g = tr.request("claude", "gemini", body, ctx)
    local d = g.tools[1].functionDeclarations[1]
    assert.equal("mcp__srv__Read_file", d.name)
    assert.is_nil(d.parametersJsonSchema["$schema"])
    assert.is_nil(d.parametersJsonSchema.additionalProperties)
    assert.equal("integer", d.parametersJsonSchema.properties.limit.type)
    local called
    for _, p in ipairs(g.contents[2].parts) do if p.functionCall then called = p.functionCall.name end end
    assert.equal("mcp__srv__Read_file", called)
    local res = tr.response("claude", "gemini", { candidates = { { content = { role = "model", parts = {
      { functionCall = { name = "mcp__srv__Read_file", args = { file_path = "x" } } } } }, finishReason = "STOP" } } },
      ctx)
    assert.equal("mcp__srv__Read file", res.content[1].name)
    assert.equal("toolu_", res.content[1].id:sub(1, 6))
    assert.equal("tool_use", res.stop_reason)
  end)

  it("passes Codex custom and built-in tools where the target has them", function()
    local body = load("requests/openai_responses.json")
    local c = tr.request("openai_responses", "claude", body, new_ctx())
    local names = {}
    for _, t in ipairs(c.tools) do names[#names + 1] = t.name or t.type end
    assert.same({ "Read", "apply_patch", "web_search" }, names)
    assert.equal("web_search_20250305", c.tools[3].type)
    local g = tr.request("openai_responses", "gemini", body, new_ctx())
    assert.same({}, g.tools[2].googleSearch)
    -- the custom call goes out as a function call with {input}
    local found
    for _, m in ipairs(c.messages) do
      for _, b in ipairs(m.content) do
        if b.type == "tool_use" and b.name == "apply_patch" then
          -- the arguments text is carried as a span, not decoded
          assert.is_true(json.is_span(b.input))
          found = json.materialize(b.input).input
        end
      end
    end
    assert.equal("*** Begin Patch\n*** End Patch", found)
    -- and back, a non-stream Claude answer calling apply_patch is a custom_tool_call
    local ctx = new_ctx()
    tr.request("openai_responses", "claude", body, ctx)
    local res = tr.response("openai_responses", "claude", {
      id = "msg_1", type = "message", role = "assistant", content = {
        { type = "tool_use", id = "toolu_9", name = "apply_patch", input = { input = "PATCH" } } },
      stop_reason = "tool_use", usage = { input_tokens = 1, output_tokens = 1 } }, ctx)
    assert.equal("custom_tool_call", res.output[1].type)
    assert.equal("PATCH", res.output[1].input)
    assert.equal("toolu_9", res.output[1].call_id)
    -- echoes request fields
    assert.equal("You are a helpful agent.", res.instructions)
    assert.equal("cache-1", res.prompt_cache_key)
    assert.same({ verbosity = "low" }, res.text)
  end)
end)

describe("same-format round trips", function()
  for _, fmt in ipairs(tr.formats) do
    it(fmt, function()
      local codec = tr.codecs[fmt]
      local r1 = assert(codec.decode_request(load("requests/" .. fmt .. ".json"), new_ctx()))
      local body = codec.encode_request(r1, new_ctx())
      local r2 = assert(codec.decode_request(json.decode(json.encode(body)), new_ctx()))
      local a, b = facts(r1), facts(r2)
      assert.same(a.system, b.system)
      assert.same(a.user, b.user)
      assert.same(a.calls, b.calls)
      assert.same(a.results, b.results)
      assert.same(a.tools, b.tools)
      assert.equal(#a.thinking, #b.thinking)
      for k, t in ipairs(a.thinking) do
        assert.same(t.sig, b.thinking[k].sig)
        assert.equal(t.text, b.thinking[k].text)
      end
      assert.same(r1.stop, r2.stop)
      assert.equal(r1.max_tokens, r2.max_tokens)
      if fmt ~= "claude" then -- Anthropic rejects temperature with thinking on: dropped
        assert.equal(r1.temperature, r2.temperature)
      end
      assert.equal(r1.top_p, r2.top_p)
      assert.equal(r1.top_k, r2.top_k)
      assert.equal(r1.n, r2.n)
      assert.same(r1.output, r2.output)
      assert.same(r1.tool_choice, r2.tool_choice)
      assert.equal(ir.effort_of(r1.reasoning), ir.effort_of(r2.reasoning))
      assert.same(r1.meta and r1.meta.user, r2.meta and r2.meta.user)
    end)
  end
end)

describe("response matrix", function()
  for _, client in ipairs(tr.formats) do
    for _, up in ipairs(tr.formats) do
      it(up .. " response -> " .. client .. " client", function()
        local ctx = new_ctx()
        local out = assert(tr.response(client, up, load("responses/" .. up .. ".json"), ctx))
        local res = assert(tr.codecs[client].decode_response(json.decode(json.encode(out)), new_ctx()))
        local text, think, calls = {}, {}, {}
        for _, p in ipairs(res.content) do
          if p.type == "text" then text[#text + 1] = p.text end
          if p.type == "thinking" then think[#think + 1] = p.text end
          if p.type == "tool_call" then calls[#calls + 1] = p end
        end
        assert.equal("Reading it now.", table.concat(text))
        assert.equal("Need the file.", table.concat(think))
        assert.equal(1, #calls)
        assert.equal("Read", calls[1].name)
        assert.same({ file_path = "hello.txt" }, json.decode(calls[1].args))
        assert.truthy(calls[1].id)
        assert.equal("tool_use", res.stop)
        assert.equal(150, res.usage.input)
        assert.equal(50, res.usage.output)
        assert.equal(30, res.usage.cache_read)
        -- the client sees its own model name
        local m = out.model or out.modelVersion or (out.response and out.response.model)
        assert.equal("client-model", m)
      end)
    end
  end
end)

describe("errors", function()
  local bodies = {
    claude = '{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
    openai_chat = '{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}',
    openai_responses = '{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}',
    gemini = '{"error":{"code":429,"message":"slow down","status":"RESOURCE_EXHAUSTED"}}',
  }
  for _, client in ipairs(tr.formats) do
    for _, up in ipairs(tr.formats) do
      it(up .. " error -> " .. client, function()
        local body, status = tr.error(client, up, 429, bodies[up], new_ctx())
        assert.equal(429, status)
        if client == "claude" then
          assert.same({ type = "error", error = { type = "rate_limit_error", message = "slow down" } }, body)
        elseif client == "gemini" then
          assert.same({ error = { code = 429, message = "slow down", status = "RESOURCE_EXHAUSTED" } }, body)
        else
          assert.equal("slow down", body.error.message)
          assert.equal("rate_limit_error", body.error.type)
          assert.equal("rate_limit_exceeded", body.error.code)
        end
      end)
    end
  end

  it("wraps non-JSON upstream errors and cliproxy's own", function()
    local body, status = tr.error("openai_chat", "claude", 502, "<html>bad gateway</html>", new_ctx())
    assert.equal(502, status)
    assert.equal("<html>bad gateway</html>", body.error.message)
    assert.equal("server_error", body.error.type)
    local b = tr.error_body("claude", { status = 401, message = "bad key" })
    assert.same({ type = "error", error = { type = "authentication_error", message = "bad key" } }, b)
    b = tr.error_body("openai_responses", { status = 404, message = "unknown model" })
    assert.equal("model_not_found", b.error.code)
    b = tr.error_body("gemini", { status = 400, message = "bad json" })
    assert.equal("INVALID_ARGUMENT", b.error.status)
  end)
end)

describe("pair overrides", function()
  it("a translators.pairs module replaces the hub for its pair", function()
    package.loaded["translators.pairs.gemini-to-claude"] = {
      request = function(body) return { overridden = body.x } end,
    }
    -- the cache is per VM; a fresh hub instance sees the override
    package.loaded["translators"] = nil
    local hub = require("translators")
    assert.same({ overridden = 1 }, hub.request("gemini", "claude", { x = 1 }, {}))
    assert.truthy(hub.response("gemini", "claude", load("responses/claude.json"), new_ctx()).candidates)
    package.loaded["translators.pairs.gemini-to-claude"] = nil
    package.loaded["translators"] = nil
  end)
end)
