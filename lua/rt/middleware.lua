-- rt.middleware: the hook chain configured by `lua.middleware`.
-- This first version accepts an empty chain only; every phase is a no-op.
--
-- Contract used by rt.pipeline and rt.server:
--   mw.load(cfg) -> chain | nil, err
--   mw.run(chain, phase, ctx, ...) -> for "access": true | false, status,
--     message; for the other phases nothing (hooks edit their arguments)
--   mw.wants_chunks(chain) -> bool (an on_chunk hook disables passthrough)
local _M = {}

function _M.load(cfg)
  local list = cfg.lua and cfg.lua.middleware or {}
  if #list > 0 then
    return nil, "lua.middleware: middleware is not supported yet"
  end
  return { hooks = {} }
end

function _M.run(chain, phase, ctx, ...)
  if phase == "access" then return true end
end

function _M.wants_chunks(chain)
  return false
end

return _M
