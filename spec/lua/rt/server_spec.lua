-- rt.server and lua/rt/routes: the dispatch table built from the route
-- modules, and requests through rt.server.handle with a stand-in request
-- object (what C passes), on a generation rt.boot built.
local json = require("lib.json")
local boot = require("rt.boot")
local server = require("rt.server")

local function request(method, path, body, headers)
  local r = {}
  function r.respond(self, status, h, b)
    self.st, self.h, self.body = status, h, b
    return true
  end
  function r.status(self) return self.st end
  function r.sent(self) return self.st ~= nil end
  function r.closed() return false end
  local info = { method = method, path = path, target = path, query = "", headers = headers or {},
                 body = body or "", id = "spec-1", remote = "127.0.0.1" }
  return r, info
end

local gen
local function call(method, path, body, headers)
  local r, info = request(method, path, body, headers)
  gen.handle(r, info)
  return r.st, r.body and json.decode(r.body) or nil, r
end

describe("rt.server", function()
  setup(function()
    -- The config sits in a scratch directory: what the generation writes
    -- beside it (logs/error-*.log of the failing requests below) lands
    -- there, not in the working directory (the repository).
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. dir))
    gen = assert(boot.start({}, {}, dir .. "/spec.yaml"))
  end)
  -- (the directory stays: removing it at teardown wakes a thread of
  -- cpx.so that is still running when busted unloads the module at exit,
  -- and the run then crashes now and then)

  it("has every endpoint, each with a handler and a client format unless public", function()
    local want = {
      "GET /healthz", "HEAD /healthz", "GET /metrics", "GET /", "HEAD /", "GET /v1/models",
      "POST /v1/chat/completions", "POST /v1/completions", "POST /v1/messages",
      "POST /v1/messages/count_tokens", "POST /v1/responses", "GET /v1/responses",
      "POST /v1/responses/compact", "GET /management.html", "HEAD /management.html",
    }
    for _, k in ipairs(want) do
      local r = server.routes[k]
      assert.is_table(r, k)
      assert.is_function(r[1], k)
      assert.is_true(r.public == true or type(r.fmt) == "string", k)
    end
    local n = 0
    for _ in pairs(server.routes) do n = n + 1 end
    assert.is_true(n >= #want)
  end)

  it("answers the exact routes", function()
    local st, body = call("GET", "/healthz")
    assert.equal(200, st)
    assert.equal("ok", body.status)
    st, body = call("GET", "/v1/models")
    assert.equal(200, st)
    assert.equal("list", body.object)
    st = call("OPTIONS", "/v1/chat/completions")
    assert.equal(204, st)
  end)

  it("routes /v1beta/models by prefix to the Gemini handlers", function()
    local st, body = call("GET", "/v1beta/models")
    assert.equal(200, st)
    assert.is_table(body.models)
    st, body = call("GET", "/v1beta/models/nope")
    assert.equal(404, st)
    assert.equal("model nope not found", body.error.message)
    st, body = call("POST", "/v1beta/models/nope:frobnicate", "{}")
    assert.equal(404, st)
    assert.equal("unknown method frobnicate", body.error.message)
    st, body = call("POST", "/v1beta/models/nope:generateContent", "{\"contents\": [")
    assert.equal(400, st)
    assert.matches("^invalid JSON body", body.error.message)
  end)

  it("answers an unknown path 404 in the envelope its path implies", function()
    local st, body = call("GET", "/nope")
    assert.equal(404, st)
    assert.equal("not found: GET /nope", body.error.message)
    st, body = call("GET", "/v1/messages/nope")
    assert.equal(404, st)
    assert.equal("error", body.type) -- Anthropic's envelope
  end)

  it("counts locally when no account can count", function()
    local st, body = call("POST", "/v1/messages/count_tokens", json.encode({
      model = "no-such-model", messages = json.array({ { role = "user", content = "hello there" } }) }))
    assert.equal(200, st)
    assert.is_true(body.input_tokens > 0)
    st, body = call("POST", "/v1/messages/count_tokens", "[1]")
    assert.equal(400, st)
    assert.equal("error", body.type)
  end)

  it("sends a model-less inference request back 400 in the client's format", function()
    local st, body = call("POST", "/v1/chat/completions", "{\"messages\": []}")
    assert.equal(400, st)
    assert.equal("model is required", body.error.message)
  end)
end)
