-- Writes an Anthropic Messages request of about TARGET bytes (default 78000)
-- shaped like the one Claude Code 2.1.197 sends first: `system` as three text
-- blocks (billing header, then two with cache_control), 24 tools with an
-- input_schema ($schema draft 2020-12), a user turn of text blocks followed by
-- a role:"system" message, thinking adaptive + output_config.effort,
-- context_management, metadata.user_id as a JSON string, max_tokens 64000.
-- Deterministic (own word list and LCG).
--   luajit make_claude_body.lua OUTFILE [TARGET_BYTES] [MODEL] [STREAM]
local out, target, model = arg[1], tonumber(arg[2] or "78000"), arg[3] or "bench-model"
local stream = arg[4] == "stream"
assert(out, "usage: luajit make_claude_body.lua OUTFILE [TARGET_BYTES] [MODEL] [stream]")

package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local textgen = require("textgen")
local gen = textgen.new(4242)
local words, tool_names, esc = gen.words, gen.tool_names, gen.esc
local rnd, sentence, paragraph = gen.rnd, gen.sentence, gen.paragraph

local function tool(name)
  local props, req = {}, {}
  for i = 1, 2 + rnd(4) do
    local p = words[rnd(#words)] .. "_" .. i
    local kind = ({ "string", "string", "number", "boolean" })[rnd(4)]
    props[#props + 1] = esc(p) .. ':{"type":"' .. kind .. '","description":' .. esc(sentence(8 + rnd(10))) .. '}'
    if i == 1 then req[#req + 1] = esc(p) end
  end
  return '{"name":' .. esc(name) .. ',"description":' .. esc(paragraph(6 + rnd(10))) ..
    ',"input_schema":{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{' ..
    table.concat(props, ",") .. '},"required":[' .. table.concat(req, ",") .. '],"additionalProperties":false}}'
end

local tools = {}
for i, n in ipairs(tool_names) do tools[i] = tool(n) end
local tools_json = "[" .. table.concat(tools, ",") .. "]"
local reminder = "<system-reminder>\n" .. paragraph(4) .. "\n</system-reminder>\n\n"
local agents = "Available agent types for the Agent tool:\n" .. paragraph(6)
local user_id = esc('{"device_id":"0f3c9a7e5b1d4c2a8e6f0b9d7c5a3e1f0f3c9a7e5b1d4c2a8e6f0b9d7c5a3e1f","account_uuid":"","session_id":"6d1f2a9c-3b4e-4f5a-8c7d-9e0f1a2b3c4d"}')

local function build(system)
  return '{"model":' .. esc(model) .. ',"messages":[' ..
    '{"role":"user","content":[{"type":"text","text":' .. esc(reminder) .. '},' ..
    '{"type":"text","text":"Reply with the word PONG","cache_control":{"type":"ephemeral"}}]},' ..
    '{"role":"system","content":' .. esc(agents) .. '}],' ..
    '"system":[{"type":"text","text":"x-anthropic-billing-header: cc_version=2.1.197.a1b; cc_entrypoint=sdk-cli; cch=00000;"},' ..
    '{"type":"text","text":"You are Claude Code, Anthropic\'s official CLI for Claude.","cache_control":{"type":"ephemeral"}},' ..
    '{"type":"text","text":' .. esc(system) .. ',"cache_control":{"type":"ephemeral"}}],' ..
    '"tools":' .. tools_json .. ',' ..
    '"metadata":{"user_id":' .. user_id .. '},' ..
    '"max_tokens":64000,"thinking":{"type":"adaptive"},"output_config":{"effort":"high"},' ..
    '"context_management":{"edits":[{"type":"clear_thinking_20251015","keep":"all"}]},' ..
    '"stream":' .. (stream and "true" or "false") .. '}'
end

-- the system prompt cut so the body lands on the target size
local body = gen.fill(build, target, 5, true)
textgen.write(out, body)
io.stderr:write(string.format("make_claude_body: %s, %d bytes, %d tools\n", out, #body, #tool_names))
