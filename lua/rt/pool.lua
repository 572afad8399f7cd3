-- rt.pool: which target serves a request, and what to do when it fails.
-- This first version round-robins over the model's targets and each
-- target's keys and tries the next target when the classification says
-- "retry" (no cooldowns yet).
--
-- Contract used by rt.pipeline:
--   pool.run(app, ctx, model, attempt) -> outcome
--     attempt(target, key) -> outcome, where outcome is one of
--       { ok = true, ... }                       success, stop here
--       { status = n, headers = t, body = s }    upstream answered an error
--       { err = "message" }                      transport failure
--     run returns the successful outcome or the last failure; when no
--     target exists it returns { status = 502, message = ..., own = true }.
local ipairs = ipairs

local _M = {}

local function classify(app, target, outcome)
  if outcome.ok then return "success" end
  if outcome.err then return "retry" end
  local p = app.providers[target.provider]
  if p.classify then return p.classify(outcome.status, outcome.headers, outcome.body) end
  return outcome.status >= 500 and "retry" or "fatal"
end

function _M.run(app, ctx, model, attempt)
  local reg = app.registry
  local targets, alias = reg:lookup(model)
  if not targets then
    return { status = 502, own = true, type = "server_error", code = "unknown_provider",
             message = "unknown provider for model " .. model }
  end
  local n = #targets
  local start = reg:next_index("m:" .. alias, n)
  local last
  for i = 0, n - 1 do
    local t = targets[(start - 1 + i) % n + 1]
    local key = t.keys[reg:next_index(t.keys, #t.keys)]
    local out = attempt(t, key)
    local action = classify(app, t, out)
    if action == "success" or action == "fatal" then return out end
    last = out
    if ctx.client_gone and ctx.client_gone() then return last end
  end
  return last
end

return _M
