/* test_yaml.c: cpx_yaml against a plain LuaJIT state.
 *
 * Each case loads a document, stores the two results in the globals `doc`
 * and `lines`, and states its expectations as Lua expressions, which read
 * closer to the YAML than C stack juggling would.
 */
#include "cpx_test.h"
#include "cpx_yaml.h"
#include "cpx_yaml_lua.h"

#include "cpx.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

static lua_State *L;
static char err[1024];

/* Loads s; on success sets the globals doc and lines. Returns the code. */
static int load(const char *s) {
  int top = lua_gettop(L), rc;
  rc = cpx_yaml_load_string(L, "t.yaml", s, strlen(s), err, sizeof(err));
  if (rc == 0) {
    if (lua_gettop(L) != top + 2) {
      fprintf(stderr, "load pushed %d values\n", lua_gettop(L) - top);
      return -1;
    }
    lua_setglobal(L, "lines");
    lua_setglobal(L, "doc");
  } else if (lua_gettop(L) != top) {
    fprintf(stderr, "a failed load pushed values\n");
    return -1;
  }
  return rc;
}

/* Evaluates a Lua expression; true only if it ran and was true. */
static int lua_true(const char *expr) {
  char code[2048];
  int ok;
  snprintf(code, sizeof(code), "return (%s)", expr);
  if (luaL_dostring(L, code) != 0) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  ok = lua_toboolean(L, -1);
  lua_settop(L, 0);
  return ok;
}

#define CHECK_LUA(expr)                                                        \
  do {                                                                         \
    if (!lua_true(expr)) {                                                     \
      fprintf(stderr, "%s:%d: [%s] lua check failed: %s\n", __FILE__,          \
              __LINE__, cpx_t_case, expr);                                     \
      cpx_t_case_failed = 1;                                                   \
    }                                                                          \
  } while (0)

#define CHECK_ERR(s, code, text)                                               \
  do {                                                                         \
    CPX_CHECK_INT(load(s), code);                                              \
    if (strstr(err, text) == NULL) {                                           \
      fprintf(stderr, "%s:%d: [%s] error '%s' lacks '%s'\n", __FILE__,         \
              __LINE__, cpx_t_case, err, text);                                \
      cpx_t_case_failed = 1;                                                   \
    }                                                                          \
  } while (0)

