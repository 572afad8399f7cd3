-- fuzz driver (runtime/fuzz/fuzz_lua.c): every translator direction on any
-- JSON. The first byte picks the client format, the upstream format and the
-- path (request, response, stream); the rest is the body (for streams:
-- events separated by blank lines, "event: x" and "data: y" lines). A
-- translator answers a table or nil, err; it never raises, and what it
-- answers encodes as JSON.
local json = require("lib.json")
local translators = require("translators")

local F = translators.formats
local floor = math.floor

local function check(what, out, err)
  if out == nil then
    assert(err ~= nil, what .. ": nil without an error")
    return
  end
  assert(type(out) == "table", what .. ": answered a " .. type(out))
  local text, eerr = json.encode(out)
  assert(text, what .. ": output does not encode: " .. tostring(eerr))
end

local function frames(list, what)
  assert(type(list) == "table", what .. ": frames must be a list")
  for _, f in ipairs(list) do
    assert(type(f) == "string" or type(f) == "table", what .. ": frame of type " .. type(f))
  end
end

return function(s)
  if #s < 2 then return end
  local sel = s:byte(1)
  local from, to = F[sel % 4 + 1], F[floor(sel / 4) % 4 + 1]
  local path = floor(sel / 16) % 3
  local rest = s:sub(2)
  local what = from .. "<-" .. to .. " " .. ({ "request", "response", "stream" })[path + 1]
  if path == 2 then
    local st = translators.stream(from, to, { model = "fuzz-model", stream = true })
    for block in (rest .. "\n\n"):gmatch("(.-)\n\n") do
      local ev = { data = block }
      local name, data = block:match("^event: ([^\n]*)\ndata: (.*)$")
      if name then ev = { event = name, data = data } else
        local d = block:match("^data: (.*)$")
        if d then ev.data = d end
      end
      frames(st:feed(ev), what)
    end
    frames(st:finish(), what)
    return
  end
  local body = json.decode(rest)
  if type(body) ~= "table" then return end
  if path == 0 then
    check(what, translators.request(from, to, body, { model = "fuzz-model", upstream_model = "fuzz-model" }))
  else
    check(what, translators.response(from, to, body, { model = "fuzz-model" }))
  end
end
