/* test_buf.c: the growable byte buffer (cpx_buf.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpx.h"
#include "cpx_buf.h"
#include "cpx_test.h"

static void append_grows_and_terminates(void) {
  char *b = NULL;
  size_t len = 0, cap = 0;
  char chunk[300];
  memset(chunk, 'x', sizeof(chunk));
  for (int i = 0; i < 10; i++)
    CPX_CHECK_INT(cpx_buf_append(&b, &len, &cap, chunk, sizeof(chunk)), 0);
  CPX_CHECK_INT(len, 3000);
  CPX_CHECK(cap >= len + 1);
  CPX_CHECK_INT(b[len], '\0');
  CPX_CHECK_INT(b[0], 'x');
  CPX_CHECK_INT(b[len - 1], 'x');
  free(b);
}

static void reserve_leaves_room(void) {
  char *b = NULL;
  size_t cap = 0, len;
  CPX_CHECK_INT(cpx_buf_reserve(&b, 0, &cap, 10), 0);
  CPX_CHECK(b != NULL);
  CPX_CHECK(cap >= 11);
  /* the writer fills the space itself, as fread does */
  memcpy(b, "0123456789", 10);
  len = 10;
  CPX_CHECK_INT(cpx_buf_reserve(&b, len, &cap, 5000), 0);
  CPX_CHECK(cap >= len + 5000 + 1);
  CPX_CHECK_MEM(b, 10, "0123456789", 10); /* kept across the growth */
  /* enough room already: nothing moves */
  {
    char *before = b;
    size_t c = cap;
    CPX_CHECK_INT(cpx_buf_reserve(&b, len, &cap, 1), 0);
    CPX_CHECK(b == before);
    CPX_CHECK_INT(cap, c);
  }
  free(b);
}

static void reserve_refuses_overflow(void) {
  char *b = NULL;
  size_t cap = 0;
  CPX_CHECK_INT(cpx_buf_reserve(&b, 16, &cap, SIZE_MAX - 8), CPX_ENOMEM);
  CPX_CHECK(b == NULL);
  CPX_CHECK_INT(cap, 0);
}

int main(void) {
  CPX_TEST_RUN(append_grows_and_terminates);
  CPX_TEST_RUN(reserve_leaves_room);
  CPX_TEST_RUN(reserve_refuses_overflow);
  CPX_TEST_DONE();
}