static void test_scalars(void) {
  CPX_CHECK_INT(load("n1: null\nn2: Null\nn3: NULL\nn4: ~\nn5:\n"
                     "t1: true\nt2: True\nt3: TRUE\nf1: false\nf2: False\n"
                     "f3: FALSE\ny: yes\nno_: no\non: on\n"
                     "i1: 42\ni2: -17\ni3: +5\ni4: 0x1F\ni5: 0o17\ni6: 0\n"
                     "i7: 007\ni8: 0xff\n"
                     "x1: 1.5\nx2: -0.25\nx3: 1e3\nx4: .5\nx5: 2.\n"
                     "x6: 6.02E+23\ninf1: .inf\ninf2: -.Inf\ninf3: +.INF\n"
                     "nan: .NaN\n"
                     "s1: hello world\ns2: '42'\ns3: \"true\"\ns4: 0x\n"
                     "s5: 1.2.3\ns6: -0x10\ns7: 0o9\ns8: .\ns9: 1e\n"
                     "s10: \"\"\ns11: ''\ns12: 12:30\ns13: null-ish\n"
                     "b1: |\n  line1\n  line2\nb2: >-\n  folded\n  text\n"
                     "b3: |-\n  7\n"
                     "tg1: !!str 123\ntg2: !!int \"12\"\ntg3: !!float 1\n"
                     "tg4: !!bool \"true\"\ntg5: !!null ''\ntg6: ! 12\n"
                     "tg7: !custom 12\n"),
                0);
  CHECK_LUA("doc.n1 == nil and doc.n2 == nil and doc.n3 == nil and "
            "doc.n4 == nil and doc.n5 == nil");
  CHECK_LUA("lines.n5 == 5");
  CHECK_LUA("doc.t1 == true and doc.t2 == true and doc.t3 == true");
  CHECK_LUA("doc.f1 == false and doc.f2 == false and doc.f3 == false");
  CHECK_LUA("doc.y == 'yes' and doc.no_ == 'no' and doc.on == 'on'");
  CHECK_LUA("doc.i1 == 42 and doc.i2 == -17 and doc.i3 == 5");
  CHECK_LUA("doc.i4 == 31 and doc.i5 == 15 and doc.i6 == 0");
  CHECK_LUA("doc.i7 == 7 and doc.i8 == 255");
  CHECK_LUA("doc.x1 == 1.5 and doc.x2 == -0.25 and doc.x3 == 1000");
  CHECK_LUA("doc.x4 == 0.5 and doc.x5 == 2 and doc.x6 == 6.02e23");
  CHECK_LUA("doc.inf1 == math.huge and doc.inf2 == -math.huge and "
            "doc.inf3 == math.huge");
  CHECK_LUA("doc.nan ~= doc.nan");
  CHECK_LUA("doc.s1 == 'hello world' and doc.s2 == '42' and "
            "doc.s3 == 'true' and doc.s4 == '0x'");
  CHECK_LUA("doc.s5 == '1.2.3' and doc.s6 == '-0x10' and doc.s7 == '0o9' and "
            "doc.s8 == '.' and doc.s9 == '1e'");
  CHECK_LUA("doc.s10 == '' and doc.s11 == '' and doc.s12 == '12:30' and "
            "doc.s13 == 'null-ish'");
  CHECK_LUA("doc.b1 == 'line1\\nline2\\n' and doc.b2 == 'folded text' and "
            "doc.b3 == '7'");
  CHECK_LUA("doc.tg1 == '123' and doc.tg2 == 12 and doc.tg3 == 1 and "
            "doc.tg4 == true and doc.tg5 == nil and doc.tg6 == '12' and "
            "doc.tg7 == 12");
  CHECK_ERR("a: !!int abc\n", CPX_EPARSE, "t.yaml:1:4: cannot decode 'abc'");
}

static void test_nested(void) {
  CPX_CHECK_INT(load("a:\n"
                     "  b:\n"
                     "    c: 1\n"
                     "  list:\n"
                     "    - x\n"
                     "    - {k: v, n: [1, 2, [3]]}\n"
                     "    -\n"
                     "    - ~\n"
                     "    - last\n"
                     "empty_map: {}\n"
                     "empty_seq: []\n"
                     "\"quoted key\": 1\n"
                     "dotted.key: 2\n"
                     "1: one\n"
                     "true: yes\n"),
                0);
  CHECK_LUA("doc.a.b.c == 1");
  CHECK_LUA("#doc.a.list == 5 and doc.a.list[1] == 'x'");
  CHECK_LUA("doc.a.list[2].k == 'v' and doc.a.list[2].n[3][1] == 3");
  /* Nulls inside sequences are the lightuserdata NULL sentinel. */
  CHECK_LUA("type(doc.a.list[3]) == 'userdata' and doc.a.list[5] == 'last'");
  CHECK_LUA("doc.a.list[3] == doc.a.list[4]");
  CHECK_LUA("next(doc.empty_map) == nil and next(doc.empty_seq) == nil");
  CHECK_LUA("doc['quoted key'] == 1 and doc['dotted.key'] == 2");
  /* Keys are always strings, whatever they look like. */
  CHECK_LUA("doc['1'] == 'one' and doc[1] == nil and doc['true'] == 'yes'");
  /* The line table. */
  CHECK_LUA("lines.a == 1 and lines['a.b'] == 2 and lines['a.b.c'] == 3");
  CHECK_LUA("lines['a.list'] == 4 and lines['a.list.1'] == 5");
  CHECK_LUA("lines['a.list.2'] == 6 and lines['a.list.2.k'] == 6");
  CHECK_LUA("lines['a.list.2.n.3.1'] == 6 and lines['a.list.5'] == 9");
  CHECK_LUA("lines['dotted.key'] == 13 and lines['quoted key'] == 12");
}

