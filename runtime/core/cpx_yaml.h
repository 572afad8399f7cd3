/* cpx_yaml.h: the first document of a YAML text as libyaml's events,
 * checked and indexed, with no Lua involved (runtime/lua/cpx_yaml_lua.h
 * builds Lua tables and node spans from them).
 *
 * cpx_yaml_parse keeps the events of the first document in d->ev, records
 * for every node the index just past it (end[i]) and resolves every alias
 * to the index of the node its anchor names as the anchors stood at that
 * point (target[i]). It enforces the limits below (anchors, aliases,
 * nesting) and rejects unknown or self-containing anchors. Errors read
 * "name:line:col: reason".
 */
#ifndef CPX_YAML_H
#define CPX_YAML_H

#include <stddef.h>

#include <yaml.h>

/* Nodes created by replaying aliases, across the whole document. A config
 * has a handful; the classic nine-level bomb wants a billion. Also the
 * bound on alias uses in the text. */
#define CPX_YAML_MAX_ALIAS_NODES 10000
/* Nesting of mappings and sequences. */
#define CPX_YAML_MAX_DEPTH 512

/* One parsed document. Owns ev[] (each event deleted with
 * yaml_event_delete), end[], target[] and anchors[]; cpx_yaml_doc_free
 * frees them and keeps rc. The strings in anchors[] point into the events;
 * name and src are the caller's and must outlive the doc. */
typedef struct {
  const char *name; /* file name for messages */
  const char *src;  /* the input, to turn a reader error offset into a line */
  size_t srclen;
  yaml_event_t *ev;
  size_t nev, cap;
  size_t *end;    /* end[i]: index just past the node starting at i */
  size_t *target; /* target[i]: for an alias at i, its anchored node */
  struct {
    const char *name;
    size_t index;
  } * anchors;
  size_t nanchors, capanchors;
  size_t nalias;

  char *err; /* the caller's message buffer (may be NULL) */
  size_t errlen;
  int rc; /* the first error's code */
} cpx_yaml_doc_t;

/* Parses s (n bytes; name for messages, NULL: "<string>"). Returns 0, or a
 * negative code with the message in err and nothing left to free. */
int cpx_yaml_parse(cpx_yaml_doc_t *d, const char *name, const char *s, size_t n,
                   char *err, size_t errlen);
void cpx_yaml_doc_free(cpx_yaml_doc_t *d);

/* Records an error at (line, col) (0-based) or at an event's start: the
 * message "name:line:col: ..." goes to d->err, code to d->rc. Returns
 * code. */
int cpx_yaml_errorf(cpx_yaml_doc_t *d, int code, size_t line, size_t col,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
int cpx_yaml_errorf_at(cpx_yaml_doc_t *d, int code, const yaml_event_t *e,
                       const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The anchor a scalar, sequence or mapping start event carries, or NULL. */
const char *cpx_yaml_event_anchor(const yaml_event_t *e);

/* Reads a config file (a regular file of at most 16 MiB) into a malloc'd,
 * NUL-terminated buffer. Returns 0, or a negative code with
 * "path: reason" in err. Blocking. */
int cpx_yaml_read_file(const char *path, char **buf, size_t *n, char *err,
                       size_t errlen);

#endif /* CPX_YAML_H */
