-- Writes a Responses (Codex) or Gemini (Gemini CLI) request of about
-- TARGET bytes: long instructions, 24 function tools with JSON schemas, one
-- user turn. Deterministic (textgen's word list and LCG).
--   luajit make_route_body.lua responses|gemini OUTFILE [TARGET_BYTES] [MODEL]
local kind, out, target, model = arg[1], arg[2], tonumber(arg[3] or "78000"), arg[4] or "bench-model"
assert((kind == "responses" or kind == "gemini") and out,
  "usage: luajit make_route_body.lua responses|gemini OUTFILE [TARGET_BYTES] [MODEL]")

package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local textgen = require("textgen")
local gen = textgen.new(777)
local words, tool_names, esc = gen.words, gen.tool_names, gen.esc
local rnd, sentence, paragraph = gen.rnd, gen.sentence, gen.paragraph
local concat = table.concat

local function schema()
  local props, req = {}, {}
  for i = 1, 2 + rnd(4) do
    local p = words[rnd(#words)] .. "_" .. i
    local t = ({ "string", "string", "number", "boolean" })[rnd(4)]
    props[#props + 1] = esc(p) .. ':{"type":"' .. t .. '","description":' .. esc(sentence(8 + rnd(10))) .. '}'
    if i == 1 then req[#req + 1] = esc(p) end
  end
  return '{"type":"object","properties":{' .. concat(props, ",") .. '},"required":[' .. concat(req, ",") .. ']}'
end

local tools = {}
for i, name in ipairs(tool_names) do
  if kind == "responses" then
    tools[i] = '{"type":"function","name":' .. esc(name) .. ',"description":' .. esc(paragraph(6 + rnd(10))) ..
      ',"strict":false,"parameters":' .. schema() .. '}'
  else
    tools[i] = '{"name":' .. esc(name) .. ',"description":' .. esc(paragraph(6 + rnd(10))) ..
      ',"parameters":' .. schema() .. '}'
  end
end
local tools_json = concat(tools, ",")
local user = esc("Look at the failing test in spec/e2e and fix the cause, not the test.")

local function build(instr)
  if kind == "responses" then
    return '{"model":' .. esc(model) .. ',"instructions":' .. esc(instr) ..
      ',"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":' .. user .. '}]}]' ..
      ',"tools":[' .. tools_json .. '],"tool_choice":"auto","parallel_tool_calls":false' ..
      ',"reasoning":{"effort":"medium","summary":"auto"},"store":false,"stream":true' ..
      ',"include":["reasoning.encrypted_content"],"prompt_cache_key":"bench-0001"}'
  end
  return '{"systemInstruction":{"parts":[{"text":' .. esc(instr) .. '}]},' ..
    '"contents":[{"role":"user","parts":[{"text":' .. user .. '}]}],' ..
    '"tools":[{"functionDeclarations":[' .. tools_json .. ']}],' ..
    '"generationConfig":{"temperature":0,"topP":1,"thinkingConfig":{"includeThoughts":true,"thinkingBudget":-1}}}'
end

local body = gen.fill(build, target, 8)
textgen.write(out, body)
