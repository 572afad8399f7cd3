-- Writes a Chat Completions request body of about TARGET bytes (default 78000),
-- shaped like what a coding agent such as Claude Code sends: a long system
-- prompt, a couple of dozen tool declarations with JSON schemas, and a short
-- conversation. The text is generated deterministically from a word list.
--   luajit make_body.lua OUTFILE [TARGET_BYTES] [MODEL]
local out, target, model = arg[1], tonumber(arg[2] or "78000"), arg[3] or "bench-model"
assert(out, "usage: luajit make_body.lua OUTFILE [TARGET_BYTES] [MODEL]")

package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local textgen = require("textgen")
local gen = textgen.new(12345)
local words, tool_names, esc = gen.words, gen.tool_names, gen.esc
local rnd, sentence, paragraph = gen.rnd, gen.sentence, gen.paragraph

local function tool(name)
  local props = {}
  for i = 1, 2 + rnd(4) do
    local p = words[rnd(#words)] .. "_" .. i
    props[#props + 1] = esc(p) .. ':{"type":"string","description":' .. esc(sentence(8 + rnd(10))) .. '}'
  end
  return '{"type":"function","function":{"name":' .. esc(name) .. ',"description":' .. esc(paragraph(6 + rnd(10))) ..
    ',"parameters":{"type":"object","properties":{' .. table.concat(props, ",") ..
    '},"required":[],"additionalProperties":false}}}'
end

local tools = {}
for i, n in ipairs(tool_names) do tools[i] = tool(n) end
local tools_json = "[" .. table.concat(tools, ",") .. "]"

local function build(system)
  return '{"model":' .. esc(model) .. ',"max_tokens":32000,"stream":false,"messages":[' ..
    '{"role":"system","content":' .. esc(system) .. '},' ..
    '{"role":"user","content":' .. esc("<system-reminder>\n" .. paragraph(4) .. "\n</system-reminder>") .. '},' ..
    '{"role":"user","content":"Reply with the word PONG"}],"tools":' .. tools_json .. ',"tool_choice":"auto"}'
end

-- the system prompt cut so the body lands on the target size
local body = gen.fill(build, target, 5, true)
textgen.write(out, body)
io.stderr:write(string.format("make_body: %s, %d bytes, %d tools\n", out, #body, #tool_names))
