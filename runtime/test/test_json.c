/* test_json.c: cpx.json (yajl binding) through its C entry points and the
 * Lua functions, plus a random-input robustness run of the decoder. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "cpx.h"
#include "cpx_json_scan.h"
#include "cpx_lua_util.h"
#include "cpx_test.h"

static lua_State *L;

/* decode with the C API, then encode with the C API; returns the text
 * (malloc'd) or NULL, with the decode error in err. */
static char *roundtrip(const char *s, size_t n, char *err, size_t errlen) {
  char *out = NULL;
  size_t outlen = 0;
  int top = lua_gettop(L);
  err[0] = '\0';
  if (cpx_json_decode_push(L, s, n, err, errlen) != 0) {
    CPX_CHECK_INT(lua_gettop(L), top);
    return NULL;
  }
  CPX_CHECK_INT(lua_gettop(L), top + 1);
  if (cpx_json_encode_value(L, -1, &out, &outlen) != 0)
    snprintf(err, errlen, "encode failed");
  else
    CPX_CHECK_INT(strlen(out), outlen);
  lua_settop(L, top);
  return out;
}

static void check_rt(const char *in, const char *want) {
  char err[256];
  char *out = roundtrip(in, strlen(in), err, sizeof(err));
  if (!out) {
    fprintf(stderr, "  input %s: %s\n", in, err);
    CPX_CHECK(out != NULL);
    return;
  }
  CPX_CHECK_STR(out, want);
  free(out);
}

/* Expects a decode error whose message starts with "json: " and contains
 * " at byte ". */
static void check_bad(const char *in, size_t n) {
  char err[256];
  char *out = roundtrip(in, n, err, sizeof(err));
  CPX_CHECK(out == NULL);
  free(out);
  CPX_CHECK(strncmp(err, "json: ", 6) == 0);
  CPX_CHECK(strstr(err, " at byte ") != NULL);
}

/* Runs a Lua chunk that returns a string; compares it with want. */
static void check_lua(const char *code, const char *want) {
  int top = lua_gettop(L);
  if (luaL_dostring(L, code) != 0) {
    fprintf(stderr, "  lua error: %s\n", lua_tostring(L, -1));
    CPX_CHECK(0);
  } else {
    const char *got = lua_tostring(L, -1);
    CPX_CHECK(got != NULL);
    if (got)
      CPX_CHECK_STR(got, want);
  }
  lua_settop(L, top);
}

static void test_empty_containers(void) {
  check_rt("[]", "[]");
  check_rt("{}", "{}");
  check_rt(" [ ] ", "[]");
  /* one key per object: Lua's key order is not stable across builds */
  check_rt("{\"a\":[]}", "{\"a\":[]}");
  check_rt("[[],{},[[]],[{}]]", "[[],{},[[]],[{}]]");
  check_rt("{\"a\":{\"b\":[]}}", "{\"a\":{\"b\":[]}}");
}

static void test_scalars(void) {
  check_rt("null", "null");
  check_rt("true", "true");
  check_rt("false", "false");
  check_rt("[null,true,false,null]", "[null,true,false,null]");
  check_rt("{\"x\":null}", "{\"x\":null}");
  check_rt("\"\"", "\"\"");
  check_rt("\"tab\\tnl\\nq\\\"bs\\\\sl\\/\"", "\"tab\\tnl\\nq\\\"bs\\\\sl/\"");
  check_rt("\"\\u0001\\u001F\"", "\"\\u0001\\u001F\"");
  check_rt("\"a\\u0000b\"", "\"a\\u0000b\"");
}

static void test_unicode(void) {
  check_rt("\"\\u00e9\"", "\"\xC3\xA9\"");
  check_rt("\"\\u20ac\"", "\"\xE2\x82\xAC\"");
  check_rt("\"\\ud83d\\ude00\"", "\"\xF0\x9F\x98\x80\"");
  check_rt("\"\\uD83D\\uDE00 ok\"", "\"\xF0\x9F\x98\x80 ok\"");
  check_rt("\"caf\xC3\xA9 \xE2\x80\x94 \xF0\x9F\x98\x80\"",
           "\"caf\xC3\xA9 \xE2\x80\x94 \xF0\x9F\x98\x80\"");
}

