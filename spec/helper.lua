-- busted helper: makes the project's Lua modules and the runtime's `cpx`
-- module (build/cpx.so, the same C code the server runs) loadable.
local root = os.getenv("CPX_ROOT") or "."
local moddir = os.getenv("CPX_LUAMOD_DIR") or (root .. "/build")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. root .. "/spec/lua/?.lua;" .. package.path
package.cpath = moddir .. "/?.so;" .. package.cpath
