/* cpx_yaml.c: a YAML document as libyaml events, checked and indexed
 * (see cpx_yaml.h); runtime/lua/cpx_yaml_lua.c turns them into Lua tables.
 *
 * Two phases. First, here, libyaml's parser events of the first document are
 * kept in an array, and for every node the index just past it is recorded, and
 * every alias is resolved to the index of the node its anchor names (as the
 * anchors stood at that point of the document). No Lua is involved, so a
 * syntax error costs nothing to unwind.
 *
 * Second (cpx_yaml_lua.c), inside lua_cpcall, a recursive walk over that array
 * builds the Lua values. An alias is just a second walk over the anchored
 * node's events, so the Lua tables are never shared; every node such a walk
 * creates counts against a budget that stops "billion laughs" documents.
 * Running under lua_cpcall means an allocation error in Lua unwinds to us and
 * the C memory (events, path buffer) is freed on every path.
 */
#include "cpx_yaml.h"

#include "cpx.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <yaml.h>

/* Anchors and alias uses in the document; each alias lookup scans the
 * anchors, so both are bounded to keep that scan cheap. */
#define YAML_MAX_ANCHORS 10000
/* Config files are small; this only stops reading a wrong, huge file. */
#define YAML_MAX_FILE (16 * 1024 * 1024)

int cpx_yaml_errorf(cpx_yaml_doc_t *c, int code, size_t line, size_t col,
                    const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (c->err != NULL && c->errlen > 0)
    snprintf(c->err, c->errlen, "%s:%zu:%zu: %s", c->name, line + 1, col + 1,
             msg);
  c->rc = code;
  return code;
}

int cpx_yaml_errorf_at(cpx_yaml_doc_t *c, int code, const yaml_event_t *e,
                       const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  return cpx_yaml_errorf(c, code, e->start_mark.line, e->start_mark.column,
                         "%s", msg);
}

void cpx_yaml_doc_free(cpx_yaml_doc_t *c) {
  size_t i;
  for (i = 0; i < c->nev; i++)
    yaml_event_delete(&c->ev[i]);
  free(c->ev);
  free(c->end);
  free(c->target);
  free(c->anchors);
  /* rc and the message stay: callers read them after freeing */
  c->ev = NULL;
  c->end = c->target = NULL;
  c->anchors = NULL;
  c->nev = c->cap = c->nanchors = c->capanchors = 0;
}

/* ---- phase 1: events ---------------------------------------------------- */

static int grow(cpx_yaml_doc_t *c) {
  size_t ncap = c->cap ? c->cap * 2 : 256;
  void *p;
  if ((p = realloc(c->ev, ncap * sizeof(*c->ev))) == NULL)
    return CPX_ENOMEM;
  c->ev = p;
  if ((p = realloc(c->end, ncap * sizeof(*c->end))) == NULL)
    return CPX_ENOMEM;
  c->end = p;
  if ((p = realloc(c->target, ncap * sizeof(*c->target))) == NULL)
    return CPX_ENOMEM;
  c->target = p;
  c->cap = ncap;
  return 0;
}

static int parser_error(cpx_yaml_doc_t *c, yaml_parser_t *p) {
  size_t line = p->problem_mark.line, col = p->problem_mark.column, i;
  const char *problem = p->problem ? p->problem : "syntax error";

  if (p->error == YAML_MEMORY_ERROR)
    return cpx_yaml_errorf(c, CPX_ENOMEM, 0, 0, "out of memory");
  if (p->error == YAML_READER_ERROR) {
    /* Reader errors carry a byte offset, not a mark. */
    line = col = 0;
    for (i = 0; i < p->problem_offset && i < c->srclen; i++) {
      if (c->src[i] == '\n') {
        line++;
        col = 0;
      } else {
        col++;
      }
    }
  }
  if (p->context != NULL)
    return cpx_yaml_errorf(c, CPX_EPARSE, line, col, "%s (%s at line %zu)",
                           problem, p->context,
                           (size_t)p->context_mark.line + 1);
  return cpx_yaml_errorf(c, CPX_EPARSE, line, col, "%s", problem);
}

const char *cpx_yaml_event_anchor(const yaml_event_t *e) {
  switch (e->type) {
  case YAML_SCALAR_EVENT:
    return (const char *)e->data.scalar.anchor;
  case YAML_SEQUENCE_START_EVENT:
    return (const char *)e->data.sequence_start.anchor;
  case YAML_MAPPING_START_EVENT:
    return (const char *)e->data.mapping_start.anchor;
  default:
    return NULL;
  }
}

