/* cpx_tls.c: TLS over memory BIOs, server and client side (see cpx_tls.h).
 *
 * OpenSSL never touches the socket: the server writes what it reads from the
 * socket into the read BIO, and whatever OpenSSL puts into the write BIO is
 * drained into the on_cipher callback after every operation. Memory BIOs
 * never block, so SSL_ERROR_WANT_READ only means "feed me more" and
 * SSL_ERROR_WANT_WRITE cannot happen.
 */
#include "cpx_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

/* Plaintext is handed on and ciphertext drained in chunks of this size, so
 * neither a big feed nor a big write makes this layer allocate. 16 KiB is
 * the largest TLS record payload. */
#define CPX_TLS_CHUNK 16384

/* Owns one reference to ssl; each connection's SSL holds another one, so
 * cpx_tls_ctx_free may run while connections made from it are still open. */
struct cpx_tls_ctx_s {
  SSL_CTX *ssl;
};

/* Owns ssl, which owns both BIOs once SSL_set_bio has run. */
struct cpx_tls_conn_s {
  SSL *ssl;
  BIO *rbio; /* ciphertext from the peer, written by cpx_tls_conn_feed */
  BIO *wbio; /* ciphertext for the peer, drained to on_cipher */
  unsigned handshake_done : 1;
  unsigned failed : 1;      /* a fatal TLS error; only CPX_EIO from now on */
  unsigned peer_closed : 1; /* the peer sent close_notify */
  unsigned shut_sent : 1;   /* we sent close_notify */
  unsigned long err_code;   /* the first OpenSSL error of the failure */
  cpx_tls_session_cb on_session; /* client: a session to keep */
  void *ud;
};

/* "http/1.1" in ALPN wire format: a length byte, then the name. */
static const unsigned char alpn_http11[] = {8,   'h', 't', 't', 'p',
                                            '/', '1', '.', '1'};

/* Keys are never encrypted in our configs, and the default callback would
 * prompt on the terminal and block a daemon; refuse instead. */
static int no_passphrase_cb(char *buf, int size, int rwflag, void *u) {
  CPX_UNUSED(buf);
  CPX_UNUSED(size);
  CPX_UNUSED(rwflag);
  CPX_UNUSED(u);
  return -1;
}

/* Offers http/1.1 when the client lists it. A client that offers only other
 * protocols gets no ALPN answer rather than an alert, so it may still fall
 * back to HTTP/1.1 (curl and Go do). */