static void test_array_mark(void) {
  /* Without the metatable registered, sequences are plain tables. */
  CPX_CHECK_INT(load("s: [1, 2]\nm: {a: 1}\n"), 0);
  CHECK_LUA("getmetatable(doc.s) == nil");
  luaL_newmetatable(L, "cpx.json.array_mt");
  lua_setglobal(L, "array_mt");
  CPX_CHECK_INT(load("s: [1, 2]\nm: {a: 1}\ne: []\nn: [[]]\n"), 0);
  CHECK_LUA("getmetatable(doc.s) == array_mt and getmetatable(doc.e) == "
            "array_mt and getmetatable(doc.n[1]) == array_mt");
  CHECK_LUA("getmetatable(doc.m) == nil and getmetatable(doc) == nil");
  /* A top-level sequence is marked too. */
  CPX_CHECK_INT(load("- a\n- b\n"), 0);
  CHECK_LUA("getmetatable(doc) == array_mt and doc[2] == 'b' and "
            "lines['2'] == 2");
}

static void test_anchors_merge(void) {
  CPX_CHECK_INT(load("base: &b\n"
                     "  x: 1\n"
                     "  y: 2\n"
                     "  list: &l [a, b]\n"
                     "other: &o {y: 20, z: 30}\n"
                     "copy: *b\n"
                     "m1:\n"
                     "  <<: *b\n"
                     "  y: 3\n"
                     "m2:\n"
                     "  y: 4\n"
                     "  <<: [*o, *b]\n"
                     "m3:\n"
                     "  <<: {x: 9}\n"
                     "  x: ~\n"
                     "seq: [*l, *l]\n"
                     "s: &s scalar\n"
                     "t: *s\n"
                     "k: {*s : v}\n"
                     "re: &s again\n"
                     "u: *s\n"
                     "'<<': literal\n"),
                0);
  CHECK_LUA("doc.copy.x == 1 and doc.copy.y == 2 and doc.copy.list[2] == 'b'");
  /* Aliases are copies, not shared tables. */
  CHECK_LUA("doc.copy ~= doc.base and doc.copy.list ~= doc.base.list");
  CHECK_LUA("doc.m1.x == 1 and doc.m1.y == 3 and doc.m1.list[1] == 'a'");
  CHECK_LUA("doc.m1['<<'] == nil");
  /* Explicit keys beat merged ones; earlier merge sources beat later. */
  CHECK_LUA("doc.m2.y == 4 and doc.m2.z == 30 and doc.m2.x == 1");
  CHECK_LUA("doc.m3.x == nil");
  CHECK_LUA("doc.seq[1][1] == 'a' and doc.seq[2][2] == 'b'");
  CHECK_LUA("doc.t == 'scalar' and doc.k.scalar == 'v'");
  CHECK_LUA("doc.u == 'again' and doc['<<'] == 'literal'");
  /* Lines: the mapping's own keys, merged keys where they are written. */
  CHECK_LUA("lines['m1.y'] == 9 and lines['m1.x'] == 2");
  CHECK_LUA("lines['m2.y'] == 11 and lines['m2.z'] == 5");
  CHECK_LUA("lines['copy.x'] == 2 and lines.copy == 6");

  CHECK_ERR("a: *nope\n", CPX_EPARSE, "t.yaml:1:4: unknown anchor 'nope'");
  CHECK_ERR("a: &a [1, *a]\n", CPX_EPARSE, "contains itself");
  CHECK_ERR("a: &a {b: *a}\n", CPX_EPARSE, "contains itself");
  CHECK_ERR("a:\n  <<: 5\n", CPX_EPARSE, "t.yaml:2:7: '<<' needs a mapping");
  CHECK_ERR("x: &x [1]\na:\n  <<: [*x]\n", CPX_EPARSE, "'<<' needs a mapping");
  CHECK_ERR("? [a, b]\n: v\n", CPX_EPARSE, "mapping keys must be scalars");
}