/* Reads the events of the first document into c->ev. */
static int collect(cpx_yaml_doc_t *c, const char *s, size_t n) {
  yaml_parser_t parser;
  yaml_event_t e;
  size_t open[CPX_YAML_MAX_DEPTH + 1];
  size_t nopen = 0, i, k;
  int rc = 0, in_doc = 0;
  const char *anchor;

  if (!yaml_parser_initialize(&parser))
    return cpx_yaml_errorf(c, CPX_ENOMEM, 0, 0, "out of memory");
  yaml_parser_set_input_string(&parser, (const unsigned char *)s, n);
  for (;;) {
    if (!yaml_parser_parse(&parser, &e)) {
      rc = parser_error(c, &parser);
      break;
    }
    if (e.type == YAML_STREAM_END_EVENT || e.type == YAML_DOCUMENT_END_EVENT) {
      yaml_event_delete(&e);
      break;
    }
    if (e.type == YAML_STREAM_START_EVENT ||
        e.type == YAML_DOCUMENT_START_EVENT) {
      in_doc = e.type == YAML_DOCUMENT_START_EVENT;
      yaml_event_delete(&e);
      continue;
    }
    if (!in_doc) { /* cannot happen with libyaml; be safe */
      yaml_event_delete(&e);
      continue;
    }
    if (c->nev == c->cap && (rc = grow(c)) != 0) {
      yaml_event_delete(&e);
      cpx_yaml_errorf(c, rc, 0, 0, "out of memory");
      break;
    }
    i = c->nev++;
    c->ev[i] = e; /* c->ev owns the event's strings from here */
    c->end[i] = i + 1;
    c->target[i] = 0;

    anchor = cpx_yaml_event_anchor(&c->ev[i]);
    if (anchor != NULL) {
      if (c->nanchors == YAML_MAX_ANCHORS) {
        rc = cpx_yaml_errorf_at(c, CPX_ELIMIT, &c->ev[i],
                                "more than %d anchors", YAML_MAX_ANCHORS);
        break;
      }
      if (c->nanchors == c->capanchors) {
        size_t ncap = c->capanchors ? c->capanchors * 2 : 16;
        void *p = realloc(c->anchors, ncap * sizeof(*c->anchors));
        if (p == NULL) {
          rc = cpx_yaml_errorf(c, CPX_ENOMEM, 0, 0, "out of memory");
          break;
        }
        c->anchors = p;
        c->capanchors = ncap;
      }
      c->anchors[c->nanchors].name = anchor;
      c->anchors[c->nanchors].index = i;
      c->nanchors++;
    }

    switch (c->ev[i].type) {
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
      if (nopen == CPX_YAML_MAX_DEPTH) {
        rc = cpx_yaml_errorf_at(c, CPX_ELIMIT, &c->ev[i],
                                "nesting deeper than %d levels",
                                CPX_YAML_MAX_DEPTH);
        goto out;
      }
      open[nopen++] = i;
      break;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
      if (nopen > 0) /* libyaml guarantees balance */
        c->end[open[--nopen]] = i + 1;
      break;
    case YAML_ALIAS_EVENT: {
      const char *name = (const char *)c->ev[i].data.alias.anchor;
      if (++c->nalias > CPX_YAML_MAX_ALIAS_NODES) {
        rc =
            cpx_yaml_errorf_at(c, CPX_ELIMIT, &c->ev[i], "more than %d aliases",
                               CPX_YAML_MAX_ALIAS_NODES);
        goto out;
      }
      /* The latest definition wins: anchors may be redefined. */
      for (k = c->nanchors; k > 0; k--)
        if (strcmp(c->anchors[k - 1].name, name) == 0)
          break;
      if (k == 0) {
        rc = cpx_yaml_errorf_at(c, CPX_EPARSE, &c->ev[i], "unknown anchor '%s'",
                                name);
        goto out;
      }
      c->target[i] = c->anchors[k - 1].index;
      /* The anchored node is still open: it would contain itself. */
      if (c->end[c->target[i]] == c->target[i] + 1 &&
          c->ev[c->target[i]].type != YAML_SCALAR_EVENT) {
        rc = cpx_yaml_errorf_at(c, CPX_EPARSE, &c->ev[i],
                                "anchor '%s' value contains itself", name);
        goto out;
      }
      break;
    }
    default:
      break;
    }
  }
out:
  yaml_parser_delete(&parser);
  return rc;
}

int cpx_yaml_parse(cpx_yaml_doc_t *d, const char *name, const char *s, size_t n,
                   char *err, size_t errlen) {
  memset(d, 0, sizeof(*d));
  d->name = name ? name : "<string>";
  d->src = s;
  d->srclen = n;
  d->err = err;
  d->errlen = errlen;
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (collect(d, s, n) != 0) {
    int rc = d->rc;
    cpx_yaml_doc_free(d);
    return rc;
  }
  return 0;
}

int cpx_yaml_read_file(const char *path, char **out, size_t *outn, char *err,
                       size_t errlen) {
  FILE *f;
  struct stat st;
  char *buf;
  size_t n;
  int e;

  f = fopen(path, "rb");
  if (f == NULL) {
    e = errno;
    snprintf(err, errlen, "%s: %s", path, strerror(e));
    return -e;
  }
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    snprintf(err, errlen, "%s: not a regular file", path);
    return CPX_EINVAL;
  }
  if (st.st_size > YAML_MAX_FILE) {
    fclose(f);
    snprintf(err, errlen, "%s: larger than %d bytes", path, YAML_MAX_FILE);
    return CPX_ELIMIT;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (buf == NULL) {
    fclose(f);
    snprintf(err, errlen, "%s: out of memory", path);
    return CPX_ENOMEM;
  }
  n = fread(buf, 1, (size_t)st.st_size, f);
  if (ferror(f)) {
    e = errno;
    fclose(f);
    free(buf);
    snprintf(err, errlen, "%s: %s", path, strerror(e));
    return e ? -e : CPX_EIO;
  }
  fclose(f);
  buf[n] = '\0';
  *out = buf;
  *outn = n;
  return 0;
}
