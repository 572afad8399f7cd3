-- Writes a Chat Completions request body of about TARGET bytes (default 78000),
-- shaped like what a coding agent such as Claude Code sends: a long system
-- prompt, a couple of dozen tool declarations with JSON schemas, and a short
-- conversation. The text is generated deterministically from a word list.
--   luajit make_body.lua OUTFILE [TARGET_BYTES] [MODEL]
local out, target, model = arg[1], tonumber(arg[2] or "78000"), arg[3] or "bench-model"
assert(out, "usage: luajit make_body.lua OUTFILE [TARGET_BYTES] [MODEL]")

local words = {
  "the", "agent", "reads", "files", "in", "the", "repository", "and", "edits", "them", "with", "care",
  "before", "running", "tests", "always", "check", "the", "working", "directory", "use", "absolute",
  "paths", "when", "possible", "prefer", "small", "focused", "changes", "explain", "what", "you",
  "changed", "and", "why", "never", "commit", "secrets", "tool", "results", "may", "be", "truncated",
  "search", "for", "symbols", "first", "then", "open", "only", "relevant", "ranges", "of", "a", "file",
  "shell", "commands", "run", "in", "a", "sandbox", "network", "access", "is", "limited", "to",
  "loopback", "respect", "the", "user's", "instructions", "over", "defaults", "keep", "answers", "short",
}
local seed = 12345
local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n + 1 end
local function sentence(n)
  local t = {}
  for i = 1, n do t[i] = words[rnd(#words)] end
  t[1] = t[1]:sub(1, 1):upper() .. t[1]:sub(2)
  return table.concat(t, " ") .. "."
end
local function paragraph(sentences)
  local t = {}
  for i = 1, sentences do t[i] = sentence(6 + rnd(12)) end
  return table.concat(t, " ")
end

local function esc(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == "\n" then return "\\n" elseif c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local tool_names = { "Agent", "Bash", "CronCreate", "CronDelete", "CronList", "Edit", "EnterWorktree",
  "ExitWorktree", "NotebookEdit", "Read", "ReportFindings", "ScheduleWakeup", "SendMessage", "Skill",
  "TaskCreate", "TaskGet", "TaskList", "TaskOutput", "TaskStop", "TaskUpdate", "WebFetch", "WebSearch",
  "Workflow", "Write" }

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

local paras = {}
local body = build("")
while #body < target do
  paras[#paras + 1] = paragraph(5)
  body = build(table.concat(paras, "\n\n"))
end
-- trim the system prompt so the body lands on the target size
local sys = table.concat(paras, "\n\n")
sys = sys:sub(1, #sys - (#body - target))
body = build(sys)

local f = assert(io.open(out, "wb"))
f:write(body)
f:close()
io.stderr:write(string.format("make_body: %s, %d bytes, %d tools\n", out, #body, #tool_names))
