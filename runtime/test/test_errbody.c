/* test_errbody.c: cliproxy's own error bodies in each client envelope.
 *
 * Every body is compared byte for byte with the codec's form and parsed back
 * with yajl, so a message of any bytes still gives valid JSON. */
#include <errno.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>
#include <yajl/yajl_tree.h>

#include "cpx_lua_util.h"

#include "cpx_errbody.h"
#include "cpx_test.h"

/* Whether body parses and its error message reads back as want_msg. */
static int parses_to(const char *body, int fmt, const char *want_msg) {
  char err[128];
  const char *path_oa[] = {"error", "message", NULL};
  const char *path_cl[] = {"error", "message", NULL};
  yajl_val v = yajl_tree_parse(body, err, sizeof(err)), m;
  const char *got;
  int ok;
  if (!v) {
    fprintf(stderr, "  parse error: %s in %s\n", err, body);
    return 0;
  }
  m = yajl_tree_get(v, fmt == CPX_FMT_CLAUDE ? path_cl : path_oa,
                    yajl_t_string);
  got = m ? YAJL_GET_STRING(m) : NULL;
  ok = got && strcmp(got, want_msg) == 0;
  if (!ok)
    fprintf(stderr, "  message %s, expected %s\n", got ? got : "(none)",
            want_msg);
  yajl_tree_free(v);
  return ok;
}

static void test_envelopes(void) {
  static const struct {
    int fmt, status;
    const char *type, *code, *msg, *want;
  } cases[] = {
      {CPX_FMT_OPENAI_CHAT, 502, NULL, "upstream_error", "boom",
       "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\","
       "\"param\":null,\"code\":\"upstream_error\"}}"},
      {CPX_FMT_OPENAI_CHAT, 400, NULL, NULL, "bad",
       "{\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\","
       "\"param\":null,\"code\":null}}"},
      {CPX_FMT_OPENAI_CHAT, 429, NULL, NULL, "slow",
       "{\"error\":{\"message\":\"slow\",\"type\":\"rate_limit_error\","
       "\"param\":null,\"code\":\"rate_limit_exceeded\"}}"},
      {CPX_FMT_OPENAI_RESPONSES, 500, NULL, NULL, "x",
       "{\"error\":{\"message\":\"x\",\"type\":\"server_error\","
       "\"param\":null,\"code\":\"internal_server_error\"}}"},
      {CPX_FMT_OPENAI_CHAT, 408, "invalid_request_error", NULL, "late",
       "{\"error\":{\"message\":\"late\",\"type\":\"invalid_request_error\","
       "\"param\":null,\"code\":null}}"},
      {CPX_FMT_CLAUDE, 502, NULL, NULL, "boom",
       "{\"type\":\"error\",\"error\":{\"type\":\"api_error\","
       "\"message\":\"boom\"}}"},
      {CPX_FMT_CLAUDE, 502, "server_error", "upstream_error", "boom",
       "{\"type\":\"error\",\"error\":{\"type\":\"api_error\","
       "\"message\":\"boom\"}}"},
      {CPX_FMT_CLAUDE, 400, "overloaded_error", NULL, "busy",
       "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
       "\"message\":\"busy\"}}"},
      {CPX_FMT_OPENAI_CHAT, 403, "insufficient_quota", NULL, "q",
       "{\"error\":{\"message\":\"q\",\"type\":\"insufficient_quota\","
       "\"param\":null,\"code\":\"insufficient_quota\"}}"},
      {CPX_FMT_OPENAI_RESPONSES, 403, "insufficient_quota", NULL, "q",
       "{\"error\":{\"message\":\"q\",\"type\":\"permission_error\","
       "\"param\":null,\"code\":\"insufficient_quota\"}}"},
      {CPX_FMT_OPENAI_CHAT, 500, "api_error", NULL, "x",
       "{\"error\":{\"message\":\"x\",\"type\":\"server_error\","
       "\"param\":null,\"code\":\"internal_server_error\"}}"},
      {CPX_FMT_GEMINI, 502, "server_error", "upstream_error", "boom",
       "{\"error\":{\"code\":502,\"message\":\"boom\","
       "\"status\":\"UNAVAILABLE\"}}"},
      {CPX_FMT_CLAUDE, 529, NULL, NULL, "busy",
       "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
       "\"message\":\"busy\"}}"},
      {CPX_FMT_CLAUDE, 413, NULL, NULL, "big",
       "{\"type\":\"error\",\"error\":{\"type\":\"request_too_large\","
       "\"message\":\"big\"}}"},
      {CPX_FMT_CLAUDE, 400, NULL, NULL, "bad",
       "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
       "\"message\":\"bad\"}}"},
      {CPX_FMT_GEMINI, 400, NULL, NULL, "bad",
       "{\"error\":{\"code\":400,\"message\":\"bad\","
       "\"status\":\"INVALID_ARGUMENT\"}}"},
      {CPX_FMT_GEMINI, 502, NULL, NULL, "boom",
       "{\"error\":{\"code\":502,\"message\":\"boom\","
       "\"status\":\"UNAVAILABLE\"}}"},
      {CPX_FMT_GEMINI, 504, NULL, NULL, "t",
       "{\"error\":{\"code\":504,\"message\":\"t\","
       "\"status\":\"DEADLINE_EXCEEDED\"}}"},
      {CPX_FMT_GEMINI, 507, NULL, NULL, "t",
       "{\"error\":{\"code\":507,\"message\":\"t\",\"status\":\"INTERNAL\"}}"},
      {CPX_FMT_GEMINI, 418, NULL, NULL, "t",
       "{\"error\":{\"code\":418,\"message\":\"t\","
       "\"status\":\"INVALID_ARGUMENT\"}}"},
  };
  size_t i;
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char out[512];
    int n = cpx_errbody(out, sizeof(out), cases[i].fmt, cases[i].status,
                        cases[i].type, cases[i].code, cases[i].msg);
    CPX_CHECK_INT(n, strlen(cases[i].want));
    CPX_CHECK_STR(out, cases[i].want);
    CPX_CHECK(parses_to(out, cases[i].fmt, cases[i].msg));
  }
}

