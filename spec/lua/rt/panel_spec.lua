-- rt.panel: which paths name which files, the headers of each answer,
-- revalidation, HEAD, the off switch and the bounded cache. cpx.panel.read
-- (C, runtime/lua/cpx_panel.c) is replaced by a table of files that counts its
-- reads; the real reader has its own C test and the e2e panel test.
local cpx = require("cpx")

local files, reads
local real_panel = cpx.panel
cpx.panel = {
  read = function(name)
    reads[name] = (reads[name] or 0) + 1
    if files[name] then return files[name], 1700000000 end
    return nil, "not found"
  end,
}
package.loaded["rt.panel"] = nil
local panel = require("rt.panel")

local function fake_req()
  local r = {}
  function r:respond(status, headers, body)
    self.status, self.headers, self.body = status, headers, body
    return true
  end
  return r
end

local function get(path, opts)
  opts = opts or {}
  local req = fake_req()
  panel.serve(opts.cfg or {}, req, { method = opts.method or "GET", path = path, headers = opts.headers or {} })
  return req
end

describe("rt.panel", function()
  before_each(function()
    files = { ["management.html"] = "<!doctype html>", ["js/app.js"] = "export {};", ["panel.css"] = "a{}",
              ["notes.xyz"] = "?" }
    reads = {}
  end)
  teardown(function() cpx.panel = real_panel end)

  it("maps /management.html and /panel/<file>, and nothing else", function()
    assert.equal("management.html", panel.file_for("/management.html"))
    assert.equal("js/app.js", panel.file_for("/panel/js/app.js"))
    assert.is_nil(panel.file_for("/panel/"))
    assert.is_nil(panel.file_for("/management.htm"))
    assert.is_nil(panel.file_for("/v1/panel/x.js"))
  end)

  it("answers with the type, a strict CSP, no-cache and an ETag", function()
    local r = get("/panel/js/app.js")
    assert.equal(200, r.status)
    assert.equal("export {};", r.body)
    assert.equal("text/javascript; charset=utf-8", r.headers["Content-Type"])
    assert.equal("no-cache", r.headers["Cache-Control"])
    assert.equal("nosniff", r.headers["X-Content-Type-Options"])
    assert.matches("default-src 'none'", r.headers["Content-Security-Policy"], 1, true)
    assert.matches("frame-ancestors 'none'", r.headers["Content-Security-Policy"], 1, true)
    assert.matches('^"%x+"$', r.headers.ETag)
    assert.equal("text/html; charset=utf-8", get("/management.html").headers["Content-Type"])
    assert.equal("text/css; charset=utf-8", get("/panel/panel.css").headers["Content-Type"])
  end)

  it("answers 304 to its own ETag and 200 to another", function()
    local etag = get("/panel/panel.css").headers.ETag
    local r = get("/panel/panel.css", { headers = { ["if-none-match"] = etag } })
    assert.equal(304, r.status)
    assert.equal("", r.body)
    assert.equal(etag, r.headers.ETag)
    assert.equal(200, get("/panel/panel.css", { headers = { ["if-none-match"] = '"other"' } }).status)
  end)

  it("keeps what it read: one read per file per generation", function()
    files["js/once.js"] = "once"
    assert.equal("once", get("/panel/js/once.js").body)
    files["js/once.js"] = "changed on disk"
    assert.equal("once", get("/panel/js/once.js").body)
    assert.equal(1, reads["js/once.js"])
  end)

  it("HEAD has the headers and no body; other methods get 404", function()
    local r = get("/management.html", { method = "HEAD" })
    assert.equal(200, r.status)
    assert.equal("", r.body)
    assert.equal(404, get("/management.html", { method = "POST" }).status)
    assert.equal(404, get("/panel/js/app.js", { method = "DELETE" }).status)
  end)

  it("answers 404 for missing files and types it does not serve, without caching a miss", function()
    assert.equal(404, get("/panel/missing.js").status)
    assert.equal(404, get("/panel/missing.js").status)
    assert.equal(2, reads["missing.js"])
    assert.equal(404, get("/panel/notes.xyz").status)
    assert.is_nil(reads["notes.xyz"], "an unknown type is never read")
  end)

  it("is off with remote-management.disable-control-panel", function()
    local cfg = { ["remote-management"] = { ["disable-control-panel"] = true } }
    assert.equal(404, get("/management.html", { cfg = cfg }).status)
    assert.equal(404, get("/panel/js/app.js", { cfg = cfg }).status)
    assert.equal(200, get("/management.html", { cfg = { ["remote-management"] = {} } }).status)
  end)
end)