static void test_alias_bomb(void) {
  CHECK_ERR("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\","
            "\"lol\",\"lol\"]\n"
            "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
            "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
            "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
            "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
            "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
            "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
            "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
            "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n",
            CPX_ELIMIT, "aliases expand to more than 10000 nodes");
  /* Below the bound is fine. */
  CPX_CHECK_INT(load("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
                     "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                     "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"),
                0);
  CHECK_LUA("#doc.c == 9 and doc.c[9][9][9] == 9");
  /* Nesting is bounded as well. */
  {
    static char deep[4000];
    int i;
    for (i = 0; i < 1500; i++)
      deep[i] = '[';
    for (; i < 3000; i++)
      deep[i] = ']';
    deep[i] = '\0';
    CPX_CHECK(load(deep) < 0);
  }
}

static void test_errors(void) {
  CHECK_ERR("a: 1\nb: [1, 2\nc: 3\n", CPX_EPARSE, "t.yaml:");
  CHECK_ERR("a: 1\n  b: 2\n", CPX_EPARSE,
            "t.yaml:2:4: mapping values are not allowed in this context");
  CHECK_ERR("a:\n\t- b\n", CPX_EPARSE, "t.yaml:2:");
  CHECK_ERR("a: 1\nb: 2\na: 3\n", CPX_EPARSE,
            "t.yaml:3:1: duplicate key 'a' (first at line 1)");
  CHECK_ERR("m:\n  k: 1\n  'k': 2\n", CPX_EPARSE, "t.yaml:3:3: duplicate key");
  CHECK_ERR("a: \"\xff\"\n", CPX_EPARSE, "t.yaml:1:5:");
  CHECK_ERR("just a scalar\n", CPX_EPARSE, "expected a mapping");
  CPX_CHECK_INT(
      cpx_yaml_load_file(L, "spec/fixtures/yaml/nope.yaml", err, sizeof(err)),
      -ENOENT);
  CPX_CHECK(strstr(err, "spec/fixtures/yaml/nope.yaml: No such file") != NULL);
  CPX_CHECK_INT(lua_gettop(L), 0);
}

static void test_empty(void) {
  CPX_CHECK_INT(load(""), 0);
  CHECK_LUA("type(doc) == 'table' and next(doc) == nil and next(lines) == nil");
  CPX_CHECK_INT(load("# only a comment\n\n"), 0);
  CHECK_LUA("type(doc) == 'table' and next(doc) == nil");
  CPX_CHECK_INT(load("---\n...\n"), 0);
  CHECK_LUA("type(doc) == 'table' and next(doc) == nil");
  CPX_CHECK_INT(load("~\n"), 0);
  CHECK_LUA("type(doc) == 'table' and next(doc) == nil");
  /* Only the first document counts; later ones are not even parsed. */
  CPX_CHECK_INT(load("a: 1\n---\nb: [unclosed\n"), 0);
  CHECK_LUA("doc.a == 1 and doc.b == nil");
}

static void test_config_fixture(void) {
  int rc =
      cpx_yaml_load_file(L, "spec/fixtures/yaml/config.yaml", err, sizeof(err));
  CPX_CHECK_INT(rc, 0);
  if (rc != 0) {
    fprintf(stderr, "%s\n", err);
    return;
  }
  lua_setglobal(L, "lines");
  lua_setglobal(L, "doc");
  CHECK_LUA("doc.host == '' and doc.port == 8317");
  CHECK_LUA("doc.tls.enable == false and doc.tls.cert == ''");
  CHECK_LUA("doc['remote-management']['allow-remote'] == false");
  CHECK_LUA("doc['auth-dir'] == '~/.cli-proxy-api' and "
            "doc['auth-dir-null'] == nil");
  CHECK_LUA("#doc['api-keys'] == 2 and doc['api-keys'][1] == "
            "'sk-test-client-1' and doc['api-keys'][2] == 'sk-test-client-2'");
  CHECK_LUA("getmetatable(doc['api-keys']) == array_mt");
  CHECK_LUA("doc.debug == true and doc['request-retry'] == 3");
  CHECK_LUA("doc['proxy-url'] == 'socks5://user:pass@192.168.1.1:1080/'");
  CHECK_LUA("doc['quota-exceeded']['switch-preview-model'] == true");
  CHECK_LUA("doc.routing.strategy == 'round-robin'");
  CHECK_LUA("doc.streaming['keepalive-seconds'] == 15");

  CHECK_LUA("#doc['gemini-api-key'] == 2");
  CHECK_LUA("doc['gemini-api-key'][1].headers['X-Custom-Header'] == "
            "'custom-value'");
  CHECK_LUA("doc['gemini-api-key'][1].models[1].alias == 'gemini-flash'");
  CHECK_LUA("doc['gemini-api-key'][1]['excluded-models'][2] == '*-preview'");
  CHECK_LUA("doc['gemini-api-key'][2]['api-key'] == 'AIzaSy-test-2'");
  CHECK_LUA("doc['claude-api-key'][1]['base-url'] == "
            "'https://www.example.com' and "
            "doc['claude-api-key'][1].priority == 10");
  CHECK_LUA("doc['claude-api-key'][1].cloak['sensitive-words'][2] == "
            "'internal'");

  CHECK_LUA("#doc['openai-compatibility'] == 1");
  CHECK_LUA("doc['openai-compatibility'][1].name == 'openrouter'");
  CHECK_LUA("doc['openai-compatibility'][1]['base-url'] == "
            "'https://openrouter.ai/api/v1'");
  /* Merged from the anchor; the explicit headers replace the merged ones. */
  CHECK_LUA("doc['openai-compatibility'][1].priority == 1");
  CHECK_LUA("doc['openai-compatibility'][1].headers['X-Shared'] == nil");
  CHECK_LUA("#doc['openai-compatibility'][1]['api-key-entries'] == 2");
  CHECK_LUA("doc['openai-compatibility'][1]['api-key-entries'][1]"
            "['proxy-url'] == 'socks5://proxy.example.com:1080'");
  CHECK_LUA("doc['openai-compatibility'][1].models[2].alias == 'kimi-k2'");
  CHECK_LUA("doc['openai-compatibility'][1].models[2].thinking.levels[3] == "
            "'high'");

  CHECK_LUA("doc.payload.default[1].params["
            "'generationConfig.thinkingConfig.thinkingBudget'] == 32768");
  CHECK_LUA("doc.payload.default[1].models[1].protocol == 'gemini'");
  CHECK_LUA("doc.payload.override[1].params['reasoning.effort'] == 'high'");
  CHECK_LUA("doc.payload.filter[1].params[1] == "
            "'generationConfig.responseJsonSchema'");

  /* Lines, for validation messages. */
  CHECK_LUA("lines.port == 5 and lines['tls.enable'] == 8");
  CHECK_LUA("lines['api-keys.2'] == 21");
  CHECK_LUA("lines['openai-compatibility.1.base-url'] == 71");
  CHECK_LUA("lines['openai-compatibility.1.models.2.alias'] == 82");
  /* A merged key points where the anchor wrote it. */
  CHECK_LUA("lines['openai-compatibility.1.priority'] == 64");
  CHECK_LUA("lines['routing.strategy'] == 33");
  CHECK_LUA("lines['payload.default.1.params."
            "generationConfig.thinkingConfig.thinkingBudget'] == 92");
}

/* An allocator with a budget, to fail Lua allocations at every point. */
typedef struct {
  size_t used, limit;
} budget_t;

static void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  budget_t *b = ud;
  void *p;
  if (nsize == 0) {
    free(ptr);
    b->used -= osize;
    return NULL;
  }
  if (nsize > osize && b->used + (nsize - osize) > b->limit)
    return NULL;
  p = realloc(ptr, nsize);
  if (p != NULL)
    b->used = b->used - osize + nsize;
  return p;
}