static void test_escaping(void) {
  static const struct {
    const char *msg, *json, *decoded;
  } cases[] = {
      {"say \"hi\"", "say \\\"hi\\\"", "say \"hi\""},
      {"C:\\path", "C:\\\\path", "C:\\path"},
      {"a\nb\r\tc", "a\\nb\\r\\tc", "a\nb\r\tc"},
      {"\x01\x1f\b\f", "\\u0001\\u001f\\b\\f", "\x01\x1f\b\f"},
      {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
       "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
       "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"},
      /* a lone continuation, a truncated sequence, an overlong '/', a
       * surrogate, past U+10FFFF, 0xff */
      {"a\x80z", "a\xef\xbf\xbdz", "a\xef\xbf\xbdz"},
      {"a\xe2\x82", "a\xef\xbf\xbd\xef\xbf\xbd", "a\xef\xbf\xbd\xef\xbf\xbd"},
      {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd", "\xef\xbf\xbd\xef\xbf\xbd"},
      {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",
       "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
      {"\xf4\x90\x80\x80x", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdx",
       "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdx"},
      {"\xff", "\xef\xbf\xbd", "\xef\xbf\xbd"},
      {"</script>\x7f", "</script>\x7f", "</script>\x7f"},
      {"", "", ""},
  };
  static const int fmts[] = {CPX_FMT_OPENAI_CHAT, CPX_FMT_OPENAI_RESPONSES,
                             CPX_FMT_CLAUDE, CPX_FMT_GEMINI};
  size_t i, f;
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    for (f = 0; f < 4; f++) {
      char out[512], want[512];
      int n =
          cpx_errbody(out, sizeof(out), fmts[f], 500, NULL, NULL, cases[i].msg);
      CPX_CHECK(n > 0);
      CPX_CHECK(parses_to(out, fmts[f], cases[i].decoded));
      snprintf(want, sizeof(want), "\"message\":\"%s\"", cases[i].json);
      CPX_CHECK(strstr(out, want) != NULL);
    }
  }
  {
    char out[512];
    CPX_CHECK(cpx_errbody(out, sizeof(out), CPX_FMT_CLAUDE, 500, NULL, NULL,
                          NULL) > 0);
    CPX_CHECK(parses_to(out, CPX_FMT_CLAUDE, ""));
  }
}

static void test_sse(void) {
  char out[512];
  int n;
  n = cpx_errbody_sse(out, sizeof(out), CPX_FMT_OPENAI_CHAT, 502, NULL,
                      "upstream_error", "x");
  CPX_CHECK_STR(out, "data: {\"error\":{\"message\":\"x\",\"type\":"
                     "\"server_error\",\"param\":null,\"code\":"
                     "\"upstream_error\"}}\n\n");
  CPX_CHECK_INT(n, strlen(out));
  cpx_errbody_sse(out, sizeof(out), CPX_FMT_CLAUDE, 502, NULL, NULL, "x");
  CPX_CHECK_STR(out, "event: error\ndata: {\"type\":\"error\",\"error\":"
                     "{\"type\":\"api_error\",\"message\":\"x\"}}\n\n");
  cpx_errbody_sse(out, sizeof(out), CPX_FMT_GEMINI, 502, NULL, NULL, "x");
  CPX_CHECK_STR(out, "data: {\"error\":{\"code\":502,\"message\":\"x\","
                     "\"status\":\"UNAVAILABLE\"}}\r\n\r\n");
}

static void test_limits(void) {
  char out[64], big[300];
  int full;
  memset(big, 'a', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  CPX_CHECK_INT(
      cpx_errbody(out, sizeof(out), CPX_FMT_OPENAI_CHAT, 500, NULL, NULL, big),
      -ENOBUFS);
  CPX_CHECK_STR(out, "");
  CPX_CHECK_INT(cpx_errbody(out, 0, CPX_FMT_GEMINI, 500, NULL, NULL, "x"),
                -ENOBUFS);
  CPX_CHECK_INT(cpx_errbody(out, sizeof(out), 9, 500, NULL, NULL, "x"),
                -EINVAL);
  /* exactly fitting, with its NUL */
  full = cpx_errbody(out, sizeof(out), CPX_FMT_CLAUDE, 500, NULL, NULL, "m");
  CPX_CHECK(full > 0);
  CPX_CHECK_INT(
      cpx_errbody(out, (size_t)full + 1, CPX_FMT_CLAUDE, 500, NULL, NULL, "m"),
      full);
  CPX_CHECK_INT(
      cpx_errbody(out, (size_t)full, CPX_FMT_CLAUDE, 500, NULL, NULL, "m"),
      -ENOBUFS);
}

static void test_format_for_path(void) {
  static const struct {
    const char *path;
    int fmt;
  } cases[] = {
      {"/v1/messages", CPX_FMT_CLAUDE},
      {"/v1/messages/count_tokens", CPX_FMT_CLAUDE},
      {"/v1/messages?beta=true", CPX_FMT_CLAUDE},
      {"/v1/responses", CPX_FMT_OPENAI_RESPONSES},
      {"/v1/responses/compact", CPX_FMT_OPENAI_RESPONSES},
      {"/v1beta/models/g:generateContent", CPX_FMT_GEMINI},
      {"/v1/chat/completions", CPX_FMT_OPENAI_CHAT},
      {"/v1/models", CPX_FMT_OPENAI_CHAT},
      {"/", CPX_FMT_OPENAI_CHAT},
      {"/v1beta", CPX_FMT_OPENAI_CHAT},
  };
  size_t i;
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    CPX_CHECK_INT(cpx_errbody_format(cases[i].path, strlen(cases[i].path)),
                  cases[i].fmt);
  CPX_CHECK_INT(cpx_errbody_format(NULL, 0), CPX_FMT_OPENAI_CHAT);
  /* the length bounds the match: the target need not be NUL-terminated */
  CPX_CHECK_INT(cpx_errbody_format("/v1/messages", 5), CPX_FMT_OPENAI_CHAT);
}

/* The C body and the Lua codec's encode_error (lua/translators) must be the
 * same document for the same input. They are compared decoded: the Lua
 * encoder writes a table's keys in hash order. */
static const char agree_lua[] =
    "local function same(a, b)\n"
    "  if type(a) ~= 'table' or type(b) ~= 'table' then return a == b end\n"
    "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "local mod, c_doc, st, msg, ty, code = ...\n"
    "local lua_doc = require('translators.' .. mod).encode_error(\n"
    "  { status = st, message = msg, type = ty, code = code })\n"
    "return same(c_doc, lua_doc), require('lib.json').encode(lua_doc)\n";

static void test_codec_agreement(void) {
  static const struct {
    int fmt;
    const char *mod;
  } fmts[] = {{CPX_FMT_OPENAI_CHAT, "openai_chat"},
              {CPX_FMT_OPENAI_RESPONSES, "openai_responses"},
              {CPX_FMT_CLAUDE, "claude"},
              {CPX_FMT_GEMINI, "gemini"}};
  static const int statuses[] = {400, 401, 403, 404, 408, 409, 413, 418, 429,
                                 499, 500, 501, 502, 503, 504, 507, 529};
  static const char *const types[] = {NULL,
                                      "server_error",
                                      "api_error",
                                      "overloaded_error",
                                      "insufficient_quota",
                                      "not_found_error",
                                      "bogus"};
  static const char *const codes[] = {NULL, "upstream_error"};
  static const char *const msgs[] = {
      "", "boom", "say \"hi\" C:\\x", "a\nb\r\tc\x01",
      "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"};
  lua_State *L = luaL_newstate();
  size_t f, s, t, c, m;
  int checked = 0;

  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, "lua/?.lua;lua/?/init.lua");
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "loaded");
  cpx_lua_util_open(L);
  lua_setfield(L, -2, "cpx");
  lua_pop(L, 2);
  if (luaL_loadbuffer(L, agree_lua, sizeof(agree_lua) - 1, "agree") != 0) {
    CPX_CHECK(!"agree chunk loads");
    lua_close(L);
    return;
  }
  for (f = 0; f < 4; f++)
    for (s = 0; s < sizeof(statuses) / sizeof(statuses[0]); s++)
      for (t = 0; t < sizeof(types) / sizeof(types[0]); t++)
        for (c = 0; c < 2; c++)
          for (m = 0; m < sizeof(msgs) / sizeof(msgs[0]); m++) {
            char out[512], err[128];
            int n = cpx_errbody(out, sizeof(out), fmts[f].fmt, statuses[s],
                                types[t], codes[c], msgs[m]);
            CPX_CHECK(n > 0);
            lua_pushvalue(L, -1);
            lua_pushstring(L, fmts[f].mod);
            if (cpx_json_decode_push(L, out, (size_t)n, err, sizeof(err)) !=
                0) {
              CPX_CHECK(!"C body decodes");
              lua_pop(L, 2);
              continue;
            }
            lua_pushinteger(L, statuses[s]);
            lua_pushstring(L, msgs[m]);
            if (types[t])
              lua_pushstring(L, types[t]);
            else
              lua_pushnil(L);
            if (codes[c])
              lua_pushstring(L, codes[c]);
            else
              lua_pushnil(L);
            if (lua_pcall(L, 6, 2, 0) != 0) {
              fprintf(stderr, "  %s\n", lua_tostring(L, -1));
              CPX_CHECK(!"agree chunk runs");
              lua_pop(L, 1);
              continue;
            }
            if (!lua_toboolean(L, -2)) {
              fprintf(stderr, "  %s %d type=%s code=%s:\n  C   %s\n  Lua %s\n",
                      fmts[f].mod, statuses[s], types[t] ? types[t] : "nil",
                      codes[c] ? codes[c] : "nil", out, lua_tostring(L, -1));
              CPX_CHECK(!"C and Lua agree");
            }
            checked++;
            lua_pop(L, 2);
          }
  CPX_CHECK_INT(checked, 4 * 17 * 7 * 2 * 5);
  lua_close(L);
}

int main(void) {
  CPX_TEST_RUN(test_envelopes);
  CPX_TEST_RUN(test_escaping);
  CPX_TEST_RUN(test_sse);
  CPX_TEST_RUN(test_limits);
  CPX_TEST_RUN(test_format_for_path);
  CPX_TEST_RUN(test_codec_agreement);
  CPX_TEST_DONE();
}
