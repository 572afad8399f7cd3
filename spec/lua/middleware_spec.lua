-- rt.middleware: loading and validation (errors name file and field),
-- priority order, the semantics of every phase, per-request state, and
-- the built-in modules in lua/middleware/.
local cpx = require("cpx")

local logged = {}
cpx.log = cpx.log or function(level, ...)
  logged[#logged + 1] = level .. " " .. table.concat({ ... }, " ")
end
package.path = (os.getenv("CPX_ROOT") or ".") .. "/spec/fixtures/middleware/?.lua;" .. package.path

local mw = require("rt.middleware")
local json = require("lib.json")

local arr = json.array

local function cfg(list)
  return { _file = "config.yaml", lua = { middleware = arr(list) } }
end

local function load(list, lines)
  return mw.load(cfg(list), lines)
end

local function loaded(list)
  local chain, err = load(list)
  assert(chain, err)
  return chain
end

local function info(headers)
  return { id = "rid-1", method = "POST", path = "/v1/chat/completions", headers = headers or {} }
end

describe("rt.middleware load", function()
  it("accepts an empty chain", function()
    local chain = assert(mw.load({ lua = { middleware = arr() } }))
    assert.is_false(mw.wants_chunks(chain))
    assert.is_true(mw.run(chain, "access", { info = info() }))
    assert.same({ { t = "delta" } }, mw.run(chain, "on_chunk", {}, { t = "delta" }))
  end)

  it("loads every built-in with valid settings and fills defaults", function()
    local chain = loaded({
      { name = "request_id" },
      { name = "model_alias", aliases = { a = "b" } },
      { name = "route_by_header", header = "X-Account", routes = { x = "x/{model}" } },
      { name = "system_prompt", text = "Be brief." },
      { name = "body_patch", set = { temperature = 0.2 } },
      { name = "headers", set = { ["X-A"] = "1" } },
      { name = "redact", patterns = arr({ "%d%d%d%d" }) },
    })
    assert.equal(7, #chain.list)
    local by = {}
    for _, e in ipairs(chain.list) do by[e.name] = e.conf end
    assert.equal("X-Request-Id", by.request_id.header)
    assert.equal("prepend", by.system_prompt.mode)
    assert.equal("upstream", by.body_patch.phase)
    assert.same({}, by.headers.remove)
    assert.equal("[REDACTED]", by.redact.replacement)
    assert.is_true(mw.wants_chunks(chain))
  end)

  local shapes = {
    bad_not_table = "middleware/bad_not_table.lua: module must return a table, got string",
    bad_priority = "middleware/bad_priority.lua: field 'priority' must be a number",
    bad_name = "middleware/bad_name.lua: field 'name' must be 'bad_name' (the file name), got 'other_name'",
    bad_hooks = "middleware/bad_hooks.lua: field 'hooks.acess' is not a hook "
      .. "(access, rewrite, before_upstream, on_headers, on_chunk, after, log)",
    bad_hook_fn = "middleware/bad_hook_fn.lua: field 'hooks.rewrite' must be a function",
    bad_toplevel_hook = "middleware/bad_toplevel_hook.lua: field 'access' must be inside 'hooks'",
    bad_schema_type = "middleware/bad_schema_type.lua: field 'schema.header.type' must be one of "
      .. "string, number, integer, boolean, list, map, record, any",
    bad_schema_list = "middleware/bad_schema_list.lua: field 'schema.names.items' is required for a list",
    bad_no_schema = "middleware/bad_no_schema.lua: field 'schema' must be a table (use {} for no settings)",
  }
  for name, msg in pairs(shapes) do
    it("rejects a module with a wrong shape: " .. name, function()
      local chain, err = load({ { name = name } })
      assert.is_nil(chain)
      assert.equal(msg, err)
    end)
  end

  it("names config file, line and key for a settings error", function()
    local lines = { ["lua"] = 3, ["lua.middleware"] = 4, ["lua.middleware.1"] = 5,
                    ["lua.middleware.1.name"] = 5, ["lua.middleware.1.header"] = 6 }
    local chain, err = load({ { name = "route_by_header", header = 5, routes = {} } }, lines)
    assert.is_nil(chain)
    assert.equal("config.yaml:6: lua.middleware.1.header: expected a string, got number 5", err)
    -- missing field: the entry's own line
    lines["lua.middleware.1.header"] = nil
    chain, err = load({ { name = "route_by_header", routes = {} } }, lines)
    assert.is_nil(chain)
    assert.equal("config.yaml:5: lua.middleware.1.header: is required", err)
  end)

  it("rejects unknown settings, names and entry shapes", function()
    local _, err = load({ { name = "request_id", hedaer = "X" } })
    assert.equal("config.yaml: lua.middleware.1.hedaer: unknown setting for middleware 'request_id' "
      .. "(settings: header, trust, upstream-header)", err)
    _, err = load({ { name = "nope" } })
    assert.equal("config.yaml: lua.middleware.1.name: no middleware 'nope' "
      .. "(looked for middleware/nope.lua in lua.paths and lua/)", err)
    _, err = load({ "request_id" })
    assert.equal("config.yaml: lua.middleware.1: expected a mapping with a 'name', got string \"request_id\"", err)
    _, err = load({ { name = "../x" } })
    assert.matches("not a module name", err)
    _, err = load({ { name = "request_id", priority = "first" } })
    assert.equal("config.yaml: lua.middleware.1.priority: expected a number, got string \"first\"", err)
    _, err = load({ { name = "system_prompt", text = "x", mode = "before" } })
    assert.equal("config.yaml: lua.middleware.1.mode: expected one of prepend, append, replace, "
      .. "got \"before\"", err)
    _, err = load({ { name = "body_patch", set = { ["a..b"] = 1 } } })
    assert.equal("config.yaml: lua.middleware.1.set: malformed JSON path 'a..b'", err)
    _, err = load({ { name = "redact", patterns = arr({ "[a" }) } })
    assert.matches("lua.middleware.1.patterns.1: bad Lua pattern", err)
  end)
end)

describe("rt.middleware run", function()
  it("runs every phase in descending priority, ties in config order, entry priority overrides", function()
    local chain = loaded({ { name = "recorder_c" }, { name = "recorder_b" }, { name = "recorder_a" } })
    local ctx = { info = info() }
    mw.run(chain, "access", ctx)
    local pctx = { info = ctx.info }
    mw.run(chain, "rewrite", pctx, {})
    assert.same({ "recorder_a:access", "recorder_c:access", "recorder_b:access",
                  "recorder_a:rewrite", "recorder_c:rewrite", "recorder_b:rewrite" }, pctx.shared.trace)

    chain = loaded({ { name = "recorder_a" }, { name = "recorder_b", priority = 1000 } })
    ctx = { info = info() }
    mw.run(chain, "before_upstream", ctx, { headers = {} })
    assert.same({ "recorder_b:before_upstream", "recorder_a:before_upstream" }, ctx.shared.trace)
  end)

  it("keeps ctx.plugin per entry and ctx.shared per request across phases", function()
    local chain = loaded({ { name = "recorder_a" }, { name = "recorder_b" } })
    local i = info()
    mw.run(chain, "access", { info = i })
    local ctx = { info = i }
    mw.run(chain, "rewrite", ctx, {})
    mw.run(chain, "on_headers", ctx, 200, {})
    assert.equal(3, ctx.plugin.count) -- recorder_b's own table, the last one called
    assert.equal(6, #ctx.shared.trace)
    local other = { info = info() }
    mw.run(chain, "rewrite", other, {})
    assert.same({ "recorder_a:rewrite", "recorder_b:rewrite" }, other.shared.trace)
  end)

  it("access: the first status stops the chain; the rejection is returned", function()
    local chain = loaded({ { name = "route_by_header", header = "X-Account", routes = { a = "a/{model}" },
                             ["reject-unknown"] = true },
                           { name = "recorder_a", priority = 10 } })
    local ctx = { info = info({ ["x-account"] = "zzz" }) }
    local ok, status, msg = mw.run(chain, "access", ctx)
    assert.is_false(ok)
    assert.equal(400, status)
    assert.equal("unknown X-Account value 'zzz'", msg)
    assert.is_nil(ctx.shared.trace)
    assert.is_true(mw.run(chain, "access", { info = info({ ["x-account"] = "a" }) }))
  end)

  it("on_chunk: nil keeps, false drops, an event replaces, a list expands; hooks chain", function()
    local m1 = { name = "c1", priority = 2, schema = {}, hooks = { on_chunk = function(_, _, ev)
      if ev.text == "drop" then return false end
      if ev.text == "two" then return { { t = "delta", text = "2a" }, { t = "delta", text = "2b" } } end
      if ev.text == "swap" then return { t = "delta", text = "swapped" } end
      ev.seen = true
    end } }
    local m2 = { name = "c2", priority = 1, schema = {}, hooks = { on_chunk = function(_, _, ev)
      ev.text = ev.text and ev.text:upper()
    end } }
    package.loaded["middleware.c1"], package.loaded["middleware.c2"] = m1, m2
    local chain = loaded({ { name = "c2" }, { name = "c1" } })
    local ctx = { info = info() }
    assert.same({}, mw.run(chain, "on_chunk", ctx, { t = "delta", text = "drop" }))
    assert.same({ { t = "delta", text = "2A" }, { t = "delta", text = "2B" } },
      mw.run(chain, "on_chunk", ctx, { t = "delta", text = "two" }))
    assert.same({ { t = "delta", text = "SWAPPED" } },
      mw.run(chain, "on_chunk", ctx, { t = "delta", text = "swap" }))
    assert.same({ { t = "delta", text = "X", seen = true } },
      mw.run(chain, "on_chunk", ctx, { t = "delta", text = "x" }))
  end)

  it("only access, rewrite and before_upstream may yield", function()
    local chain = loaded({ { name = "yields_late" } })
    local ctx = { info = info() }
    local co = coroutine.create(function() return mw.run(chain, "rewrite", ctx, {}) end)
    local ok, v = coroutine.resume(co)
    assert.is_true(ok)
    assert.equal("rewrite may yield", v)
    assert.equal("suspended", coroutine.status(co))
    local err
    ok, err = pcall(mw.run, chain, "on_headers", ctx, 200, {})
    assert.is_false(ok)
    assert.equal("middleware 'yields_late': hook 'on_headers' may not yield "
      .. "(only access, rewrite and before_upstream may)", err)
    ok, err = pcall(mw.run, chain, "after", ctx, { status = 200 })
    assert.is_false(ok)
    assert.matches("yields_late.lua:%d+: after failed on purpose", err)
  end)

  it("log runs once per request, after a stream when deferred, and never raises", function()
    local calls = 0
    package.loaded["middleware.counter"] = { name = "counter", priority = 1, schema = {}, hooks = {
      log = function(_, ctx, res) calls = calls + 1; ctx.shared.res = res end } }
    local chain = loaded({ { name = "counter" }, { name = "yields_late" } })
    local i = info()
    local ctx = { info = i }
    mw.run(loaded({ { name = "counter" } }), "after", ctx, { status = 200, usage = { input = 1 } })
    mw.done(chain, i)
    mw.done(chain, i)
    assert.equal(1, calls)
    assert.equal(200, ctx.shared.res.status)
    assert.matches("middleware 'yields_late' log hook failed: .*log failed on purpose", logged[#logged])
    -- a stream defers the log phase to its end
    i = info()
    ctx = { info = i }
    mw.defer_log(ctx)
    mw.done(chain, i)
    assert.equal(1, calls)
    mw.run(chain, "log", ctx, { status = 200 })
    assert.equal(2, calls)
    -- an access rejection is logged with its status
    package.loaded["middleware.deny"] = { name = "deny", priority = 5, schema = {}, hooks = {
      access = function() return 403, "no" end } }
    chain = loaded({ { name = "counter" }, { name = "deny" } })
    i = info()
    mw.run(chain, "access", { info = i })
    mw.done(chain, i)
    assert.equal(3, calls)
  end)

  it("access must return nothing or an error status", function()
    package.loaded["middleware.badret"] = { name = "badret", priority = 5, schema = {}, hooks = {
      access = function() return true end } }
    local chain = loaded({ { name = "badret" } })
    local ok, err = pcall(mw.run, chain, "access", { info = info() })
    assert.is_false(ok)
    assert.matches("access must return nothing or a 4xx/5xx status", err)
  end)
end)

describe("built-in middleware", function()
  local function rewrite(list, ctx, body)
    local chain = loaded(list)
    ctx.info = ctx.info or info()
    mw.run(chain, "rewrite", ctx, body)
    return ctx, body
  end

  it("model_alias renames the model and keeps a thinking suffix", function()
    local list = { { name = "model_alias", aliases = { fast = "gpt-4o-mini", smart = "claude-sonnet-4" } } }
    assert.equal("gpt-4o-mini", rewrite(list, { model = "fast" }, {}).model)
    assert.equal("claude-sonnet-4(high)", rewrite(list, { model = "smart(high)" }, {}).model)
    assert.equal("other", rewrite(list, { model = "other" }, {}).model)
  end)

  it("route_by_header picks the model from a header", function()
    local list = { { name = "route_by_header", header = "X-Account", routes = { b = "team-b/{model}", m = "mini" } } }
    assert.equal("team-b/gpt", rewrite(list, { model = "gpt", info = info({ ["x-account"] = "b" }) }, {}).model)
    assert.equal("mini", rewrite(list, { model = "gpt", info = info({ ["x-account"] = "m" }) }, {}).model)
    assert.equal("gpt", rewrite(list, { model = "gpt", info = info({ ["x-account"] = "q" }) }, {}).model)
    assert.equal("gpt", rewrite(list, { model = "gpt" }, {}).model)
  end)

  describe("system_prompt", function()
    local function sp(mode, fmt, body)
      local _, b = rewrite({ { name = "system_prompt", text = "SYS", mode = mode } }, { client_format = fmt }, body)
      return b
    end
    it("Chat: a system message first, after leading ones, or instead of them", function()
      local msgs = function()
        return { messages = arr({ { role = "system", content = "old" }, { role = "user", content = "hi" } }) }
      end
      assert.same({ "SYS", "old", "hi" }, (function(b)
        return { b.messages[1].content, b.messages[2].content, b.messages[3].content }
      end)(sp("prepend", "openai_chat", msgs())))
      local b = sp("append", "openai_chat", msgs())
      assert.equal("old", b.messages[1].content)
      assert.equal("SYS", b.messages[2].content)
      b = sp("replace", "openai_chat", msgs())
      assert.equal(2, #b.messages)
      assert.equal("SYS", b.messages[1].content)
      assert.equal(json.array_mt, getmetatable(b.messages))
    end)
    it("Responses instructions, Claude system, Gemini systemInstruction", function()
      assert.equal("SYS\n\nold", sp("prepend", "openai_responses", { instructions = "old" }).instructions)
      assert.equal("old\n\nSYS", sp("append", "claude", { system = "old" }).system)
      local b = sp("prepend", "claude", { system = arr({ { type = "text", text = "old" } }) })
      assert.equal("SYS", b.system[1].text)
      assert.equal("old", b.system[2].text)
      b = sp("prepend", "gemini", { system_instruction = { parts = arr({ { text = "old" } }) } })
      assert.is_nil(b.system_instruction)
      assert.same({ "SYS", "old" }, { b.systemInstruction.parts[1].text, b.systemInstruction.parts[2].text })
      assert.equal('{"parts":[{"text":"SYS"}]}', json.encode(sp("prepend", "gemini", {}).systemInstruction))
    end)
  end)

  it("headers sets and removes upstream headers case-insensitively", function()
    local chain = loaded({ { name = "headers", set = { ["user-agent"] = "mine", ["X-New"] = "1" },
                             remove = arr({ "x-drop" }) } })
    local ureq = { headers = { ["User-Agent"] = "theirs", ["X-Drop"] = "a", Authorization = "Bearer k" } }
    mw.run(chain, "before_upstream", { info = info() }, ureq)
    assert.same({ ["user-agent"] = "mine", ["X-New"] = "1", Authorization = "Bearer k" }, ureq.headers)
  end)

  describe("body_patch", function()
    local bp = require("middleware.body_patch")
    it("parses JSON paths", function()
      assert.same({ "a", "b", 1, "c" }, bp.parse("a.b[0].c"))
      assert.same({ "messages", -1 }, bp.parse("$.messages[-1]"))
      assert.same({ "generationConfig", "temperature" }, bp.parse("generationConfig.temperature"))
      assert.is_nil(bp.parse("a."))
      assert.is_nil(bp.parse("a[x]"))
    end)
    it("patches the upstream body: set, default, remove, formats", function()
      local chain = loaded({ { name = "body_patch", set = { temperature = 0.2, ["extra.flag"] = true },
                               default = { max_tokens = 100, top_p = 1 }, remove = arr({ "user", "messages[-1]" }),
                               formats = arr({ "openai_chat" }) } })
      local ureq = { body = json.encode({ top_p = 0.5, user = "u", messages = arr({ { role = "user" }, { x = 1 } }) }) }
      mw.run(chain, "before_upstream", { info = info(), upstream_format = "openai_chat" }, ureq)
      assert.same({ temperature = 0.2, extra = { flag = true }, max_tokens = 100, top_p = 0.5,
                    messages = { { role = "user" } } }, json.decode(ureq.body))
      local other = { body = '{"a":1}' }
      mw.run(chain, "before_upstream", { info = info(), upstream_format = "claude" }, other)
      assert.equal('{"a":1}', other.body)
    end)
    it("patches the client body in the rewrite phase, for matching models only", function()
      local list = { { name = "body_patch", phase = "rewrite", set = { ["messages[0].content"] = "patched" },
                       models = arr({ "gpt%-.*" }) } }
      local _, b = rewrite(list, { model = "gpt-4o", client_format = "openai_chat" },
        { messages = arr({ { role = "user", content = "x" } }) })
      assert.equal("patched", b.messages[1].content)
      _, b = rewrite(list, { model = "claude", client_format = "openai_chat" },
        { messages = arr({ { role = "user", content = "x" } }) })
      assert.equal("x", b.messages[1].content)
    end)
  end)

  it("redact replaces patterns in bodies and stream deltas, not in ids", function()
    local chain = loaded({ { name = "redact", patterns = arr({ "%d%d%d%-%d%d%d%d", "secret" }) } })
    local ctx = { info = info() }
    local body = { id = "secret-id", choices = arr({ { message = { role = "assistant",
      content = "call 555-1234 for the secret" } } }) }
    mw.run(chain, "after", ctx, { status = 200, body = body })
    assert.equal("call [REDACTED] for the [REDACTED]", body.choices[1].message.content)
    assert.equal("secret-id", body.id)
    -- inside a tool input carried as bytes (a span) too
    local tb = { content = arr({ { type = "tool_use", id = "t", name = "f",
      input = json.raw('{"cmd":"echo secret","n":1.10}', "object") } }) }
    mw.run(chain, "after", ctx, { status = 200, body = tb })
    assert.equal('{"cmd":"echo [REDACTED]","n":1.10}', json.encode(tb.content[1].input))
    -- short deltas are held until the block stops (a match may continue)
    local out = mw.run(chain, "on_chunk", ctx, { t = "delta", i = 0, text = "my secret" })
    assert.same({}, out)
    out = mw.run(chain, "on_chunk", ctx, { t = "block_stop", i = 0 })
    assert.same({ { t = "delta", i = 0, text = "my [REDACTED]" }, { t = "block_stop", i = 0 } }, out)
    out = mw.run(chain, "on_chunk", ctx, { t = "delta", i = 1, thinking = "555-0000" })
    assert.same({}, out)
    out = mw.run(chain, "on_chunk", ctx, { t = "finish", stop = "end_turn" })
    assert.same({ { t = "delta", i = 1, thinking = "[REDACTED]" }, { t = "finish", stop = "end_turn" } }, out)
  end)

  describe("redact across deltas", function()
    local SECRET = "sk-live-4f9a8b7c6d5e4f3a2b1c"
    local TEXT = "Here is the key: " .. SECRET .. " \u{e9}t\u{e9} keep it \u{1F600} safe, " ..
      string.rep("lorem ipsum ", 8) .. "and 555-1234 too."
    local WANT = "Here is the key: [K] \u{e9}t\u{e9} keep it \u{1F600} safe, " .. string.rep("lorem ipsum ", 8) ..
      "and [K] too."

    local function valid_utf8(s)
      local i, n = 1, #s
      while i <= n do
        local c = s:byte(i)
        local len = c < 0x80 and 1 or c >= 0xF0 and 4 or c >= 0xE0 and 3 or c >= 0xC0 and 2 or nil
        if not len or i + len - 1 > n then return false end
        for j = i + 1, i + len - 1 do
          local b = s:byte(j)
          if b < 0x80 or b >= 0xC0 then return false end
        end
        i = i + len
      end
      return true
    end

    -- Streams TEXT in pieces (the cut points), then block_stop; returns the
    -- text the client would see and every piece it got.
    local function stream(cuts, hold)
      local chain = loaded({ { name = "redact", patterns = arr({ "sk%-live%-%w+", "%d%d%d%-%d%d%d%d" }),
                               replacement = "[K]", hold = hold } })
      local ctx = { info = info() }
      local pieces, seen, from = {}, {}, 1
      cuts[#cuts + 1] = #TEXT
      for _, to in ipairs(cuts) do
        if to >= from then
          local evs = mw.run(chain, "on_chunk", ctx, { t = "delta", i = 0, text = TEXT:sub(from, to) })
          for _, e in ipairs(evs) do pieces[#pieces + 1] = e.text end
          from = to + 1
        end
      end
      local evs = mw.run(chain, "on_chunk", ctx, { t = "block_stop", i = 0 })
      for _, e in ipairs(evs) do
        if e.t == "delta" then pieces[#pieces + 1] = e.text else seen.stop = true end
      end
      return table.concat(pieces), pieces, seen
    end

    it("catches a secret split at every byte, and never cuts a character", function()
      for cut = 1, #TEXT - 1 do
        local got, pieces, seen = stream({ cut }, nil)
        assert.equal(WANT, got, "split at " .. cut)
        assert.is_true(seen.stop)
        for _, p in ipairs(pieces) do
          assert.is_true(valid_utf8(p), "piece " .. p)
          assert.is_nil(p:find("4f9a", 1, true), "split at " .. cut .. " leaked " .. p)
        end
      end
    end)

    it("byte-by-byte deltas give the same text", function()
      local cuts = {}
      for i = 1, #TEXT - 1 do cuts[#cuts + 1] = i end
      assert.equal(WANT, (stream(cuts, nil)))
    end)

    it("with hold = 0 only a match that has begun is held", function()
      -- split after "sk-live-4f": the match reaches the end and waits
      assert.equal(WANT, (stream({ 27, 40, 60 }, 0)))
      -- split inside "sk-": nothing matched yet, so nothing was held
      assert.is_not.equal(WANT, (stream({ 19, 40, 60 }, 0)))
    end)

    it("lets long text through while it streams", function()
      local _, pieces = stream({ 120 }, nil)
      assert.is_true(#pieces >= 2)
      assert.is_true(#pieces[1] > 60) -- not everything waited for block_stop
    end)
  end)

  it("request_id passes the client's id (or cliproxy's) upstream", function()
    local chain = loaded({ { name = "request_id" } })
    local i = info({ ["x-request-id"] = "client-7" })
    mw.run(chain, "access", { info = i })
    local ctx = { info = i }
    mw.run(chain, "rewrite", ctx, {})
    assert.equal("client-7", ctx.request_id)
    local ureq = { headers = {} }
    mw.run(chain, "before_upstream", ctx, ureq)
    assert.equal("client-7", ureq.headers["X-Request-Id"])
    chain = loaded({ { name = "request_id", ["upstream-header"] = "X-Trace" } })
    i = info()
    mw.run(chain, "access", { info = i })
    ureq = { headers = {} }
    mw.run(chain, "before_upstream", { info = i }, ureq)
    assert.equal("rid-1", ureq.headers["X-Trace"])
  end)
end)
