-- providers.gemini_cli and providers.antigravity: the v1internal envelope
-- (wrap, unwrap of non-stream, stream at every split point, countTokens),
-- thoughtSignature, headers, the Antigravity host list, the credential
-- files (rt.oauth with the Google facts).
package.path = "./lua/?/init.lua;" .. package.path
local cli = require("providers.gemini_cli")
local ag = require("providers.antigravity")
local oauth = require("rt.oauth")
local json = require("lib.json")
local tr = require("translators")
local cpx = require("cpx")
local fixture = require("fixture")

local function entry(extra)
  local e = { oauth = true, project_id = "proj-1" }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function target(e)
  return { entry = e or entry(), key = { ["api-key"] = "ya29.tok" }, upstream_model = "gemini-2.5-pro" }
end

describe("gemini_cli.prepare", function()
  local body = fixture.raw("providers/v1internal_request.json"):gsub("%s+$", "")

  it("wraps the request as {model, project, request} and sends Code Assist's headers", function()
    local ctx = {}
    local r = cli.prepare(ctx, target(), body, false)
    assert.equal("https://cloudcode-pa.googleapis.com/v1internal:generateContent", r.url)
    assert.equal('{"model":"gemini-2.5-pro","project":"proj-1","request":' .. body .. "}", r.body)
    assert.equal("Bearer ya29.tok", r.headers.Authorization)
    assert.equal("GeminiCLI/0.31.0/gemini-2.5-pro (darwin; arm64)", r.headers["User-Agent"])
    assert.equal("google-genai-sdk/1.41.0 gl-node/v22.19.0", r.headers["X-Goog-Api-Client"])
    assert.is_true(ctx.fixup_response)
    -- the envelope is JSON whose request is the body
    local d = json.decode(r.body)
    assert.are.same(json.decode(body), d.request)
  end)

  it("streams with alt=sse and takes the first project of a list", function()
    local r = cli.prepare({}, target(entry({ project_id = "p-a, p-b", ["base-url"] = "http://127.0.0.1:9/" })),
                          body, true)
    assert.equal("http://127.0.0.1:9/v1internal:streamGenerateContent?alt=sse", r.url)
    assert.equal("p-a", json.decode(r.body).project)
    assert.equal("text/event-stream", r.headers.Accept)
  end)

  it("leaves project out when the file has none", function()
    local r = cli.prepare({}, target({ oauth = true }), '{"contents":[]}', false)
    assert.equal('{"model":"gemini-2.5-pro","request":{"contents":[]}}', r.body)
  end)

  it("counts with {request: {model, contents}} and no project", function()
    local r = cli.prepare({ endpoint = "count_tokens" }, target(), '{"contents":[{"parts":[{"text":"hi"}]}]}', false)
    assert.equal("https://cloudcode-pa.googleapis.com/v1internal:countTokens", r.url)
    local d = json.decode(r.body)
    assert.is_nil(d.project)
    assert.equal("models/gemini-2.5-pro", d.request.model)
    assert.equal("hi", d.request.contents[1].parts[1].text)
    local g = cli.prepare({ endpoint = "count_tokens" }, target(),
                          '{"generateContentRequest":{"contents":[{"parts":[{"text":"x"}]}]}}', false)
    assert.equal("x", json.decode(g.body).request.contents[1].parts[1].text)
  end)
end)

describe("thoughtSignature", function()
  local function model_parts(b) return b.contents[2].parts end

  it("gemini_cli forces the skip signature on every function call of a model turn, copying", function()
    local text = fixture.raw("providers/v1internal_request.json")
    local orig = json.decode(text)
    local b = cli.fixup(json.shallow_copy(orig))
    local p = model_parts(b)
    assert.is_nil(p[1].thoughtSignature)
    assert.equal("skip_thought_signature_validator", p[2].thoughtSignature)
    assert.equal("skip_thought_signature_validator", p[3].thoughtSignature)
    -- the client's tables are untouched
    assert.are.same(json.decode(text), orig)
    assert.is_nil(orig.contents[2].parts[2].thoughtSignature)
    -- user turns are not touched
    assert.equal(orig.contents[3], b.contents[3])
  end)

  it("antigravity keeps a real signature, adds the skip one where none, drops safetySettings", function()
    local orig = fixture.json("providers/v1internal_request.json")
    local b = ag.fixup(json.shallow_copy(orig))
    local p = model_parts(b)
    assert.equal("skip_thought_signature_validator", p[2].thoughtSignature)
    assert.equal("real-sig", p[3].thoughtSignature)
    assert.is_nil(b.safetySettings)
    assert.is_not_nil(b.toolConfig)
    assert.matches("^%-%d+$", b.sessionId)
    -- stable per first user text, different for another conversation
    assert.equal(b.sessionId, ag.session_id(orig.contents))
    assert.not_equal(b.sessionId, ag.session_id({ { role = "user", parts = { { text = "other" } } } }))
  end)
end)