static void test_numbers(void) {
  check_rt("0", "0");
  check_rt("-0", "0");
  check_rt("42", "42");
  check_rt("-17", "-17");
  check_rt("9007199254740991", "9007199254740991");
  check_rt("-9007199254740991", "-9007199254740991");
  check_rt("9007199254740992", "9007199254740992");
  /* beyond 2^53 a double cannot hold every integer: nearest one */
  check_rt("9007199254740993", "9007199254740992");
  check_rt("12345678901234567890", "1.2345678901234567e+19");
  check_rt("1e20", "1e+20");
  check_rt("0.1", "0.1");
  check_rt("1.5", "1.5");
  check_rt("100.0", "100");
  check_rt("3.141592653589793", "3.141592653589793");
  check_rt("-2.5e-10", "-2.5e-10");
  check_rt("1.7976931348623157e308", "1.7976931348623157e+308");
  check_rt("5e-324", "4.94065645841247e-324");
  check_rt("[1,2.5,-3]", "[1,2.5,-3]");
  check_bad("1e400", 5);
  check_bad("-1e400", 6);
}

static void test_nested(void) {
  check_rt("{\"a\":[1,{\"b\":[null,{\"c\":\"d\"}]}]}",
           "{\"a\":[1,{\"b\":[null,{\"c\":\"d\"}]}]}");
  check_rt("[[[[[[[[[[1]]]]]]]]]]", "[[[[[[[[[[1]]]]]]]]]]");
}

static char *nest(int depth, char open, char close) {
  char *s = malloc((size_t)depth * 2 + 1);
  memset(s, open, (size_t)depth);
  memset(s + depth, close, (size_t)depth);
  s[depth * 2] = '\0';
  return s;
}

static void test_depth(void) {
  char *s = nest(1000, '[', ']');
  char err[256];
  char *out = roundtrip(s, strlen(s), err, sizeof(err));
  CPX_CHECK(out != NULL);
  if (out)
    CPX_CHECK_STR(out, s);
  free(out);
  free(s);
  s = nest(1001, '[', ']');
  check_bad(s, strlen(s));
  free(s);
  s = nest(2000, '[', ']');
  check_bad(s, strlen(s));
  free(s);
  {
    /* {"a":{"a":...}} 2000 deep */
    size_t n = 0;
    char *o = malloc(2000 * 6 + 2000 + 8);
    for (int i = 0; i < 2000; i++) {
      memcpy(o + n, "{\"a\":", 5);
      n += 5;
    }
    o[n++] = '1';
    memset(o + n, '}', 2000);
    n += 2000;
    check_bad(o, n);
    free(o);
  }
  /* encoding: 1000 nested tables are fine, 1001 and cycles are errors */
  check_lua("local j = require('cpx').json local t = {} local c = t "
            "for i = 1, 999 do c[1] = {} c = c[1] end "
            "local s = assert(j.encode(t)) return #s .. ''",
            "2000");
  check_lua("local j = require('cpx').json local t = {} local c = t "
            "for i = 1, 1000 do c[1] = {} c = c[1] end "
            "local s, e = j.encode(t) return tostring(s) .. ' ' .. e",
            "nil json: nesting too deep");
  check_lua("local j = require('cpx').json local t = {} t.self = t "
            "local s, e = j.encode(t) return tostring(s) .. ' ' .. e",
            "nil json: nesting too deep");
}

