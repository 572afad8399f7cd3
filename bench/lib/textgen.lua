-- Deterministic filler text for the benchmark bodies: a fixed word list and
-- an LCG, so every run sends the same bytes.
--   local gen = require("textgen").new(seed)
--   gen.rnd(n), gen.sentence(words), gen.paragraph(sentences), gen.esc(s),
--   gen.fill(build, target, sentences, exact); textgen.write(path, body)
local _M = {}

_M.words = {
  "the", "agent", "reads", "files", "in", "the", "repository", "and", "edits", "them", "with", "care",
  "before", "running", "tests", "always", "check", "the", "working", "directory", "use", "absolute",
  "paths", "when", "possible", "prefer", "small", "focused", "changes", "explain", "what", "you",
  "changed", "and", "why", "never", "commit", "secrets", "tool", "results", "may", "be", "truncated",
  "search", "for", "symbols", "first", "then", "open", "only", "relevant", "ranges", "of", "a", "file",
  "shell", "commands", "run", "in", "a", "sandbox", "network", "access", "is", "limited", "to",
  "loopback", "respect", "the", "user's", "instructions", "over", "defaults", "keep", "answers", "short",
}

-- Claude Code's tool names (24).
_M.tool_names = { "Agent", "Bash", "CronCreate", "CronDelete", "CronList", "Edit", "EnterWorktree",
  "ExitWorktree", "NotebookEdit", "Read", "ReportFindings", "ScheduleWakeup", "SendMessage", "Skill",
  "TaskCreate", "TaskGet", "TaskList", "TaskOutput", "TaskStop", "TaskUpdate", "WebFetch", "WebSearch",
  "Workflow", "Write" }

-- JSON string literal of s.
function _M.esc(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == "\n" then return "\\n" elseif c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

function _M.new(seed)
  local words = _M.words
  local g = { words = words, tool_names = _M.tool_names, esc = _M.esc }
  function g.rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n + 1 end
  function g.sentence(n)
    local t = {}
    for i = 1, n do t[i] = words[g.rnd(#words)] end
    t[1] = t[1]:sub(1, 1):upper() .. t[1]:sub(2)
    return table.concat(t, " ") .. "."
  end
  function g.paragraph(sentences)
    local t = {}
    for i = 1, sentences do t[i] = g.sentence(6 + g.rnd(12)) end
    return table.concat(t, " ")
  end
  -- build(text) with text grown by paragraph(sentences) pieces, joined by
  -- blank lines, until the result is at least target bytes; exact: the text
  -- cut so it is target bytes.
  function g.fill(build, target, sentences, exact)
    local paras = {}
    local body = build("")
    while #body < target do
      paras[#paras + 1] = g.paragraph(sentences)
      body = build(table.concat(paras, "\n\n"))
    end
    if not exact then return body end
    local text = table.concat(paras, "\n\n")
    return build(text:sub(1, #text - (#body - target)))
  end
  return g
end

-- Writes body to the file path.
function _M.write(path, body)
  local f = assert(io.open(path, "wb"))
  f:write(body)
  f:close()
end

return _M