describe("unwrapping", function()
  it("a non-stream answer", function()
    local d = fixture.json("providers/v1internal_generate.json")
    local r = cli.response_fixup(d)
    assert.equal("Hello from Code Assist", r.candidates[1].content.parts[1].text)
    assert.equal(11, r.usageMetadata.totalTokenCount)
    -- an answer without the envelope stays as it is
    local plain = { candidates = {} }
    assert.equal(plain, cli.response_fixup(plain))
    assert.equal(cli.response_fixup, ag.response_fixup)
  end)

  local wrapped = fixture.raw("providers/v1internal_tool.sse")
  local plain = fixture.raw("translators/streams/gemini_tool.sse")

  local function events(bytes, cuts)
    local fr = cpx.sse.new()
    local out = {}
    local prev = 1
    local function feed(chunk)
      for _, ev in ipairs(assert(fr:feed(chunk))) do out[#out + 1] = ev end
    end
    for _, c in ipairs(cuts) do
      feed(bytes:sub(prev, c))
      prev = c + 1
    end
    feed(bytes:sub(prev))
    return out
  end

  local function translate(evs, fix)
    local s = tr.stream("claude", "gemini", { model = "m", upstream_model = "m", stream = true, now = 1,
                                              id_gen = function(p) return p .. "x" end })
    local out = {}
    for _, ev in ipairs(evs) do
      for _, f in ipairs(s:feed(fix and cli.stream_fixup(ev) or ev)) do out[#out + 1] = f end
    end
    for _, f in ipairs(s:finish()) do out[#out + 1] = f end
    return table.concat(out), s.usage
  end

  local want_events = events(plain, {})
  local want_claude, want_usage = translate(want_events, false)

  it("a stream, cut at every byte, gives the plain Gemini events and the same translation", function()
    assert.is_true(#want_events >= 2)
    for cut = 0, #wrapped do
      local evs = events(wrapped, cut > 0 and { cut } or {})
      assert.equal(#want_events, #evs)
      for i, ev in ipairs(evs) do
        assert.are.same(json.decode(want_events[i].data), json.decode(cli.stream_fixup(ev).data))
      end
      local got, usage = translate(evs, true)
      assert.equal(want_claude, got)
      assert.are.same(want_usage, usage)
    end
  end)

  it("leaves other events alone", function()
    local ev = { data = "[DONE]" }
    assert.equal(ev, cli.stream_fixup(ev))
    local ev2 = { data = '{"candidates":[]}' }
    assert.equal(ev2, cli.stream_fixup(ev2))
  end)
end)

describe("antigravity.prepare", function()
  it("wraps with the agent fields and lists the fallback hosts", function()
    local r = ag.prepare({ config = {} }, target(), '{"contents":[]}', true)
    assert.equal("https://cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse", r.url)
    assert.are.same({
      "https://daily-cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse",
      "https://daily-cloudcode-pa.sandbox.googleapis.com/v1internal:streamGenerateContent?alt=sse",
    }, r.fallback_urls)
    local d = json.decode(r.body)
    assert.equal("gemini-2.5-pro", d.model)
    assert.equal("antigravity", d.userAgent)
    assert.equal("agent", d.requestType)
    assert.equal("proj-1", d.project)
    assert.matches("^agent%-%x+%-", d.requestId)
    assert.matches("^antigravity/", r.headers["User-Agent"])
    local tail = '"request":{"contents":[]}}'
    assert.equal(tail, r.body:sub(-#tail))
  end)

  it("uses api-base-urls from the config, or only the file's base-url", function()
    local cfg = { ["oauth-endpoints"] = { antigravity = { ["api-base-urls"] = { "http://a/", "http://b" } } } }
    local r = ag.prepare({ config = cfg }, target(), "{}", false)
    assert.equal("http://a/v1internal:generateContent", r.url)
    assert.are.same({ "http://b/v1internal:generateContent" }, r.fallback_urls)
    local one = ag.prepare({ config = cfg }, target(entry({ ["base-url"] = "http://c" })), "{}", false)
    assert.equal("http://c/v1internal:generateContent", one.url)
    assert.is_nil(one.fallback_urls)
  end)
end)

describe("Google credential files", function()
  local now = 1700000000
  local tokens = { access_token = "ya29.a", refresh_token = "1//r", expires_in = 3600, token_type = "Bearer",
                   email = "u@example.com" }

  it("gemini: v6's nested token plus the top-level copy, named gemini-<email>-<project>.json", function()
    local f = assert(oauth.facts("gemini", {}))
    local doc = oauth.credential(f, tokens, nil, now)
    doc.project_id, doc.auto, doc.checked = "proj-1", false, false
    assert.equal("gemini", doc.type)
    assert.equal("ya29.a", doc.token.access_token)
    assert.equal("1//r", doc.token.refresh_token)
    assert.equal(oauth.format_time(now + 3600), doc.token.expiry)
    assert.equal("https://oauth2.googleapis.com/token", doc.token.token_uri)
    assert.equal(f.client_id, doc.token.client_id)
    assert.equal(3, #doc.token.scopes)
    assert.equal("googleapis.com", doc.token.universe_domain)
    assert.equal("ya29.a", doc.access_token)
    assert.is_nil(doc.expired)
    assert.is_nil(doc.id_token)
    assert.equal(now + 3600, oauth.expiry(doc))
    assert.equal("gemini-u@example.com-proj-1.json", oauth.file_name(f, doc, tokens))
    local text = oauth.encode(doc)
    assert.is_truthy(text:find('^{"token":{"access_token"'))
  end)

  it("gemini: a v6 file (tokens only nested) is read flat and refreshed in both places", function()
    local f = assert(oauth.facts("gemini", {}))
    local v6 = json.decode('{"token":{"access_token":"old","token_type":"Bearer","refresh_token":"1//keep",'
      .. '"expiry":"2023-11-14T22:13:20Z","token_uri":"https://oauth2.googleapis.com/token"},'
      .. '"project_id":"p","email":"u@example.com","auto":false,"checked":true,"type":"gemini"}')
    local flat = oauth.flat(v6)
    assert.equal("old", flat.access_token)
    assert.equal("1//keep", flat.refresh_token)
    assert.equal(1700000000, oauth.expiry(flat))
    local req = oauth.refresh_request(f, flat.refresh_token)
    local q = oauth.parse_query(req.body)
    assert.equal("refresh_token", q.grant_type)
    assert.equal(f.client_secret, q.client_secret)
    assert.equal("1//keep", q.refresh_token)
    local new = oauth.credential(f, { access_token = "new", expires_in = 60 }, flat, now)
    assert.equal("new", new.token.access_token)
    assert.equal("new", new.access_token)
    assert.equal("1//keep", new.token.refresh_token)
    assert.equal(oauth.format_time(now + 60), new.token.expiry)
    assert.equal(true, new.checked)
    assert.equal("p", new.project_id)
    -- the file's own key order stays: token first
    assert.is_truthy(oauth.encode(new):find('^{"token":'))
  end)

  it("antigravity: expires_in, timestamp (ms), expired; antigravity-<email>.json", function()
    local f = assert(oauth.facts("antigravity", {}))
    local doc = oauth.credential(f, tokens, nil, now)
    assert.equal("antigravity", doc.type)
    assert.equal(3600, doc.expires_in)
    assert.equal(now * 1000, doc.timestamp)
    assert.equal(oauth.format_time(now + 3600), doc.expired)
    assert.equal(300, f.lead)
    assert.equal("antigravity-u@example.com.json", oauth.file_name(f, doc, tokens))
    doc.email = ""
    assert.equal("antigravity.json", oauth.file_name(f, doc, tokens))
  end)

  it("antigravity's authorize URL has no PKCE; its exchange sends the secret", function()
    local f = assert(oauth.facts("antigravity", {}))
    local u = oauth.authorize_url(f, { state = "s", challenge = "c", redirect_uri = oauth.redirect_uri(f) })
    assert.is_nil(u:find("code_challenge", 1, true))
    assert.is_truthy(u:find("access_type=offline", 1, true))
    assert.is_truthy(u:find("redirect_uri=http%3A%2F%2Flocalhost%3A51121%2Foauth-callback", 1, true))
    local q = oauth.parse_query(oauth.exchange_request(f, { code = "c", verifier = "v",
                                                            redirect_uri = "http://x" }).body)
    assert.equal(f.client_secret, q.client_secret)
    assert.is_nil(q.code_verifier)
    local g = assert(oauth.facts("gemini", {}))
    assert.is_truthy(oauth.authorize_url(g, { state = "s", challenge = "c", redirect_uri = "http://x" })
      :find("code_challenge=c", 1, true))
  end)

  it("oauth-endpoints overrides the Google URLs", function()
    local f = assert(oauth.facts("gemini", { ["oauth-endpoints"] = { gemini = {
      ["userinfo-url"] = "http://127.0.0.1:1/ui", ["projects-url"] = "http://127.0.0.1:1/p",
      ["api-base-url"] = "http://127.0.0.1:1/ca", ["token-url"] = "http://127.0.0.1:1/t" } } }))
    assert.equal("http://127.0.0.1:1/ui", f.userinfo_url)
    assert.equal("http://127.0.0.1:1/p", f.projects_url)
    assert.equal("http://127.0.0.1:1/ca", f.api_base_url)
    assert.equal("http://127.0.0.1:1/t", f.token_url)
  end)
end)

describe("rt.registry and Google files", function()
  local registry = require("rt.registry")
  local cfg = { ["oauth-endpoints"] = { gemini = { ["api-base-url"] = "http://127.0.0.1:9/ca" } } }

  local function targets(creds, model)
    local reg = registry.build(cfg, creds)
    return reg.models[model] or {}
  end

  it("a v6 Gemini file serves with its nested token and its project at oauth-endpoints' host", function()
    local t = targets({ { name = "gemini-u-p.json", type = "gemini", text =
      '{"token":{"access_token":"ya29.n","refresh_token":"1//r","expiry":"2099-01-01T00:00:00Z"},'
      .. '"project_id":"p1","email":"u@example.com","type":"gemini"}' } }, "gemini-2.5-pro")
    assert.equal(1, #t)
    assert.equal("gemini_cli", t[1].provider)
    assert.equal("ya29.n", t[1].key["api-key"])
    assert.equal("p1", t[1].entry.project_id)
    assert.equal("http://127.0.0.1:9/ca", t[1].entry["base-url"])
    assert.equal("gemini-u-p.json", t[1].credential)
  end)

  it("a file naming several projects is one account per project on the same token", function()
    local t = targets({ { name = "gemini-u-all.json", type = "gemini", text =
      '{"access_token":"ya29.m","project_id":"a, b,c","type":"gemini"}' } }, "gemini-2.5-flash")
    assert.equal(3, #t)
    local seen = {}
    for i, x in ipairs(t) do
      seen[i] = x.entry.project_id
      assert.equal("ya29.m", x.key["api-key"])
      assert.equal("gemini-u-all.json", x.credential)
    end
    assert.are.same({ "a", "b", "c" }, seen)
    assert.equal("auth:gemini-u-all.json#b", t[2].account)
    -- the plugin's project_ids list, bad members ignored
    local t2 = targets({ { name = "u-gemini-cli.json", type = "gemini-cli", text =
      '{"access_token":"ya29.k","project_ids":["x",7,"y"],"type":"gemini-cli"}' } }, "gemini-2.5-pro")
    assert.equal(2, #t2)
    assert.equal("y", t2[2].entry.project_id)
  end)

  it("an antigravity file serves through the antigravity provider", function()
    local t = targets({ { name = "antigravity-u.json", type = "antigravity", text =
      '{"type":"antigravity","access_token":"ya29.ag","project_id":"ag-1","email":"u@example.com"}' } },
      "gemini-2.5-pro")
    assert.equal(1, #t)
    assert.equal("antigravity", t[1].provider)
    assert.equal("ag-1", t[1].entry.project_id)
    assert.is_nil(t[1].entry["base-url"])
  end)
end)

describe("rt.doctor and Google files", function()
  it("reads a v6 Gemini file's nested token and expiry", function()
    local doctor = require("rt.doctor")
    local app = { config = { ["api-keys"] = { "k" } }, providers = {}, registry = { order = {}, models = {} } }
    local checks = doctor.report(app, {
      { name = "g.json", type = "gemini", text = '{"token":{"access_token":"t","expiry":"2026-12-09T10:00:00Z"},'
        .. '"email":"u@x","type":"gemini"}' },
      { name = "h.json", type = "gemini", text = '{"token":{"access_token":"t","expiry":"soon"},"type":"gemini"}' },
    }, 1796637600).checks
    assert.same({ "ok", "g.json (u@x): gemini, valid for 2 days" }, { checks[2][1], checks[2][2] })
    assert.same({ "warn", "h.json: 'expiry' is not an RFC 3339 time: soon" }, { checks[3][1], checks[3][2] })
  end)
end)

describe("antigravity tool schemas", function()
  it("cleans a Gemini client's declarations like the hub does, leaving the client's tables alone", function()
    local text = '{"tools":[{"functionDeclarations":[{"name":"f","parameters":{"$schema":"x","type":"object",'
      .. '"additionalProperties":false,"properties":{"q":{"type":"string","minLength":2}},"required":["q"]}},'
      .. '{"name":"g"}]},{"googleSearch":{}}],"contents":[]}'
    local orig = json.decode(text)
    local b = ag.fixup(json.shallow_copy(orig))
    local p = b.tools[1].functionDeclarations[1].parameters
    assert.is_nil(p["$schema"])
    assert.is_nil(p.additionalProperties)
    assert.is_nil(p.properties.q.minLength)
    assert.matches("minLength: 2", p.properties.q.description)
    assert.are.same(require("lib.schema").clean_for_gemini(orig.tools[1].functionDeclarations[1].parameters), p)
    assert.equal(orig.tools[1].functionDeclarations[2], b.tools[1].functionDeclarations[2])
    assert.equal(orig.tools[2], b.tools[2])
    assert.are.same(json.decode(text), orig)
  end)
end)
