-- rt.mgmt.yaml_edit: one key changed in the text, every other byte kept;
-- the result always decodes to the document with that one change.
local cpx = require("cpx")
local json = require("lib.json")
local ye = require("rt.mgmt.yaml_edit")

local DOC = table.concat({
  "# top comment",
  "port: 8317 # the port",
  "api-keys:",
  "  - a # first",
  '  - "b"',
  "remote-management:",
  "  allow-remote: false # why",
  '  secret-key: ""',
  "empty:",
  "list2: [1, 2]",
  "seq-at-key-col:",
  "- x",
  "entries:",
  "  - name: one",
  "    models: [m1]",
  "# tail comment",
  "",
}, "\n")

local function decode(t)
  local doc, err = cpx.yaml.decode(t)
  assert(doc, err)
  return doc
end

-- Every line of `a` that is not in `changed` appears, in order, in `b`.
local function keeps_lines(a, b, changed)
  local bl = {}
  for l in b:gmatch("[^\n]*") do bl[#bl + 1] = l end
  local j = 1
  for l in a:gmatch("[^\n]*") do
    if not changed[l] then
      while j <= #bl and bl[j] ~= l do j = j + 1 end
      assert.is_true(j <= #bl, "line lost: " .. l)
    end
  end
end

describe("rt.mgmt.yaml_edit.set", function()
  it("replaces a scalar in place, comments and quoting of the rest untouched", function()
    local out = assert(ye.set(DOC, { "remote-management", "secret-key" }, "$2b$10$abc"))
    assert.equal(DOC:gsub('secret%-key: ""', "secret-key: $2b$10$abc"), out)
    assert.equal("$2b$10$abc", decode(out)["remote-management"]["secret-key"])
  end)

  it("keeps the comment after a replaced value", function()
    local out = assert(ye.set(DOC, { "remote-management", "allow-remote" }, true))
    assert.equal((DOC:gsub("allow%-remote: false # why", "allow-remote: true # why")), out)
  end)

  it("replaces a block list with a block list at the same column", function()
    local out = assert(ye.set(DOC, { "api-keys" }, json.array({ "x", "y z", "true" })))
    local doc = decode(out)
    assert.same({ "x", "y z", "true" }, { doc["api-keys"][1], doc["api-keys"][2], doc["api-keys"][3] })
    assert.equal("string", type(doc["api-keys"][3]))
    keeps_lines(DOC, out, { ["  - a # first"] = true, ['  - "b"'] = true })
  end)

  it("writes an empty list as []", function()
    local out = assert(ye.set(DOC, { "api-keys" }, json.array({})))
    assert.equal(0, #decode(out)["api-keys"])
    keeps_lines(DOC, out, { ["  - a # first"] = true, ['  - "b"'] = true })
  end)

  it("fills a key that had no value", function()
    assert.equal(5, decode(assert(ye.set(DOC, { "empty" }, 5))).empty)
    local out = assert(ye.set(DOC, { "empty" }, json.array({ "q" })))
    assert.equal("q", decode(out).empty[1])
    assert.equal("1", tostring(decode(out)["list2"][1]))
  end)

  it("turns a flow list into a block list of mappings", function()
    local v = json.array({ { ["api-key"] = "k", models = json.array({ { name = "a", alias = "b" } }) } })
    local out = assert(ye.set(DOC, { "list2" }, v))
    local doc = decode(out)
    assert.equal("k", doc.list2[1]["api-key"])
    assert.equal("b", doc.list2[1].models[1].alias)
  end)

  it("replaces a sequence written at its key's column with a mapping", function()
    local out = assert(ye.set(DOC, { "seq-at-key-col" }, { a = 1 }))
    assert.equal(1, decode(out)["seq-at-key-col"].a)
  end)

  it("edits inside a list item", function()
    local out = assert(ye.set(DOC, { "entries", 1, "name" }, "two"))
    assert.equal((DOC:gsub("name: one", "name: two")), out)
  end)

  it("adds a missing key to an existing mapping, and a missing mapping at the end", function()
    local out = assert(ye.set(DOC, { "remote-management", "new" }, "v"))
    assert.equal("v", decode(out)["remote-management"].new)
    assert.matches('  secret%-key: ""\n  new: v\n', out)
    out = assert(ye.set(DOC, { "routing", "strategy" }, "fill-first"))
    assert.equal("fill-first", decode(out).routing.strategy)
    keeps_lines(DOC, out, {})
  end)

  it("appends to a block list with one more line", function()
    local out = assert(ye.set(DOC, { "api-keys", 3 }, "c"))
    assert.equal((DOC:gsub('  %- "b"\n', '  - "b"\n  - c\n')), out)
    out = assert(ye.set(DOC, { "entries", 2 }, { name = "two" }))
    assert.equal("two", decode(out).entries[2].name)
    keeps_lines(DOC, out, {})
  end)

  it("appends to a flow list through its parent", function()
    local out = assert(ye.set(DOC, { "list2", 3 }, 9))
    local l = decode(out).list2
    assert.same({ 1, 2, 9 }, { l[1], l[2], l[3] })
  end)

  it("writes into an empty document", function()
    local out = assert(ye.set("", { "a", "b" }, 1))
    assert.equal(1, decode(out).a.b)
    out = assert(ye.set("# only a comment", { "k" }, "v"))
    assert.equal("# only a comment\nk: v\n", out)
  end)

  it("quotes strings that would read back as something else", function()
    for _, s in ipairs({ "true", "null", "123", "1.5", "a: b", "#x", "", " lead", "yes", "0x1F" }) do
      local out = assert(ye.set(DOC, { "port" }, s))
      assert.equal(s, decode(out).port)
    end
  end)

  it("reports a document libyaml cannot parse", function()
    local out, err = ye.set("a: [1\n", { "a" }, 1)
    assert.is_nil(out)
    assert.is_string(err)
  end)
end)

describe("rt.mgmt.yaml_edit.delete", function()
  it("removes the key's lines only", function()
    local out = assert(ye.delete(DOC, { "port" }))
    assert.equal((DOC:gsub("port: 8317 # the port\n", "")), out)
    out = assert(ye.delete(DOC, { "remote-management", "secret-key" }))
    assert.equal((DOC:gsub('  secret%-key: ""\n', "")), out)
  end)

  it("removes a block list whole", function()
    local out = assert(ye.delete(DOC, { "api-keys" }))
    assert.is_nil(decode(out)["api-keys"])
    assert.equal(8317, decode(out).port)
  end)

  it("leaves a document without the key as it was", function()
    assert.equal(DOC, ye.delete(DOC, { "nope" }))
  end)
end)

describe("rt.mgmt.yaml_edit and anchors", function()
  local A = "base: &b\n  k: v\nuse:\n  <<: *b\n  x: 1\nlist: &l [1]\nother: *l\n"

  it("refuses to replace or delete an anchored value, so aliases keep working", function()
    for _, p in ipairs({ { "base" }, { "list" } }) do
      local out, err = ye.set(A, p, 5)
      assert.is_nil(out)
      assert.matches("anchor", err)
      out, err = ye.delete(A, p)
      assert.is_nil(out)
      assert.matches("anchor", err)
    end
  end)

  it("edits next to a merge key", function()
    local out = assert(ye.set(A, { "use", "x" }, 2))
    local doc = decode(out)
    assert.equal(2, doc.use.x)
    assert.equal("v", doc.use.k)
    out = assert(ye.set(A, { "use", "k" }, "own"))
    assert.equal("own", decode(out).use.k)
    assert.equal("v", decode(out).base.k)
  end)
end)
