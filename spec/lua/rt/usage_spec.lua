-- rt.record, rt.usage and rt.mgmt.usage against the real store (build/cpx.so
-- with runtime/state/cpx_usage.c: SQLite in a temporary directory).
local cpx = require("cpx")
local json = require("lib.json")
local record = require("rt.record")
local usage = require("rt.usage")
local routes = require("rt.mgmt.usage")

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "'"))
  return p
end

local dirs = {}
local function open_store()
  cpx.usage.close()
  local d = tmpdir()
  dirs[#dirs + 1] = d
  -- retention 0: the imported CLIProxyAPI export below is older than 30 days
  assert(cpx.usage.open({ path = d .. "/usage.db", force = true, flush_ms = 50, retention_days = 0 }))
  return d .. "/usage.db"
end

teardown(function()
  cpx.usage.close()
  for _, d in ipairs(dirs) do os.execute("rm -rf '" .. d .. "'") end
end)

local function handler(method, path)
  for _, r in ipairs(routes.routes) do
    if r.method == method and r.path == path then return r.handler end
  end
  error("no route " .. method .. " " .. path)
end

local T0 = 1796600000 -- 2026-12-06T23:33:20Z
local function rec(i, over)
  local r = { id = "r" .. i, time = T0 + i * 1800 + 0.125, latency_ms = 10 + i, method = "POST",
              endpoint = "/v1/chat/completions", client_format = "openai_chat", stream = i % 2 == 0,
              provider = "openai_compat", account = "acct-" .. (i % 2), model = i % 3 == 0 and "m2" or "m1",
              client_key = "key-aaaaaaaa", status = 200, failed = false, attempts = 1, kind = "inference",
              path = i % 2 == 0 and "lane" or "lua", source = "mock",
              usage = { input = 10, output = i, reasoning = 0, cache_read = 1, cache_write = 0 } }
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

describe("rt.record", function()
  after_each(function()
    record.unsubscribe("t1")
    record.unsubscribe("t2")
  end)

  it("delivers each record once to every subscriber, a failing one not stopping the others", function()
    local got = {}
    record.subscribe("t1", function() error("boom") end)
    record.subscribe("t2", function(r) got[#got + 1] = r end)
    local info = { id = "abcd1234", method = "POST", path = "/v1/messages", headers = {} }
    local r = record.begin(info, "claude", "sk-secret-key")
    assert.equal(r, record.of(info))
    r.usage = { input = 3 }
    record.finish(r, 200)
    record.finish(r, 500, "again")
    assert.equal(1, #got)
    assert.equal(200, got[1].status)
    assert.is_false(got[1].failed)
    assert.same({ input = 3, output = 0, reasoning = 0, cache_read = 0, cache_write = 0 }, got[1].usage)
    assert.equal("lua", got[1].path)
    assert.matches("^key%-%x%x%x%x%x%x%x%x$", got[1].client_key)
    assert.is_nil(got[1].client_key:find("secret", 1, true))
    assert.equal(record.key_label("sk-secret-key"), got[1].client_key)
  end)

  it("a request with no status was not answered: 499, failed", function()
    local got
    record.subscribe("t1", function(r) got = r end)
    local r = record.begin({ id = "x", method = "GET", path = "/v1/models" }, "openai_chat")
    record.finish(r, nil)
    assert.equal(499, got.status)
    assert.is_true(got.failed)
  end)

  it("reads usage from a relayed stream's first and last bytes", function()
    local claude = 'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":12,'
      .. '"cache_read_input_tokens":3,"output_tokens":1}}}\n\nevent: content_block_del' -- cut here
      .. '\n\nta: {"x":1}\n\nevent: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\n\n'
    local u = record.usage_from_stream("claude", claude)
    assert.equal(15, u.input)
    assert.equal(42, u.output)
    assert.equal(3, u.cache_read)
    local chat = 'data: {"choices":[]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6,'
      .. '"completion_tokens_details":{"reasoning_tokens":2}}}\n\ndata: [DONE]\n\n'
    u = record.usage_from_stream("openai_chat", chat)
    assert.same({ 5, 6, 2 }, { u.input, u.output, u.reasoning })
  end)

  it("turns the lane's records into records, with the key's label and the target's account", function()
    local got = {}
    record.subscribe("t1", function(r) got[#got + 1] = r end)
    local app = { config = { ["api-keys"] = { "k1", "k2" } },
                  registry = { lookup = function(_, m)
                    return { { provider = "openai_compat", account = "acct", upstream_model = "up",
                               owner = "mock" } }, m
                  end } }
    record.lane(app, {
      { model = "m", member = 1, key_index = 2, status = 200, time = T0, latency_ms = 5, stream = false,
        aborted = false, tail = '{"id":"x","usage":{"prompt_tokens":7,"completion_tokens":8}}' },
      { model = "m", member = 1, key_index = 0, status = 200, time = T0, latency_ms = 5, ttft_ms = 1,
        stream = true, aborted = true, tail = 'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n' },
    })
    assert.equal(2, #got)
    assert.equal(record.key_label("k2"), got[1].client_key)
    assert.same({ 7, 8 }, { got[1].usage.input, got[1].usage.output })
    assert.equal("acct", got[1].account)
    assert.equal("lane", got[1].path)
    assert.equal(499, got[2].status)
    assert.is_true(got[2].failed)
    assert.equal(2, got[2].usage.output)
  end)
end)

describe("rt.usage", function()
  local db
  before_each(function()
    db = open_store()
  end)

  it("stores records and answers CLIProxyAPI's GET /usage shape", function()
    for i = 1, 6 do cpx.usage.append(rec(i)) end
    cpx.usage.append(rec(7, { failed = true, status = 502, usage = { input = 4 } }))
    assert.is_true(cpx.usage.flush())
    local s = assert(usage.summary({}))
    local u = s.usage
    assert.equal(7, u.total_requests)
    assert.equal(6, u.success_count)
    assert.equal(1, u.failure_count)
    assert.equal(1, s.failed_requests)
    assert.equal(7 * 10 - 6 + (1 + 2 + 3 + 4 + 5 + 6), u.total_tokens)
    local api = u.apis["key-aaaaaaaa"]
    assert.equal(7, api.total_requests)
    assert.equal(5, api.models.m1.total_requests)
    assert.equal(2, api.models.m2.total_requests)
    local d = api.models.m2.details
    assert.equal(2, #d)
    assert.equal("2026-12-07T01:03:20.125Z", d[1].timestamp) -- r3, oldest first
    assert.same({ input_tokens = 10, output_tokens = 3, reasoning_tokens = 0, cached_tokens = 1,
                  cache_write_tokens = 0, total_tokens = 13 }, d[1].tokens)
    assert.equal("acct-1", d[1].auth_index)
    assert.equal("mock", d[1].source)
    local days, hours = 0, 0
    for _, n in pairs(u.requests_by_day) do days = days + n end
    for h, n in pairs(u.requests_by_hour) do
      assert.matches("^%d%d$", h)
      hours = hours + n
    end
    assert.equal(7, days)
    assert.equal(7, hours)
    -- only the newest `details` are listed, the sums stay exact
    s = usage.summary({ details = 2 })
    assert.equal(5, s.usage.apis["key-aaaaaaaa"].models.m1.total_requests)
    assert.equal(1, #s.usage.apis["key-aaaaaaaa"].models.m1.details)
  end)

  it("groups by model, account, hour and day, in a time range", function()
    for i = 1, 6 do cpx.usage.append(rec(i)) end
    cpx.usage.flush()
    local r = assert(usage.query({ group_by = "model" }))
    assert.equal(2, #r.rows)
    assert.equal("m1", r.rows[1].model)
    assert.equal(4, r.rows[1].requests)
    assert.equal(40 + 1 + 2 + 4 + 5, r.rows[1].tokens.total)
    r = assert(usage.query({ group_by = "account,model" }))
    assert.equal(4, #r.rows)
    r = assert(usage.query({ group_by = "hour", from = T0 + 1800, to = T0 + 3 * 1800 + 1 }))
    local n = 0
    for _, row in ipairs(r.rows) do
      assert.matches("^2026%-12%-07T%d%d:00:00Z$", row.hour)
      n = n + row.requests
    end
    assert.equal(3, n)
    r = assert(usage.query({ group_by = "day", from = "2026-12-07T00:00:00Z" }))
    assert.equal(1, #r.rows)
    assert.equal("2026-12-07", r.rows[1].day)
    local bad, err = usage.query({ group_by = "model; drop table requests" })
    assert.is_nil(bad)
    assert.matches("group_by", err)
  end)

  it("export -> import into an empty store -> export gives the same document; imports are idempotent", function()
    for i = 1, 5 do cpx.usage.append(rec(i)) end
    cpx.usage.append(rec(6, { failed = true, status = 429, error = "quota", ttft_ms = 12.5, alias = "m",
                              upstream_model = "up", credential = "claude-a@b.json" }))
    cpx.usage.flush()
    local a = assert(usage.export({}))
    assert.equal(1, a.version)
    open_store()
    local text = json.encode(a)
    local res = assert(usage.import(json.decode(text)))
    assert.same({ added = 6, skipped = 0, total_requests = 6, failed_requests = 1 }, res)
    local b = assert(usage.export({}))
    a.exported_at, b.exported_at = nil, nil
    assert.same(a, b)
    res = assert(usage.import(json.decode(text)))
    assert.same({ added = 0, skipped = 6, total_requests = 6, failed_requests = 1 }, res)
    assert.equal(6, usage.summary({}).usage.total_requests)
  end)

  it("imports CLIProxyAPI's own export (no ids) once", function()
    local doc = { version = 1, exported_at = "2026-01-01T00:00:00Z", usage = { apis = {
      ["sk-x"] = { models = { ["gpt-5"] = { details = {
        { timestamp = "2026-01-01T10:00:00+02:00", latency_ms = 100, source = "me@x", auth_index = "1",
          tokens = { input_tokens = 5, output_tokens = 6, total_tokens = 11 }, failed = false },
        { timestamp = "2026-01-01T11:00:00Z", latency_ms = 10, source = "me@x", auth_index = "1",
          tokens = { input_tokens = 1, output_tokens = 1, total_tokens = 2 }, failed = true },
      } } } } } } }
    assert.same({ added = 2, skipped = 0, total_requests = 2, failed_requests = 1 }, usage.import(doc))
    assert.same({ added = 0, skipped = 2, total_requests = 2, failed_requests = 1 }, usage.import(doc))
    local rows = cpx.usage.query({})
    assert.equal(2, #rows)
    assert.equal(1767254400, rows[1].time) -- 10:00+02:00 = 08:00Z
    assert.equal("gpt-5", rows[1].model)
  end)

  it("survives a reopen (restart) with every record", function()
    for i = 1, 3 do cpx.usage.append(rec(i)) end
    cpx.usage.close() -- writes what is queued
    assert(cpx.usage.open({ path = db, force = true }))
    assert.equal(3, #cpx.usage.query({}))
  end)

  it("keeps only inference and counting records", function()
    -- configure opens the store only in a server worker; it subscribes this
    local ok, err = usage.configure({ config = { ["usage-statistics-enabled"] = true, usage = { path = db } } })
    assert.is_nil(ok)
    assert.equal("not a server worker", err)
    record.subscribe("usage", usage.subscriber)
    local info = { id = "z", method = "GET", path = "/healthz" }
    record.finish(record.begin(info, "openai_chat"), 200)
    local r = record.begin({ id = "y", method = "POST", path = "/v1/messages" }, "claude")
    r.kind = "inference"
    record.finish(r, 200)
    cpx.usage.flush()
    assert.equal(1, #cpx.usage.query({}))
    record.unsubscribe("usage")
  end)
end)

describe("rt.mgmt.usage", function()
  before_each(function() open_store() end)

  it("serves GET /usage, group_by, export and import", function()
    for i = 1, 4 do cpx.usage.append(rec(i)) end
    cpx.usage.flush()
    local st, body = handler("GET", "/usage")({ method = "GET", query = "" }, {})
    assert.equal(200, st)
    assert.equal(4, body.usage.total_requests)
    st, body = handler("GET", "/usage")({ method = "GET", query = "group_by=model&from=" .. T0 }, {})
    assert.equal(200, st)
    assert.equal("m1", body.rows[1].model)
    st = handler("GET", "/usage")({ method = "GET", query = "group_by=nope" }, {})
    assert.equal(400, st)
    st = handler("GET", "/usage")({ method = "GET", query = "from=yesterday" }, {})
    assert.equal(400, st)
    local est, exp = handler("GET", "/usage/export")({ method = "GET", query = "" }, {})
    assert.equal(200, est)
    open_store()
    st, body = handler("POST", "/usage/import")({ method = "POST", body = json.encode(exp) }, {})
    assert.equal(200, st)
    assert.equal(4, body.added)
    st = handler("POST", "/usage/import")({ method = "POST", body = "{not json" }, {})
    assert.equal(400, st)
  end)

  it("answers the same shape with zeros when usage is off", function()
    cpx.usage.close()
    local st, body = handler("GET", "/usage")({ method = "GET", query = "" }, {})
    assert.equal(200, st)
    assert.equal(0, body.usage.total_requests)
    st = handler("POST", "/usage/import")({ method = "POST", body = "{}" }, {})
    assert.equal(409, st)
  end)
end)