/* Out of memory anywhere during a load is CPX_ENOMEM with nothing pushed,
 * and nothing leaks (checked under ASan). */
static void test_out_of_memory(void) {
  static const char doc[] = "a: &a {x: [1, 2, {y: z}]}\n"
                            "b:\n  <<: *a\n  w: [*a, *a, ~]\n"
                            "c: [\"long string value here\", 3.5, true]\n";
  budget_t b = {0, (size_t)-1};
  lua_State *M = lua_newstate(budget_alloc, &b);
  size_t base, extra;
  int rc, ok = 0, nomem = 0;
  char e[256];

  if (M == NULL) /* a non-GC64 LuaJIT: nothing to test */
    return;
  lua_gc(M, LUA_GCSTOP, 0);
  base = b.used;
  for (extra = 0; extra < 64 * 1024 && !ok; extra += 64) {
    b.limit = base + extra;
    rc = cpx_yaml_load_string(M, "m.yaml", doc, sizeof(doc) - 1, e, sizeof(e));
    if (rc == 0) {
      ok = 1;
      CPX_CHECK_INT(lua_gettop(M), 2);
    } else {
      CPX_CHECK_INT(rc, CPX_ENOMEM);
      CPX_CHECK_INT(lua_gettop(M), 0);
      nomem++;
    }
    b.limit = (size_t)-1;
    lua_settop(M, 0);
    lua_gc(M, LUA_GCCOLLECT, 0);
    lua_gc(M, LUA_GCSTOP, 0);
    base = b.used;
  }
  CPX_CHECK(ok);
  CPX_CHECK(nomem > 0);
  lua_close(M);
}