static int alpn_select_cb(SSL *ssl, const unsigned char **out,
                          unsigned char *outlen, const unsigned char *in,
                          unsigned int inlen, void *arg) {
  unsigned char *sel;
  CPX_UNUSED(ssl);
  CPX_UNUSED(arg);
  if (SSL_select_next_proto(&sel, outlen, alpn_http11, sizeof(alpn_http11), in,
                            inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

/* Writes "<what>: <OpenSSL reason> (<detail>)" into err, using the oldest
 * queued error (the root cause; later entries only add context), then clears
 * the queue so it cannot leak into an unrelated call on this thread. */
static void ssl_errmsg(char *err, size_t errlen, const char *what) {
  const char *data = NULL, *reason = NULL;
  int flags = 0;
  unsigned long e = ERR_peek_error_data(&data, &flags);
  char buf[256];

  if (e != 0) {
    if (ERR_GET_LIB(e) == ERR_LIB_SYS) {
      reason = strerror(ERR_GET_REASON(e));
    } else {
      reason = ERR_reason_error_string(e);
      if (reason == NULL) {
        ERR_error_string_n(e, buf, sizeof(buf));
        reason = buf;
      }
    }
  }
  if (!(flags & ERR_TXT_STRING) || data == NULL || *data == '\0')
    data = NULL;
  if (err != NULL && errlen > 0)
    snprintf(err, errlen, "%s: %s%s%s%s", what,
             reason ? reason : "unknown error", data ? " (" : "",
             data ? data : "", data ? ")" : "");
  ERR_clear_error();
}

/* fopen first so a missing or unreadable file gets the plain errno text
 * rather than OpenSSL's layered "system lib" report. */
static int check_readable(const char *kind, const char *path, char *err,
                          size_t errlen) {
  FILE *f = fopen(path, "rb");
  int e;
  if (f != NULL) {
    fclose(f);
    return 0;
  }
  e = errno;
  snprintf(err, errlen, "tls: cannot open %s file '%s': %s", kind, path,
           strerror(e));
  return e ? -e : CPX_EIO;
}

static EVP_PKEY *read_key(const char *path) {
  BIO *b = BIO_new_file(path, "rb");
  EVP_PKEY *k;
  if (b == NULL)
    return NULL;
  k = PEM_read_bio_PrivateKey(b, NULL, no_passphrase_cb, NULL);
  BIO_free(b);
  return k;
}

/* A context with what both sides want: TLS 1.2 at least (1.0 and 1.1 are
 * deprecated, RFC 8996), no compression (CRIME), no renegotiation (it buys
 * nothing for HTTP/1.1 and costs CPU on the peer's demand), and whole writes
 * only (a partial write would make cpx_tls_conn_write report progress it
 * cannot return; memory BIOs never refuse bytes). */
static SSL_CTX *ctx_base(const SSL_METHOD *m, char *err, size_t errlen) {
  SSL_CTX *s;
  ERR_clear_error();
  s = SSL_CTX_new(m);
  if (s == NULL) {
    ssl_errmsg(err, errlen, "tls: SSL_CTX_new");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
  SSL_CTX_set_options(s, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_clear_mode(s, SSL_MODE_ENABLE_PARTIAL_WRITE);
  return s;
}

/* Wraps s (its reference passes to the new context, or is dropped). */
static int ctx_wrap(SSL_CTX *s, cpx_tls_ctx_t **out, char *err, size_t errlen) {
  cpx_tls_ctx_t *ctx = malloc(sizeof(*ctx));
  if (ctx == NULL) {
    SSL_CTX_free(s);
    snprintf(err, errlen, "tls: out of memory");
    return CPX_ENOMEM;
  }
  ctx->ssl = s;
  *out = ctx;
  return 0;
}

int cpx_tls_ctx_new(cpx_tls_ctx_t **out, const char *cert_file,
                    const char *key_file, char *err, size_t errlen) {
  SSL_CTX *s = NULL;
  EVP_PKEY *key = NULL;
  X509 *cert;
  char what[1024];
  int rc;

  *out = NULL;
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (cert_file == NULL || key_file == NULL || *cert_file == '\0' ||
      *key_file == '\0') {
    snprintf(err, errlen, "tls: both a certificate and a key file are needed");
    return CPX_EINVAL;
  }
  if ((rc = check_readable("certificate", cert_file, err, errlen)) != 0 ||
      (rc = check_readable("key", key_file, err, errlen)) != 0)
    return rc;

  s = ctx_base(TLS_server_method(), err, errlen);
  if (s == NULL)
    return CPX_ENOMEM;
  /* The server's cipher order is the better one. */
  SSL_CTX_set_options(s, SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_alpn_select_cb(s, alpn_select_cb, NULL);
  SSL_CTX_set_default_passwd_cb(s, no_passphrase_cb);

  if (SSL_CTX_use_certificate_chain_file(s, cert_file) != 1) {
    snprintf(what, sizeof(what), "tls: cannot load certificate chain '%s'",
             cert_file);
    ssl_errmsg(err, errlen, what);
    rc = CPX_EINVAL;
    goto fail;
  }
  key = read_key(key_file);
  if (key == NULL) {
    snprintf(what, sizeof(what), "tls: cannot load private key '%s'", key_file);
    ssl_errmsg(err, errlen, what);
    rc = CPX_EINVAL;
    goto fail;
  }
  /* Checked explicitly: SSL_CTX_use_PrivateKey only compares a key with a
   * certificate of the same type and would accept an EC key next to an RSA
   * certificate, failing later at the first handshake. */
  cert = SSL_CTX_get0_certificate(s);
  if (cert == NULL || X509_check_private_key(cert, key) != 1) {
    snprintf(what, sizeof(what),
             "tls: private key '%s' does not match certificate '%s'", key_file,
             cert_file);
    ssl_errmsg(err, errlen, what);
    rc = CPX_EINVAL;
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey(s, key) != 1 ||
      SSL_CTX_check_private_key(s) != 1) {
    snprintf(what, sizeof(what), "tls: cannot use private key '%s'", key_file);
    ssl_errmsg(err, errlen, what);
    rc = CPX_EINVAL;
    goto fail;
  }
  EVP_PKEY_free(key);
  return ctx_wrap(s, out, err, errlen);

fail:
  EVP_PKEY_free(key);
  SSL_CTX_free(s);
  return rc;
}

void cpx_tls_ctx_free(cpx_tls_ctx_t *ctx) {
  if (ctx == NULL)
    return;
  SSL_CTX_free(ctx->ssl);
  free(ctx);
}

/* A connection over two fresh memory BIOs; accept or connect state is the
 * caller's to set. */
static cpx_tls_conn_t *conn_alloc(cpx_tls_ctx_t *ctx) {
  cpx_tls_conn_t *c;
  BIO *rbio, *wbio;

  c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->ssl = SSL_new(ctx->ssl);
  rbio = BIO_new(BIO_s_mem());
  wbio = BIO_new(BIO_s_mem());
  if (c->ssl == NULL || rbio == NULL || wbio == NULL) {
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(c->ssl);
    free(c);
    ERR_clear_error();
    return NULL;
  }
  /* An empty memory BIO must say "retry", not EOF: more bytes will come. */
  BIO_set_mem_eof_return(rbio, -1);
  BIO_set_mem_eof_return(wbio, -1);
  SSL_set_bio(c->ssl, rbio, wbio); /* c->ssl owns both from here */
  SSL_set_app_data(c->ssl, c);
  c->rbio = rbio;
  c->wbio = wbio;
  return c;
}

int cpx_tls_conn_new(cpx_tls_ctx_t *ctx, cpx_tls_conn_t **out) {
  cpx_tls_conn_t *c = conn_alloc(ctx);
  *out = NULL;
  if (c == NULL)
    return CPX_ENOMEM;
  SSL_set_accept_state(c->ssl);
  *out = c;
  return 0;
}

void cpx_tls_conn_free(cpx_tls_conn_t *c) {
  if (c == NULL)
    return;
  /* A client connection that ends without close_notify (the server closed
   * a keep-alive connection, or we did) would have OpenSSL mark its session
   * not resumable; the session is sound unless TLS itself failed. nginx
   * ends its connections the same way (SSL_set_shutdown). */
  if (c->on_session != NULL && c->handshake_done && !c->failed)
    SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  SSL_free(c->ssl);
  free(c);
}

/* Hands everything OpenSSL queued for the peer to on_cipher. */
static int drain(cpx_tls_conn_t *c, cpx_tls_out_cb on_cipher, void *ud) {
  char buf[CPX_TLS_CHUNK];
  int n, rc;

  while (BIO_ctrl_pending(c->wbio) > 0) {
    n = BIO_read(c->wbio, buf, sizeof(buf));
    if (n <= 0)
      break;
    if (on_cipher != NULL && (rc = on_cipher(ud, buf, (size_t)n)) != 0)
      return rc;
  }
  return 0;
}

/* After a fatal error the alert OpenSSL produced (if any) is still worth
 * sending; the connection is dead either way. */
static int fail(cpx_tls_conn_t *c, cpx_tls_out_cb on_cipher, void *ud) {
  c->failed = 1;
  if (c->err_code == 0)
    c->err_code = ERR_peek_error(); /* for cpx_tls_conn_error */
  ERR_clear_error();
  drain(c, on_cipher, ud);
  return CPX_EIO;
}

int cpx_tls_conn_feed(cpx_tls_conn_t *c, const char *buf, size_t len,
                      cpx_tls_out_cb on_plain, cpx_tls_out_cb on_cipher,
                      void *ud) {
  char plain[CPX_TLS_CHUNK];
  size_t got;
  int r, rc;

  if (c->failed)
    return CPX_EIO;
  if (c->peer_closed)
    return CPX_ECLOSED;
  /* A memory BIO write only fails on allocation failure. The read buffer
   * the caller passes bounds how much is queued per call. */
  while (len > 0) {
    int chunk = len > INT32_MAX ? INT32_MAX : (int)len;
    r = BIO_write(c->rbio, buf, chunk);
    if (r <= 0)
      return fail(c, on_cipher, ud);
    buf += r;
    len -= (size_t)r;
  }

  if (!c->handshake_done) {
    ERR_clear_error();
    r = SSL_do_handshake(c->ssl);
    if (r != 1) {
      if (SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ)
        return fail(c, on_cipher, ud);
      return drain(c, on_cipher, ud);
    }
    c->handshake_done = 1;
    if ((rc = drain(c, on_cipher, ud)) != 0)
      return rc;
    /* Fall through: application data may have come in the same feed as the
     * client's Finished (TLS 1.3 clients send both in one flight). */
  }

  for (;;) {
    ERR_clear_error();
    r = SSL_read_ex(c->ssl, plain, sizeof(plain), &got);
    if (r == 1) {
      if (on_plain != NULL && (rc = on_plain(ud, plain, got)) != 0)
        return rc;
      continue;
    }
    switch (SSL_get_error(c->ssl, 0)) {
    case SSL_ERROR_WANT_READ:
      /* Reading may have produced bytes to send: a TLS 1.3 KeyUpdate
       * answer, or an alert refusing renegotiation. */
      return drain(c, on_cipher, ud);
    case SSL_ERROR_ZERO_RETURN:
      c->peer_closed = 1;
      if ((rc = drain(c, on_cipher, ud)) != 0)
        return rc;
      return CPX_ECLOSED;
    default:
      return fail(c, on_cipher, ud);
    }
  }
}

int cpx_tls_conn_write(cpx_tls_conn_t *c, const char *buf, size_t len,
                       cpx_tls_out_cb on_cipher, void *ud) {
  size_t chunk, done;
  int r, rc;

  if (c->failed)
    return CPX_EIO;
  if (!c->handshake_done)
    return CPX_EAGAIN;
  if (c->shut_sent)
    return CPX_ECLOSED;
  /* One record's worth at a time, drained after each, so a large response
   * never sits in the write BIO as a second copy. */
  while (len > 0) {
    chunk = len < CPX_TLS_CHUNK ? len : CPX_TLS_CHUNK;
    ERR_clear_error();
    r = SSL_write_ex(c->ssl, buf, chunk, &done);
    if (r != 1)
      return fail(c, on_cipher, ud);
    if ((rc = drain(c, on_cipher, ud)) != 0)
      return rc;
    buf += done;
    len -= done;
  }
  return 0;
}

int cpx_tls_conn_shutdown(cpx_tls_conn_t *c, cpx_tls_out_cb on_cipher,
                          void *ud) {
  int r;

  /* Nothing to say politely before the handshake or after a fatal error:
   * OpenSSL refuses SSL_shutdown in both states and the caller just closes. */
  if (c->failed || !c->handshake_done || c->shut_sent)
    return 0;
  ERR_clear_error();
  r = SSL_shutdown(c->ssl);
  c->shut_sent = 1;
  if (r < 0)
    return fail(c, on_cipher, ud);
  return drain(c, on_cipher, ud);
}

int cpx_tls_conn_handshake_done(const cpx_tls_conn_t *c) {
  return c->handshake_done;
}

/* ---- client side --------------------------------------------------------- */

/* OpenSSL hands every new session here (SSL_SESS_CACHE_CLIENT with no
 * internal store): the connection's owner keeps it per endpoint. Returning 1
 * passes our reference on to the owner. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess) {
  cpx_tls_conn_t *c = SSL_get_app_data(ssl);
  if (c == NULL || c->on_session == NULL)
    return 0;
  c->on_session(c->ud, sess);
  return 1;
}

/* The system trust store as one file read now: OpenSSL's hashed-directory
 * lookup would open files during a handshake, which is blocking I/O on the
 * loop. SSL_CERT_FILE overrides the compiled-in default, as everywhere in
 * OpenSSL. Falls back to the default paths when no bundle file exists. */
static int load_system_roots(SSL_CTX *s) {
  const char *f = getenv(X509_get_default_cert_file_env());
  FILE *fp;
  if (f == NULL || *f == '\0')
    f = X509_get_default_cert_file();
  fp = fopen(f, "rb");
  if (fp != NULL) {
    fclose(fp);
    if (SSL_CTX_load_verify_locations(s, f, NULL) == 1)
      return 0;
    ERR_clear_error();
  }
  return SSL_CTX_set_default_verify_paths(s) == 1 ? 0 : -1;
}

int cpx_tls_client_ctx_new(cpx_tls_ctx_t **out, const char *ca_file, char *err,
                           size_t errlen) {
  SSL_CTX *s;
  char what[1200];
  int rc;

  *out = NULL;
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (ca_file != NULL && *ca_file != '\0' &&
      (rc = check_readable("CA", ca_file, err, errlen)) != 0)
    return rc;
  s = ctx_base(TLS_client_method(), err, errlen);
  if (s == NULL)
    return CPX_ENOMEM;
  SSL_CTX_set_verify(s, SSL_VERIFY_PEER, NULL);
  /* The owner keeps sessions per endpoint (host, port): OpenSSL's own
   * client cache would need a lookup key per connection anyway. */
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_CLIENT |
                                        SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(s, new_session_cb);
  if (SSL_CTX_set_alpn_protos(s, alpn_http11, sizeof(alpn_http11)) != 0) {
    ssl_errmsg(err, errlen, "tls: ALPN");
    SSL_CTX_free(s);
    return CPX_ENOMEM;
  }
  if (ca_file != NULL && *ca_file != '\0') {
    if (SSL_CTX_load_verify_locations(s, ca_file, NULL) != 1) {
      snprintf(what, sizeof(what), "tls: cannot load CA file '%s'", ca_file);
      ssl_errmsg(err, errlen, what);
      SSL_CTX_free(s);
      return CPX_EINVAL;
    }
  } else if (load_system_roots(s) != 0) {
    ssl_errmsg(err, errlen, "tls: cannot load the system trust store");
    SSL_CTX_free(s);
    return CPX_EINVAL;
  }
  return ctx_wrap(s, out, err, errlen);
}

int cpx_tls_client_conn_new(cpx_tls_ctx_t *ctx, const char *host,
                            cpx_tls_session_t *session,
                            cpx_tls_session_cb on_session, void *ud,
                            cpx_tls_conn_t **out) {
  cpx_tls_conn_t *c;
  unsigned char addr[16];
  int ok;

  *out = NULL;
  c = conn_alloc(ctx);
  if (c == NULL)
    return CPX_ENOMEM;
  SSL_set_connect_state(c->ssl);
  if (inet_pton(AF_INET, host, addr) == 1 ||
      inet_pton(AF_INET6, host, addr) == 1) {
    /* No SNI for an address (RFC 6066); its IP SAN entry is checked. */
    ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host);
  } else {
    SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    ok = SSL_set_tlsext_host_name(c->ssl, host) == 1 &&
         SSL_set1_host(c->ssl, host) == 1;
  }
  if (!ok || (session != NULL && SSL_set_session(c->ssl, session) != 1)) {
    ERR_clear_error();
    cpx_tls_conn_free(c);
    return CPX_EINVAL;
  }
  c->on_session = on_session;
  c->ud = ud;
  *out = c;
  return 0;
}

void cpx_tls_session_free(cpx_tls_session_t *s) {
  SSL_SESSION_free(s);
}

void cpx_tls_session_ref(cpx_tls_session_t *s) {
  SSL_SESSION_up_ref(s);
}

int cpx_tls_session_resumable(const cpx_tls_session_t *s) {
  return SSL_SESSION_is_resumable(s);
}

int cpx_tls_session_single_use(const cpx_tls_session_t *s) {
  return SSL_SESSION_get_protocol_version(s) >= TLS1_3_VERSION;
}

int cpx_tls_conn_resumed(const cpx_tls_conn_t *c) {
  return SSL_session_reused(c->ssl);
}

int cpx_tls_conn_pending(const cpx_tls_conn_t *c) {
  return SSL_pending(c->ssl) > 0 || BIO_ctrl_pending(c->rbio) > 0;
}

void cpx_tls_conn_error(const cpx_tls_conn_t *c, char *buf, size_t len) {
  long v = SSL_get_verify_result(c->ssl);
  if (v != X509_V_OK) {
    snprintf(buf, len, "certificate verify failed: %s",
             X509_verify_cert_error_string(v));
  } else if (c->err_code != 0) {
    const char *r = ERR_reason_error_string(c->err_code);
    if (r != NULL)
      snprintf(buf, len, "%s", r);
    else
      ERR_error_string_n(c->err_code, buf, len);
  } else {
    snprintf(buf, len, "TLS error");
  }
}