static void test_decode_errors(void) {
  check_bad("", 0);
  check_bad("   ", 3);
  check_bad("{\"a\":", 5);
  check_bad("[1,2", 4);
  check_bad("\"abc", 4);
  check_bad("{\"a\" 1}", 7);
  check_bad("[1,]", 4);
  check_bad("{a:1}", 5);
  check_bad("[1] x", 5);
  check_bad("1 2", 3);
  check_bad("nul", 3);
  check_bad("'x'", 3);
  check_bad("[01]", 4);
  check_bad("\"\xFF\"", 3);
  check_bad("\"\xC3\"", 3);
  check_bad("\"a\xE2\x82\"", 5);
  check_bad("\"\\u12\"", 6);
  check_bad("\"\\x\"", 4);
  check_bad("\"a\nb\"", 5);
  check_lua("local j = require('cpx').json "
            "local v, e = j.decode('[1,') return tostring(v) .. ' ' .. e",
            "nil json: premature EOF in [1] at byte 3");
  check_lua("local j = require('cpx').json "
            "local v, e = j.decode(nil) return tostring(v) .. ' ' .. e",
            "nil json: expected a string, got nil");
}

/* Compact input comes back byte for byte: key order (the encoder would
 * otherwise write hash order) and number text (it would write the double). */
static void test_fidelity_roundtrip(void) {
  static const char *const docs[] = {
      "{\"zeta\":1,\"alpha\":2,\"reasoning\":{\"z\":[],\"b\":{}},"
      "\"answer\":null}",
      "{\"n\":12345678901234567891,\"m\":-9223372036854775808}",
      "[12345678901234567891,1.10,-0,1e-7,1E+2,0.5,3]",
      "{\"x\":1.10,\"y\":-0,\"z\":1e-7,\"w\":1E+2,\"v\":-0.0}",
      "{\"s\":\"a\\\"b\\\\c\\nd\\t\\u0001\"}",
      "{\"emoji\":\"\xf0\x9f\x98\x80\",\"e\":\"\xc3\xa9\"}",
      "{\"a\":{},\"b\":[],\"c\":null,\"d\":true,\"e\":false}",
      "{\"b\":{\"d\":1,\"c\":2},\"a\":[{\"y\":1,\"x\":2}]}",
  };
  /* escapes the encoder writes differently come back as they were sent */
  static const char *const escaped[] = {
      "[\"\\ud83d\\ude00\",\"\\u00e9\",\"\\/\",\"\\u001f\"]",
      "{\"k\":\"x\\\\\",\"l\":\"\\/\\\\\",\"m\":[\"a\\\\\\\"b\\/\"]}",
  };
  for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++)
    check_rt(docs[i], docs[i]);
  for (size_t i = 0; i < sizeof(escaped) / sizeof(escaped[0]); i++)
    check_rt(escaped[i], escaped[i]);
  /* repeated keys: first place, last value */
  check_rt("{\"b\":1,\"a\":2,\"b\":3}", "{\"b\":3,\"a\":2}");
}

/* Edits after decoding: a changed number gets its new value, a removed key
 * disappears, added keys follow the recorded ones, sorted. */
static void test_fidelity_edits(void) {
  check_lua("local j = require('cpx').json "
            "local v = j.decode('{\"z\":1.10,\"a\":12345678901234567891}') "
            "v.z = 2.5 return j.encode(v)",
            "{\"z\":2.5,\"a\":12345678901234567891}");
  check_lua("local j = require('cpx').json "
            "local v = j.decode('{\"z\":1,\"m\":2,\"a\":3}') "
            "v.m = nil v.y = 4 v.b = 5 return j.encode(v)",
            "{\"z\":1,\"a\":3,\"b\":5,\"y\":4}");
  check_lua("local j = require('cpx').json "
            "local v = j.decode('[1.10,2]') v[2] = 1.10 return j.encode(v)",
            "[1.10,1.1]");
  check_lua("local j = require('cpx').json "
            "local v = j.decode('{\"a\":\"\\\\/\",\"b\":\"\\\\/\"}') "
            "v.a = 'new' return j.encode(v)",
            "{\"a\":\"new\",\"b\":\"\\/\"}");
  /* tables built in Lua encode with sorted keys */
  check_lua("local j = require('cpx').json "
            "return j.encode({zeta = 1, alpha = 2, [3] = 0, answer = {}})",
            "{\"3\":0,\"alpha\":2,\"answer\":{},\"zeta\":1}");
}