/* The core's half alone: events checked and indexed, no Lua state. */
static void test_parse_without_lua(void) {
  static const char doc[] = "a: &x [1, 2]\nb: *x\nc: {d: e}\n";
  cpx_yaml_doc_t d;
  size_t alias = 0;
  CPX_CHECK_INT(
      cpx_yaml_parse(&d, "p.yaml", doc, sizeof(doc) - 1, err, sizeof(err)), 0);
  CPX_CHECK(d.nev > 0);
  CPX_CHECK_INT(d.ev[0].type, YAML_MAPPING_START_EVENT);
  CPX_CHECK_INT(d.end[0], d.nev); /* the root spans the document */
  for (size_t i = 0; i < d.nev; i++)
    if (d.ev[i].type == YAML_ALIAS_EVENT)
      alias = i;
  CPX_CHECK(alias > 0);
  CPX_CHECK_INT(d.ev[d.target[alias]].type, YAML_SEQUENCE_START_EVENT);
  CPX_CHECK_STR(cpx_yaml_event_anchor(&d.ev[d.target[alias]]), "x");
  cpx_yaml_doc_free(&d);
  CPX_CHECK(d.ev == NULL);

  CPX_CHECK_INT(cpx_yaml_parse(&d, "q.yaml", "a: *nope\n", 9, err, sizeof(err)),
                CPX_EPARSE);
  CPX_CHECK(strstr(err, "q.yaml:1:") == err);
  CPX_CHECK(strstr(err, "unknown anchor 'nope'") != NULL);
  CPX_CHECK(d.ev == NULL); /* nothing left to free on failure */
}

int main(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  CPX_TEST_RUN(test_scalars);
  CPX_TEST_RUN(test_nested);
  CPX_TEST_RUN(test_array_mark);
  CPX_TEST_RUN(test_anchors_merge);
  CPX_TEST_RUN(test_alias_bomb);
  CPX_TEST_RUN(test_errors);
  CPX_TEST_RUN(test_empty);
  CPX_TEST_RUN(test_config_fixture);
  CPX_TEST_RUN(test_out_of_memory);
  CPX_TEST_RUN(test_parse_without_lua);
  lua_close(L);
  CPX_TEST_DONE();
}
