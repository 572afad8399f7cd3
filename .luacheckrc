-- luacheck config: LuaJIT, no globals.
std = "luajit"
max_line_length = 120
unused_args = false
files["spec/"] = { std = "+busted" }
exclude_files = { "build*/", "spec/e2e/node_modules/" }
