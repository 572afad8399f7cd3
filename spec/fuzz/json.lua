-- fuzz driver (runtime/fuzz/fuzz_lua.c): cpx.json on any bytes. Decode
-- either fails with a message or gives a value; its encoding decodes
-- again, and encoding that gives the same bytes (the encoder is a fixed
-- point after one round), and the first encoding keeps what fidelity
-- promises: a compact input the encoder would write the same way comes back
-- byte for byte.
local json = require("lib.json")

-- Spans (decode with a spec) must accept what a full decode accepts and
-- carry the same document: re-decoding the encoded result gives the full
-- decode's value. They may accept more: a number out of Lua's range inside
-- a span is carried as written.
local SPEC = json.spec({ "a", "b[]", "c.d", "[]" })
local function norm(text)
  local v = json.decode(text)
  return v ~= nil and json.encode(v) or nil
end
local function check_spans(s, full_ok)
  local v, err = json.decode(s, SPEC)
  if v == nil then
    assert(type(err) == "string" and err ~= "", "span decode failed without a message")
    assert(not full_ok, "span decode refused what decode took: " .. err)
    -- the decoder's own span failure, not a field path (from the input's
    -- keys) that happens to contain those words
    assert(not err:find("^json: span bounds lost"), err)
    return
  end
  local e = assert(json.encode(v))
  if full_ok then assert(norm(e) == norm(s), "spans changed the document:\n" .. e) end
end

-- json.edit and json.top on the same bytes: never raise; a result is a
-- document with the edit made.
local function check_edit(s, full_ok)
  local out = json.edit(s, { zz = 1, a = json.null }, { "b" })
  if out and full_ok then
    local d = assert(json.decode(out), "edit gave invalid JSON: " .. out)
    assert(d.zz == 1 and d.a == json.null and d.b == nil, "edit lost: " .. out)
  end
  json.top(s, { "a", "b", "model" })
end

-- The decoder takes long strings out of yajl's hands (cpx_json_long_min):
-- with that off, and with it on for every string, the result is the same
-- value (compared as its encoding, which keeps key order, number text and
-- escape spelling) or the same error message.
local long_min = require("cpx").json.long_min
local function check_long_strings(s, v, err)
  local want = v ~= nil and json.encode(v) or err
  for _, m in ipairs({ 0, 1 }) do
    local prev = long_min(m)
    local v2, err2 = json.decode(s)
    local s2, e2 = json.decode(s, SPEC)
    local s0, e0
    long_min(0)
    s0, e0 = json.decode(s, SPEC)
    long_min(prev)
    local got = v2 ~= nil and json.encode(v2) or err2
    assert(got == want, ("long_min %d changed the decode:\n%s\n%s"):format(m, tostring(want), tostring(got)))
    local sg, sw = s2 ~= nil and json.encode(s2) or e2, s0 ~= nil and json.encode(s0) or e0
    assert(sg == sw, ("long_min %d changed the span decode:\n%s\n%s"):format(m, tostring(sw), tostring(sg)))
  end
end

return function(s)
  local v, err = json.decode(s)
  check_long_strings(s, v, err)
  check_spans(s, v ~= nil)
  if v ~= nil and not json.is_array(v) and type(v) == "table" then check_edit(s, true) end
  if v == nil then
    assert(type(err) == "string" and err ~= "", "decode failed without a message")
    check_edit(s, false)
    return
  end
  local e1, eerr = json.encode(v)
  if not e1 then
    -- only numbers the encoder refuses (there are none after decode) may fail
    error("encode of a decoded value failed: " .. tostring(eerr))
  end
  local v2, derr = json.decode(e1)
  assert(v2 ~= nil, "re-decode failed: " .. tostring(derr))
  local e2 = assert(json.encode(v2))
  assert(e1 == e2, "encode is not stable:\n" .. e1 .. "\n" .. e2)
end
