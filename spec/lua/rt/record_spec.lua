-- rt.record's per-request tables: a finished request leaves nothing behind.
-- LuaJIT has no ephemerons, so a weak-keyed table whose value holds its key
-- keeps both forever: the bug that grew the Lua heap by ~4 KB per request
-- until the VM's memory cap.
local record = require("rt.record")

describe("rt.record", function()
  it("a finished request's info, req and record can be collected", function()
    local probe = setmetatable({}, { __mode = "k" })
    for i = 1, 200 do
      local info = { id = "r" .. i, method = "POST", path = "/v1/chat/completions", headers = {} }
      local req = {}
      local rec = record.begin(info, "openai_chat")
      record.bind(req, rec)
      assert.equal(rec, record.of(info))
      assert.equal(rec, record.of_req(req))
      record.finish(rec, 200)
      assert.is_nil(record.of(info))
      assert.is_nil(record.of_req(req))
      probe[info], probe[req], probe[rec] = true, true, true
    end
    collectgarbage("collect")
    collectgarbage("collect")
    local left = 0
    for _ in pairs(probe) do left = left + 1 end
    assert.equal(0, left)
  end)

  it("finish runs once: a second call neither emits nor fails", function()
    local seen = 0
    record.subscribe("spec", function() seen = seen + 1 end)
    local rec = record.begin({ id = "x", method = "GET", path = "/v1/models", headers = {} }, "openai_chat")
    record.finish(rec, 200)
    record.finish(rec, 500)
    record.unsubscribe("spec")
    assert.equal(1, seen)
    assert.equal(200, rec.status)
  end)
end)
