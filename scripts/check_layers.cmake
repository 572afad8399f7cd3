# check_layers.cmake: the layering rule of runtime/ (docs/architecture.md),
# run as the ctest `lint_layers`:
#
#   cmake -DSRC=<source dir> -P scripts/check_layers.cmake
#
# runtime/ is in folders by layer, lowest first: core, state, net, lua, app.
# A file may include the headers of its own layer and of the layers below
# it, never of a layer above; and no file under core/, state/ or net/
# includes a Lua header (lua.h, lauxlib.h, lualib.h, luajit.h): every Lua
# binding lives in runtime/lua/. Headers are found by name (CMake adds every
# layer folder to the include path). Prints every violation with its file
# and fails when there is one.
if(NOT SRC)
  message(FATAL_ERROR "usage: cmake -DSRC=<source dir> -P check_layers.cmake")
endif()

set(layers core state net lua app)
set(no_lua core state net)

# header name -> index of the layer that holds it
foreach(layer ${layers})
  list(FIND layers ${layer} rank)
  file(GLOB headers ${SRC}/runtime/${layer}/*.h)
  foreach(h ${headers})
    get_filename_component(name ${h} NAME)
    set(rank_of_${name} ${rank})
    set(layer_of_${name} ${layer})
  endforeach()
endforeach()

set(bad 0)
foreach(layer ${layers})
  list(FIND layers ${layer} rank)
  list(FIND no_lua ${layer} lua_banned)
  file(GLOB files ${SRC}/runtime/${layer}/*.c ${SRC}/runtime/${layer}/*.h)
  foreach(f ${files})
    file(RELATIVE_PATH rel ${SRC} ${f})
    file(STRINGS ${f} lines REGEX "^[ \t]*#[ \t]*include")
    foreach(line ${lines})
      if(line MATCHES "#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"]")
        set(inc ${CMAKE_MATCH_1})
        get_filename_component(name ${inc} NAME)
        if(lua_banned GREATER -1 AND name MATCHES "^(lua|lauxlib|lualib|luajit)\\.h$")
          message("${rel}: includes <${inc}>: no Lua below runtime/lua/ (move the binding to runtime/lua/cpx_<area>_lua.c)")
          math(EXPR bad "${bad} + 1")
        elseif(DEFINED rank_of_${name} AND rank_of_${name} GREATER rank)
          message("${rel}: includes ${name} of runtime/${layer_of_${name}}/, a layer above ${layer}/ (order: core, state, net, lua, app)")
          math(EXPR bad "${bad} + 1")
        endif()
      endif()
    endforeach()
  endforeach()
endforeach()

if(bad GREATER 0)
  message(FATAL_ERROR "${bad} layering violation(s)")
endif()
