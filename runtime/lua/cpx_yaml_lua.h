/* cpx_yaml_lua.h: YAML (libyaml, through runtime/core/cpx_yaml.h) to Lua
 * tables.
 *
 * cpx_yaml_load_file parses one YAML document and pushes two values:
 *   1. the document as a Lua table (mappings -> tables with string keys,
 *      sequences -> tables carrying cpx.json.array_mt when that metatable is
 *      registered in the registry as "cpx.json.array_mt"; plain scalars are
 *      typed as YAML 1.2 core schema: null/~/empty -> nil (kept as the
 *      sentinel cpx.json.null inside sequences), true/false, integers
 *      (decimal, 0x, 0o), floats; quoted scalars stay strings);
 *   2. a table mapping each key path to its line number, e.g.
 *      ["port"] = 3, ["openai-compatibility.1.base-url"] = 12 (1-based
 *      sequence indices), so validation errors can name file and line.
 * Anchors and aliases are resolved; merge keys (<<) are supported.
 *
 * Returns 0, or a negative code with "file:line:col: reason" in err and
 * nothing pushed. Stack: needs 10 free slots.
 */
#ifndef CPX_YAML_LUA_H
#define CPX_YAML_LUA_H

#include <stddef.h>

#include <lua.h>

int cpx_yaml_load_file(lua_State *L, const char *path, char *err,
                       size_t errlen);
int cpx_yaml_load_string(lua_State *L, const char *name, const char *s,
                         size_t n, char *err, size_t errlen);

/* Pushes a table mapping every node's key path (segments joined with
 * "\31"; "" is the root mapping) to its place in the text: { s, e (1-based,
 * inclusive byte offsets, trailing blanks excluded), line, col (0-based),
 * kind = "scalar"|"map"|"seq"|"alias", flow, empty (a key with no value),
 * n (children), ccol (column of the first child), anchor and tag (the
 * node carries an anchor or an explicit tag), and for mapping values
 * ks, ke, kcol, kline (the key) }. The management API edits config.yaml
 * at these spans so the rest of the file stays byte-identical. */
int cpx_yaml_spans(lua_State *L, const char *s, size_t n, char *err,
                   size_t errlen);

#endif /* CPX_YAML_LUA_H */