static void test_encode_tables(void) {
  check_lua("local j = require('cpx').json return j.encode({1, 2, 3})",
            "[1,2,3]");
  check_lua("local j = require('cpx').json return j.encode({})", "{}");
  check_lua("local j = require('cpx').json return j.encode(j.array())", "[]");
  check_lua("local j = require('cpx').json return j.encode(j.array({}))", "[]");
  check_lua("local j = require('cpx').json "
            "return j.encode(setmetatable({1, j.null, 3}, j.array_mt))",
            "[1,null,3]");
  check_lua("local j = require('cpx').json "
            "local t = j.array() t[1] = 1 t[2] = 2 return j.encode(t)",
            "[1,2]");
  check_lua("local j = require('cpx').json return j.encode({[1] = 'a', "
            "[3] = 'c'}):len() .. ''",
            "17");
  check_lua("local j = require('cpx').json return j.encode({[2] = 'x'})",
            "{\"2\":\"x\"}");
  check_lua("local j = require('cpx').json return j.encode({[1.5] = 'x'})",
            "{\"1.5\":\"x\"}");
  check_lua("local j = require('cpx').json "
            "return j.encode({a = {b = {c = j.null}}})",
            "{\"a\":{\"b\":{\"c\":null}}}");
  check_lua("local j = require('cpx').json return j.encode(nil)", "null");
  check_lua("local j = require('cpx').json return j.encode('\\0\\1')",
            "\"\\u0000\\u0001\"");
  /* a non-array metatable makes an object */
  check_lua("local j = require('cpx').json "
            "return j.encode(setmetatable({'x'}, {}))",
            "{\"1\":\"x\"}");
  /* decode gives arrays array_mt; the registry holds the same table */
  check_lua("local j = require('cpx').json local v = j.decode('[[],{}]') "
            "local reg = debug.getregistry()['cpx.json.array_mt'] "
            "return tostring(getmetatable(v) == j.array_mt and "
            "getmetatable(v[1]) == reg and getmetatable(v[2]) ~= reg)",
            "true");
  check_lua("local j = require('cpx').json "
            "return tostring(j.decode('null') == j.null)",
            "true");
  check_lua("local j = require('cpx').json "
            "local v = j.decode('{\"a\":null}') "
            "return tostring(v.a == j.null)",
            "true");
}

static void test_encode_errors(void) {
  check_lua("local j = require('cpx').json local s, e = j.encode(0/0) "
            "return tostring(s) .. ' ' .. e",
            "nil json: cannot encode NaN or infinity");
  check_lua("local j = require('cpx').json local s, e = j.encode({1/0}) "
            "return tostring(s) .. ' ' .. e",
            "nil json: cannot encode NaN or infinity");
  check_lua("local j = require('cpx').json local s, e = j.encode({x = -1/0}) "
            "return tostring(s) .. ' ' .. e",
            "nil json: cannot encode NaN or infinity");
  check_lua("local j = require('cpx').json local s, e = j.encode(print) "
            "return tostring(s) .. ' ' .. e",
            "nil json: cannot encode a function");
  check_lua("local j = require('cpx').json "
            "local s, e = j.encode({[true] = 1}) "
            "return tostring(s) .. ' ' .. e",
            "nil json: cannot encode a boolean key");
  check_lua("local j = require('cpx').json local s, e = j.encode('\\255') "
            "return tostring(s) .. ' ' .. e",
            "nil json: invalid UTF-8 in string");
  /* after an error the encoder still works */
  check_lua("local j = require('cpx').json return j.encode({ok = true})",
            "{\"ok\":true}");
  {
    /* C API: NaN is an error, nothing is returned */
    char *out = (char *)1;
    size_t n = 1;
    lua_pushnumber(L, 0.0 / 0.0);
    CPX_CHECK(cpx_json_encode_value(L, -1, &out, &n) != 0);
    CPX_CHECK(out == NULL);
    lua_pop(L, 1);
  }
}

/* ---- robustness --------------------------------------------------------- */

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint64_t rng(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1Dull;
}

