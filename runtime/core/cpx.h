/* cpx.h: types and result codes shared by every runtime file.
 *
 * Conventions (libuv style):
 *   - functions return 0 on success or a negative code: -errno or CPX_E*;
 *   - cpx_ is exported, cpx__ is internal but not static, the rest is static;
 *   - every struct documents who owns and frees its members.
 */
#ifndef CPX_H
#define CPX_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#define CPX_VERSION "0.1.0"

/* Result codes beyond -errno. Chosen far below any errno value. */
enum {
  CPX_OK = 0,
  CPX_EAGAIN = -10001,   /* not ready yet; call again later */
  CPX_ELIMIT = -10002,   /* a configured size or count limit was exceeded */
  CPX_EPARSE = -10003,   /* malformed input */
  CPX_ECLOSED = -10004,  /* the peer or handle is gone */
  CPX_ETIMEOUT = -10005, /* a deadline passed */
  CPX_ESTATE = -10006,   /* call made in the wrong state (misuse) */
  CPX_ENOMEM = -10007,   /* allocation failed */
  CPX_EINVAL = -10008,   /* invalid argument or configuration value */
  CPX_EIO = -10009,      /* I/O or transport error */
  CPX_ESCRIPT = -10010,  /* a Lua script raised an error */
};

/* Borrowed byte slice; never owns its memory. */
typedef struct {
  const char *p;
  size_t n;
} cpx_str_t;

#define CPX_STR(s) ((cpx_str_t){(s), sizeof(s) - 1})

#define cpx_container_of(ptr, type, member)                                    \
  ((type *)((char *)(ptr)-offsetof(type, member)))

#define CPX_UNUSED(x) (void)(x)

const char *cpx_strerror(int code);

#endif /* CPX_H */
