/* cpx_test.h: the tiny assertion kit shared by the C unit tests.
 *
 * Each runtime/test/test_<area>.c is its own executable, registered with
 * ctest by CMakeLists.txt. It calls CPX_TEST_RUN for each case and ends with
 * CPX_TEST_DONE(), which prints "N passed, N failed" and sets the exit code.
 */
#ifndef CPX_TEST_H
#define CPX_TEST_H

#include <stdio.h>
#include <string.h>

static int cpx_t_passed, cpx_t_failed, cpx_t_case_failed;
static const char *cpx_t_case;

#define CPX_CHECK(cond)                                                        \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: [%s] check failed: %s\n", __FILE__, __LINE__,    \
              cpx_t_case, #cond);                                              \
      cpx_t_case_failed = 1;                                                   \
    }                                                                          \
  } while (0)

#define CPX_CHECK_INT(a, b)                                                    \
  do {                                                                         \
    long long cpx_t_a = (long long)(a), cpx_t_b = (long long)(b);              \
    if (cpx_t_a != cpx_t_b) {                                                  \
      fprintf(stderr, "%s:%d: [%s] %s == %lld, expected %s == %lld\n",         \
              __FILE__, __LINE__, cpx_t_case, #a, cpx_t_a, #b, cpx_t_b);       \
      cpx_t_case_failed = 1;                                                   \
    }                                                                          \
  } while (0)

#define CPX_CHECK_MEM(p1, n1, p2, n2)                                          \
  do {                                                                         \
    size_t cpx_t_n1 = (n1), cpx_t_n2 = (n2);                                   \
    if (cpx_t_n1 != cpx_t_n2 || memcmp((p1), (p2), cpx_t_n1) != 0) {           \
      fprintf(stderr, "%s:%d: [%s] '%.*s' != '%.*s'\n", __FILE__, __LINE__,    \
              cpx_t_case, (int)cpx_t_n1, (const char *)(p1), (int)cpx_t_n2,    \
              (const char *)(p2));                                             \
      cpx_t_case_failed = 1;                                                   \
    }                                                                          \
  } while (0)

#define CPX_CHECK_STR(s1, s2) CPX_CHECK_MEM((s1), strlen(s1), (s2), strlen(s2))

#define CPX_TEST_RUN(fn)                                                       \
  do {                                                                         \
    cpx_t_case = #fn;                                                          \
    cpx_t_case_failed = 0;                                                     \
    fn();                                                                      \
    if (cpx_t_case_failed) {                                                   \
      cpx_t_failed++;                                                          \
      fprintf(stderr, "FAIL %s\n", #fn);                                       \
    } else {                                                                   \
      cpx_t_passed++;                                                          \
    }                                                                          \
  } while (0)

#define CPX_TEST_DONE()                                                        \
  do {                                                                         \
    printf("%d passed, %d failed\n", cpx_t_passed, cpx_t_failed);              \
    return cpx_t_failed ? 1 : 0;                                               \
  } while (0)

#endif /* CPX_TEST_H */