static void test_random_input(void) {
  static const char *const alpha[] = {
      "[",  "]",     "{",       "}",     ",",    ":",     "\"",   "\\",
      "1",  "-",     "e",       ".",     "0",    "true",  "null", "false",
      " ",  "\"a\"", "\\u",     "d83d",  "\xC3", "\xA9",  "\xF0", "\\ude00",
      "[[", "]]",    "{\"k\":", "1e999", "\r\n", "\"x\":"};
  static const char *const seeds[] = {
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{"
      "\"type\":\"text\",\"text\":\"hi \\u00e9\"}]}],\"max_tokens\":1024,"
      "\"tools\":[],\"metadata\":{}}",
      "[1,2.5,-3e2,true,false,null,\"s\",{\"a\":[{}]}]"};
  char buf[600], err[256];
  int ok = 0, bad = 0;
  int top = lua_gettop(L);
  for (int it = 0; it < 20000; it++) {
    size_t n = 0;
    if (it % 2) {
      /* a valid document with a few bytes mutated, or cut short */
      const char *s = seeds[it % 4 == 1];
      n = strlen(s);
      memcpy(buf, s, n);
      for (int m = (int)(rng() % 4); m >= 0; m--)
        buf[rng() % n] =
            (char)(rng() % 3 ? (uint64_t)(unsigned char)alpha[rng() % 30][0]
                             : rng());
      if (rng() % 4 == 0)
        n = (size_t)(rng() % n);
    } else {
      size_t want = (size_t)(rng() % 300);
      while (n < want) {
        const char *t = alpha[rng() % (sizeof(alpha) / sizeof(alpha[0]))];
        size_t tl = strlen(t);
        if (rng() % 10 == 0) {
          buf[n++] = (char)rng();
          continue;
        }
        memcpy(buf + n, t, tl);
        n += tl;
      }
    }
    if (cpx_json_decode_push(L, buf, n, err, sizeof(err)) == 0) {
      char *out = NULL;
      size_t outlen;
      ok++;
      /* whatever decodes must encode (strings may carry yajl's lax UTF-8
       * checks, which the encoder shares) */
      if (cpx_json_encode_value(L, -1, &out, &outlen) != 0)
        bad++;
      free(out);
      lua_pop(L, 1);
    } else {
      CPX_CHECK(strncmp(err, "json: ", 6) == 0);
    }
    CPX_CHECK_INT(lua_gettop(L), top);
  }
  CPX_CHECK(ok > 100); /* the mutations leave some documents valid */
  CPX_CHECK_INT(bad, 0);
}

/* The encoder escapes ASCII strings itself; the bytes must be exactly
 * yajl's: every byte alone, then random strings over all 128 ASCII bytes
 * (with a non-ASCII one now and then, which goes through yajl). */
static void test_ascii_escapes_match_yajl(void) {
  unsigned seed = 12345;
  char s[64];
  for (int round = 0; round < 2128; round++) {
    size_t n, want_len = 0, got_len = 0;
    const unsigned char *want;
    char *got = NULL;
    yajl_gen g = yajl_gen_alloc(NULL);
    yajl_gen_config(g, yajl_gen_validate_utf8, 1); /* as the encoder */
    if (round < 128) {
      s[0] = (char)round;
      n = 1;
    } else {
      seed = seed * 1103515245u + 12345u;
      n = (seed >> 16) % sizeof(s);
      for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        s[i] = (char)((seed >> 16) % 128);
      }
      if (n && round % 50 == 0)
        s[n / 2] = (char)0xC3, s[n - 1] = (char)0xA9; /* not always valid */
    }
    yajl_gen_string(g, (const unsigned char *)s, n);
    yajl_gen_get_buf(g, &want, &want_len);
    lua_pushlstring(L, s, n);
    if (cpx_json_encode_value(L, -1, &got, &got_len) == 0) {
      CPX_CHECK_MEM(got, got_len, want, want_len);
    } else {
      CPX_CHECK(want_len == 0); /* both refuse invalid UTF-8 */
    }
    free(got);
    lua_pop(L, 1);
    yajl_gen_free(g);
  }
}

