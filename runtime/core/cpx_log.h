/* cpx_log.h: leveled logging to stderr with request ids.
 *
 * Lines look like CLIProxyAPI's: "[2026-11-26 18:50:00] [a1b2c3d4] [info] msg".
 * Nothing secret may reach a log line: callers pass paths through
 * cpx_log_redact_query first (Gemini keys travel in ?key=).
 */
#ifndef CPX_LOG_H
#define CPX_LOG_H

#include <stddef.h>

enum { CPX_LOG_DEBUG = 0, CPX_LOG_INFO, CPX_LOG_WARN, CPX_LOG_ERROR };

void cpx_log_set_level(int level);
int cpx_log_get_level(void);
int cpx_log_level_from_name(const char *name); /* -1 when unknown */
const char *cpx_log_level_name(int level);

/* Makes stderr fully buffered; the caller then calls cpx_log_flush
 * periodically (the server does every 100 ms). Warnings and errors are
 * flushed at once. */
void cpx_log_buffered(void);
void cpx_log_flush(void);

/* logging-to-file: sends the log to dir/main.log (created 0700/0600,
 * appended) instead of the original stderr; dir NULL goes back. When
 * main.log grows past CPX_LOG_ROTATE_BYTES, cpx_log_rotate_check renames it
 * to main-<unix time>.log and starts a new one, then deletes the oldest
 * *.log files of dir while they total more than max_total bytes (0: no
 * cap). Call both from one thread (the server's worker 0). */
#define CPX_LOG_ROTATE_BYTES (10 * 1024 * 1024)
int cpx_log_to_file(const char *dir, size_t max_total);
void cpx_log_rotate_check(void);
/* DELETE /v0/management/logs: empties main.log in place (the log keeps
 * writing to it) and deletes the rotated main-*.log files of dir. Returns
 * how many files were removed, or a negative code. Thread-safe. */
int cpx_log_clear_dir(const char *dir);

/* rid may be NULL (no request). */
void cpx_log(int level, const char *rid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies path?query into out (always NUL-terminated), replacing the values
 * of key=, auth_token=, access_token= and api_key= query parameters with
 * "***". Returns out. */
char *cpx_log_redact_query(const char *target, size_t len, char *out,
                           size_t outlen);

#define cpx_log_debug(rid, ...)                                                \
  do {                                                                         \
    if (cpx_log_get_level() <= CPX_LOG_DEBUG)                                  \
      cpx_log(CPX_LOG_DEBUG, rid, __VA_ARGS__);                                \
  } while (0)
#define cpx_log_info(rid, ...) cpx_log(CPX_LOG_INFO, rid, __VA_ARGS__)
#define cpx_log_warn(rid, ...) cpx_log(CPX_LOG_WARN, rid, __VA_ARGS__)
#define cpx_log_error(rid, ...) cpx_log(CPX_LOG_ERROR, rid, __VA_ARGS__)

#endif /* CPX_LOG_H */