/* cpx_json_scan_top, the passthrough scanner's C core: members in order,
 * a callback that stops the walk, the failing offset of a malformed
 * document. */
typedef struct {
  char keys[4][16];
  int n, stop_at;
} members_seen_t;

static int on_member(void *ud, const cpx_json_member_t *m) {
  members_seen_t *s = ud;
  if (s->n < 4)
    snprintf(s->keys[s->n], sizeof(s->keys[0]), "%.*s", (int)m->kn, m->kp);
  s->n++;
  return s->n == s->stop_at;
}

static void test_scan_top(void) {
  static const char doc[] = " {\"a\": [1, {\"x\": \"}\"}], \"b\":\"q\\\"\"} ";
  members_seen_t seen;
  size_t at = 0;
  const char *close = NULL;
  memset(&seen, 0, sizeof(seen));
  CPX_CHECK_INT(
      cpx_json_scan_top(doc, strlen(doc), on_member, &seen, &at, &close), 0);
  CPX_CHECK_INT(seen.n, 2);
  CPX_CHECK_STR(seen.keys[0], "a");
  CPX_CHECK_STR(seen.keys[1], "b");
  CPX_CHECK(close && *close == '}' && close == doc + strlen(doc) - 2);
  memset(&seen, 0, sizeof(seen));
  seen.stop_at = 1; /* stops after "a": still a success */
  CPX_CHECK_INT(
      cpx_json_scan_top(doc, strlen(doc), on_member, &seen, &at, &close), 0);
  CPX_CHECK_INT(seen.n, 1);
  CPX_CHECK_INT(cpx_json_scan_top("{\"a\" 1}", 8, NULL, NULL, &at, &close),
                CPX_EPARSE);
  CPX_CHECK_INT(at, 5); /* where the colon should be */
  CPX_CHECK(cpx_json_skip_ws(" \t\r\nx", " \t\r\nx" + 5)[0] == 'x');
}

/* ---- long strings outside yajl (cpx_json_long_min) ----------------------- */

/* Decodes s with every string given to yajl and with every string the
 * decoder may take checked by the decoder itself: the encodings (key
 * order, number text and escape spelling included) or the error messages
 * must be the same. */
static void check_long_same(const char *s, size_t n) {
  char e0[256], e1[256];
  char *o0, *o1;
  size_t prev = cpx_json_long_min;
  cpx_json_long_min = 0;
  o0 = roundtrip(s, n, e0, sizeof(e0));
  cpx_json_long_min = 1;
  o1 = roundtrip(s, n, e1, sizeof(e1));
  cpx_json_long_min = prev;
  if (!o0 || !o1) {
    CPX_CHECK(!o0 && !o1);
    CPX_CHECK_STR(e1, e0);
  } else {
    CPX_CHECK_STR(o1, o0);
  }
  free(o0);
  free(o1);
}

static void test_long_strings(void) {
  static const char *const cases[] = {
      "{\"k\":\"plain text that is long enough\",\"n\":1.10}",
      "{\"text\":\"line\\nbreak \\\"quoted\\\" back\\\\slash \\/ tab\\t\"}",
      "{\"u\":\"caf\\u00e9 and \\ud83d\\ude00\",\"v\":\"caf\xC3\xA9\"}",
      "[\"a\",\"bb\",\"\",\"\\b\\f\\r\"]",
      "{\"long key with \\n in it\":[\"x\",{\"y\":\"z\\/\"}]}",
      "{\"bad\":\"\xFF\"}",                 /* invalid lead byte */
      "{\"bad\":\"\xC3\"}",                 /* cut sequence */
      "{\"lax\":\"\xC0\x80\xED\xA0\x80\"}", /* overlong, surrogate: yajl takes
                                               them */
      "{\"ctl\":\"a\x01b\"}",               /* a raw control byte */
      "{\"esc\":\"\\x\"}",                  /* an escape JSON lacks */
      "{\"a\":\"unterminated",
      "{\"a\" \"b\"}", /* a string where ':' belongs */
      "{\"a\":\"b\" : \"c\"}",
      "[1 \"x\"]",
      "\"top-level string\"",
      "{\"a\":\"x\",}",
      "{\"a\":[\"\\\\\",\"\\\\\\\"\"]}", /* runs of backslashes before quotes */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    check_long_same(cases[i], strlen(cases[i]));

  /* what the decoder's own path keeps: escapes as spelled, and yajl's
   * message and offset for a bad byte in a long string */
  {
    char err[256], *out;
    size_t prev = cpx_json_long_min;
    cpx_json_long_min = 1;
    check_rt("{\"s\":\"a\\/b\\nc\"}", "{\"s\":\"a\\/b\\nc\"}");
    out = roundtrip("{\"s\":\"abc\xFF\"}", 11, err, sizeof(err));
    CPX_CHECK(out == NULL);
    CPX_CHECK(strstr(err, "at byte") != NULL);
    cpx_json_long_min = prev;
  }

  /* random documents: strings of these pieces in keys, values and arrays */
  {
    static const char *const piece[] = {
        "abc ",         "\\n",
        "\\\"",         "\\\\",
        "\\/",          "\\t",
        "\\u00e9",      "\\ud83d\\ude00",
        "\\ud800x",     "\xC3\xA9",
        "\xE2\x82\xAC", "\xF0\x9F\x98\x80",
        "\xC0\x80",     "\xFF",
        "\x01",         "\\q",
        "\\",           "0123456789012345678901234567890123456789"};
    static const char *const glue[] = {"{", "}",    "[",    "]",    ",", ":",
                                       " ", "1.10", "true", "null", "-0"};
    char buf[800];
    for (int it = 0; it < 20000; it++) {
      size_t n = 0;
      int docs = it % 3; /* 0: mostly well formed, else anything */
      if (docs == 0) {
        /* {"<s>":"<s>","k":["<s>",<n>]} */
        const char *shape[] = {"{\"",          "S", "\":\"",    "S",
                               "\",\"k\":[\"", "S", "\",1.10]}"};
        for (int k = 0; k < 7; k++) {
          if (shape[k][0] == 'S' && shape[k][1] == 0) {
            int m = (int)(rng() % 6);
            for (int j = 0; j < m && n < 700; j++) {
              const char *t = piece[rng() % (it % 6 ? 6 : 18)];
              memcpy(buf + n, t, strlen(t));
              n += strlen(t);
            }
          } else {
            memcpy(buf + n, shape[k], strlen(shape[k]));
            n += strlen(shape[k]);
          }
        }
      } else {
        size_t want = (size_t)(rng() % 200);
        while (n < want) {
          const char *t = rng() % 3 ? piece[rng() % 18] : glue[rng() % 11];
          if (rng() % 4 == 0)
            t = "\"";
          memcpy(buf + n, t, strlen(t));
          n += strlen(t);
        }
      }
      check_long_same(buf, n);
    }
  }
}

int main(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  /* make require("cpx") find this build's module table */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  cpx_lua_util_open(L);
  lua_setfield(L, -2, "cpx");
  lua_pop(L, 2);

  CPX_TEST_RUN(test_scan_top);
  CPX_TEST_RUN(test_empty_containers);
  CPX_TEST_RUN(test_scalars);
  CPX_TEST_RUN(test_unicode);
  CPX_TEST_RUN(test_numbers);
  CPX_TEST_RUN(test_nested);
  CPX_TEST_RUN(test_depth);
  CPX_TEST_RUN(test_decode_errors);
  CPX_TEST_RUN(test_encode_tables);
  CPX_TEST_RUN(test_fidelity_roundtrip);
  CPX_TEST_RUN(test_fidelity_edits);
  CPX_TEST_RUN(test_encode_errors);
  CPX_TEST_RUN(test_random_input);
  CPX_TEST_RUN(test_ascii_escapes_match_yajl);
  CPX_TEST_RUN(test_long_strings);
  lua_close(L);
  CPX_TEST_DONE();
}
