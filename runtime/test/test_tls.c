/* test_tls.c: the server side of cpx_tls against a real OpenSSL client,
 * both driven through memory BIOs.
 *
 * The certificates are throwaway: an EC P-256 self-signed certificate for
 * "localhost" is generated in memory at start and written to a temporary
 * directory that is removed at the end.
 */
#include "cpx_tls.h"
#include "cpx_test.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static char tmpdir[] = "/tmp/cpx_test_tls_XXXXXX";
static char cert_path[256], key_path[256], key2_path[256], rsakey_path[256],
    junk_path[256];
static X509 *test_cert;

/* ---- test material ------------------------------------------------------ */

static int write_key(const char *path, EVP_PKEY *k) {
  FILE *f = fopen(path, "wb");
  int ok;
  if (f == NULL)
    return -1;
  ok = PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
  fclose(f);
  return ok ? 0 : -1;
}

static int make_material(void) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  EVP_PKEY *k2 = EVP_EC_gen("P-256");
  EVP_PKEY *rsa = EVP_RSA_gen(2048);
  X509 *x = X509_new();
  X509_NAME *name;
  FILE *f;

  if (!k || !k2 || !rsa || !x || mkdtemp(tmpdir) == NULL)
    return -1;
  snprintf(cert_path, sizeof(cert_path), "%s/cert.pem", tmpdir);
  snprintf(key_path, sizeof(key_path), "%s/key.pem", tmpdir);
  snprintf(key2_path, sizeof(key2_path), "%s/other-key.pem", tmpdir);
  snprintf(rsakey_path, sizeof(rsakey_path), "%s/rsa-key.pem", tmpdir);
  snprintf(junk_path, sizeof(junk_path), "%s/junk.pem", tmpdir);

  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, k);
  name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             (const unsigned char *)"localhost", -1, -1, 0);
  X509_set_issuer_name(x, name);
  {
    X509V3_CTX v3;
    X509_EXTENSION *ext;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost");
    if (ext == NULL)
      return -1;
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (!X509_sign(x, k, EVP_sha256()))
    return -1;

  f = fopen(cert_path, "wb");
  if (f == NULL || !PEM_write_X509(f, x))
    return -1;
  fclose(f);
  if (write_key(key_path, k) || write_key(key2_path, k2) ||
      write_key(rsakey_path, rsa))
    return -1;
  f = fopen(junk_path, "wb");
  if (f == NULL)
    return -1;
  fputs("this is not PEM\n", f);
  fclose(f);

  test_cert = x;
  EVP_PKEY_free(k);
  EVP_PKEY_free(k2);
  EVP_PKEY_free(rsa);
  return 0;
}

static void remove_material(void) {
  unlink(cert_path);
  unlink(key_path);
  unlink(key2_path);
  unlink(rsakey_path);
  unlink(junk_path);
  rmdir(tmpdir);
  X509_free(test_cert);
}

/* ---- a client and a pump ------------------------------------------------ */

/* A byte buffer that grows; owned by the pair, freed by pair_free. */
typedef struct {
  char *p;
  size_t n, cap;
} buf_t;

static void buf_add(buf_t *b, const char *p, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
}

/* One connection: the server side under test and an OpenSSL client. */
typedef struct {
  cpx_tls_conn_t *srv;
  SSL_CTX *cctx;
  SSL *cli;
  BIO *c_in, *c_out; /* owned by cli */
  buf_t plain;       /* plaintext the server delivered */
  buf_t to_client;   /* ciphertext the server produced, not yet delivered */
  int stop_with;     /* on_plain returns this when non-zero */
} pair_t;

static int on_plain(void *ud, const char *buf, size_t len) {
  pair_t *p = ud;
  buf_add(&p->plain, buf, len);
  return p->stop_with;
}

static int on_cipher(void *ud, const char *buf, size_t len) {
  pair_t *p = ud;
  buf_add(&p->to_client, buf, len);
  return 0;
}

static void pair_init(pair_t *p, cpx_tls_ctx_t *ctx, int max_version) {
  memset(p, 0, sizeof(*p));
  CPX_CHECK_INT(cpx_tls_conn_new(ctx, &p->srv), 0);
  p->cctx = SSL_CTX_new(TLS_client_method());
  /* Verify for real against the generated certificate. */
  X509_STORE_add_cert(SSL_CTX_get_cert_store(p->cctx), test_cert);
  SSL_CTX_set_verify(p->cctx, SSL_VERIFY_PEER, NULL);
  if (max_version) {
    SSL_CTX_set_max_proto_version(p->cctx, max_version);
    if (max_version < TLS1_2_VERSION) {
      SSL_CTX_set_security_level(p->cctx, 0);
      SSL_CTX_set_min_proto_version(p->cctx, max_version);
    }
  }
  p->cli = SSL_new(p->cctx);
  SSL_set1_host(p->cli, "localhost");
  SSL_set_tlsext_host_name(p->cli, "localhost");
  SSL_set_alpn_protos(p->cli, (const unsigned char *)"\x02h2\x08http/1.1", 12);
  p->c_in = BIO_new(BIO_s_mem());
  p->c_out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(p->c_in, -1);
  BIO_set_mem_eof_return(p->c_out, -1);
  SSL_set_bio(p->cli, p->c_in, p->c_out);
  SSL_set_connect_state(p->cli);
}

static void pair_free(pair_t *p) {
  cpx_tls_conn_free(p->srv);
  SSL_free(p->cli);
  SSL_CTX_free(p->cctx);
  free(p->plain.p);
  free(p->to_client.p);
  ERR_clear_error();
}

/* Moves the server's output into the client's read BIO. */
static void to_client(pair_t *p) {
  if (p->to_client.n > 0)
    BIO_write(p->c_in, p->to_client.p, (int)p->to_client.n);
  p->to_client.n = 0;
}

/* Feeds everything the client produced to the server, `step` bytes per feed
 * (0: all at once). Returns the first non-zero feed result. */
static int to_server(pair_t *p, size_t step) {
  char buf[65536];
  int n, rc = 0;
  size_t off;

  while ((n = BIO_read(p->c_out, buf, sizeof(buf))) > 0) {
    for (off = 0; off < (size_t)n && rc == 0;) {
      size_t k = step && step < (size_t)n - off ? step : (size_t)n - off;
      rc = cpx_tls_conn_feed(p->srv, buf + off, k, on_plain, on_cipher, p);
      off += k;
    }
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* Runs the handshake to completion on both sides. */
static int handshake(pair_t *p, size_t step) {
  int i, r, rc;
  for (i = 0; i < 20; i++) {
    r = SSL_do_handshake(p->cli);
    if (r != 1 && SSL_get_error(p->cli, r) != SSL_ERROR_WANT_READ)
      return -1;
    if ((rc = to_server(p, step)) != 0)
      return rc;
    to_client(p);
    if (r == 1 && cpx_tls_conn_handshake_done(p->srv))
      return 0;
  }
  return -2;
}

/* Reads whatever plaintext the client can get from what it has received. */
static void client_read(pair_t *p, buf_t *out) {
  char buf[16384];
  size_t got;
  while (SSL_read_ex(p->cli, buf, sizeof(buf), &got) == 1)
    buf_add(out, buf, got);
}

static cpx_tls_ctx_t *good_ctx(void) {
  cpx_tls_ctx_t *ctx = NULL;
  char err[512];
  int rc = cpx_tls_ctx_new(&ctx, cert_path, key_path, err, sizeof(err));
  if (rc != 0)
    fprintf(stderr, "ctx: %s\n", err);
  return ctx;
}

/* ---- cases -------------------------------------------------------------- */

static void test_handshake(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;
  const unsigned char *alpn;
  unsigned alpnlen;
  buf_t got = {0};

  pair_init(&p, ctx, 0);
  CPX_CHECK(!cpx_tls_conn_handshake_done(p.srv));
  CPX_CHECK_INT(handshake(&p, 0), 0);
  CPX_CHECK(cpx_tls_conn_handshake_done(p.srv));
  CPX_CHECK_INT(SSL_version(p.cli), TLS1_3_VERSION);
  CPX_CHECK_INT(SSL_get_verify_result(p.cli), X509_V_OK);
  SSL_get0_alpn_selected(p.cli, &alpn, &alpnlen);
  CPX_CHECK_MEM(alpn, alpnlen, "http/1.1", 8);
  CPX_CHECK(SSL_get_current_compression(p.cli) == NULL);

  /* A request and a response. */
  CPX_CHECK_INT(SSL_write(p.cli, "GET / HTTP/1.1\r\n\r\n", 18), 18);
  CPX_CHECK_INT(to_server(&p, 0), 0);
  CPX_CHECK_MEM(p.plain.p, p.plain.n, "GET / HTTP/1.1\r\n\r\n", 18);
  CPX_CHECK_INT(
      cpx_tls_conn_write(p.srv, "HTTP/1.1 200 OK\r\n", 17, on_cipher, &p), 0);
  to_client(&p);
  client_read(&p, &got);
  CPX_CHECK_MEM(got.p, got.n, "HTTP/1.1 200 OK\r\n", 17);
  free(got.p);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

static void test_tls12(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;
  buf_t got = {0};

  pair_init(&p, ctx, TLS1_2_VERSION);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  CPX_CHECK_INT(SSL_version(p.cli), TLS1_2_VERSION);
  CPX_CHECK_INT(SSL_write(p.cli, "ping", 4), 4);
  CPX_CHECK_INT(to_server(&p, 0), 0);
  CPX_CHECK_MEM(p.plain.p, p.plain.n, "ping", 4);
  CPX_CHECK_INT(cpx_tls_conn_write(p.srv, "pong", 4, on_cipher, &p), 0);
  to_client(&p);
  client_read(&p, &got);
  CPX_CHECK_MEM(got.p, got.n, "pong", 4);
  free(got.p);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

/* A TLS 1.2 client asking to renegotiate gets a no_renegotiation alert and
 * the connection goes on. */
static void test_no_renegotiation(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;

  pair_init(&p, ctx, TLS1_2_VERSION);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  CPX_CHECK_INT(SSL_renegotiate(p.cli), 1);
  SSL_do_handshake(p.cli); /* sends a new ClientHello */
  CPX_CHECK_INT(to_server(&p, 0), 0);
  CPX_CHECK(p.to_client.n > 0); /* the warning alert */
  CPX_CHECK_INT(cpx_tls_conn_write(p.srv, "still here", 10, on_cipher, &p), 0);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

/* TLS 1.1 is refused even when the client would accept it. */
static void test_tls11_refused(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;
  int r;

  pair_init(&p, ctx, TLS1_1_VERSION);
  r = SSL_do_handshake(p.cli);
  if (r == 1 || SSL_get_error(p.cli, r) != SSL_ERROR_WANT_READ) {
    /* This OpenSSL build cannot even offer TLS 1.1: nothing to test. */
    pair_free(&p);
    cpx_tls_ctx_free(ctx);
    return;
  }
  CPX_CHECK_INT(to_server(&p, 0), CPX_EIO);
  CPX_CHECK(!cpx_tls_conn_handshake_done(p.srv));
  /* The alert reaches the client. */
  to_client(&p);
  CPX_CHECK(SSL_do_handshake(p.cli) != 1);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

/* The handshake survives being cut into single-byte feeds, in both
 * directions, and so does the data after it. */
static void test_byte_at_a_time(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;
  int i, r, rc = 0, done = 0;
  size_t k;
  static const char msg[] = "POST /v1/chat/completions HTTP/1.1\r\n";

  pair_init(&p, ctx, 0);
  for (i = 0; i < 20 && !done; i++) {
    r = SSL_do_handshake(p.cli);
    CPX_CHECK(r == 1 || SSL_get_error(p.cli, r) == SSL_ERROR_WANT_READ);
    rc = to_server(&p, 1);
    CPX_CHECK_INT(rc, 0);
    for (k = 0; k < p.to_client.n; k++)
      BIO_write(p.c_in, p.to_client.p + k, 1);
    p.to_client.n = 0;
    done = r == 1 && cpx_tls_conn_handshake_done(p.srv);
  }
  CPX_CHECK(done);
  CPX_CHECK_INT(SSL_write(p.cli, msg, (int)strlen(msg)), (int)strlen(msg));
  CPX_CHECK_INT(to_server(&p, 1), 0);
  CPX_CHECK_MEM(p.plain.p, p.plain.n, msg, strlen(msg));
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

/* TLS 1.3: the client's Finished and its first request travel in one feed. */
static void test_data_with_finished(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;
  int r;

  pair_init(&p, ctx, 0);
  r = SSL_do_handshake(p.cli); /* ClientHello */
  CPX_CHECK_INT(to_server(&p, 0), 0);
  to_client(&p);
  r = SSL_do_handshake(p.cli); /* reads the server flight, writes Finished */
  CPX_CHECK_INT(r, 1);
  CPX_CHECK(!cpx_tls_conn_handshake_done(p.srv));
  CPX_CHECK_INT(SSL_write(p.cli, "early-ish", 9), 9);
  CPX_CHECK(BIO_ctrl_pending(p.c_out) > 0);
  CPX_CHECK_INT(to_server(&p, 0), 0); /* one feed: Finished + data */
  CPX_CHECK(cpx_tls_conn_handshake_done(p.srv));
  CPX_CHECK_MEM(p.plain.p, p.plain.n, "early-ish", 9);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

static void test_write_before_handshake(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;

  pair_init(&p, ctx, 0);
  CPX_CHECK_INT(cpx_tls_conn_write(p.srv, "x", 1, on_cipher, &p), CPX_EAGAIN);
  SSL_do_handshake(p.cli);
  CPX_CHECK_INT(to_server(&p, 0), 0); /* mid-handshake */
  CPX_CHECK_INT(cpx_tls_conn_write(p.srv, "x", 1, on_cipher, &p), CPX_EAGAIN);
  to_client(&p);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  CPX_CHECK_INT(cpx_tls_conn_write(p.srv, "x", 1, on_cipher, &p), 0);
  /* Shutting down before the handshake says nothing. */
  pair_free(&p);
  pair_init(&p, ctx, 0);
  CPX_CHECK_INT(cpx_tls_conn_shutdown(p.srv, on_cipher, &p), 0);
  CPX_CHECK_INT(p.to_client.n, 0);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

/* 1 MiB each way: the client sends it, the server gets it and sends it back
 * in a single cpx_tls_conn_write, far beyond one 16 KiB record. */
static void test_echo_1mib(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;
  size_t n = 1 << 20, off, i;
  char *data = malloc(n);
  buf_t got = {0};
  int w;

  for (i = 0; i < n; i++)
    data[i] = (char)(i * 131 + (i >> 9));
  pair_init(&p, ctx, 0);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  for (off = 0; off < n; off += (size_t)w) {
    w = SSL_write(p.cli, data + off,
                  (int)(n - off < 100000 ? n - off : 100000));
    CPX_CHECK(w > 0);
    if (w <= 0)
      break;
    /* Uneven feed sizes cut records at odd places. */
    CPX_CHECK_INT(to_server(&p, 7777), 0);
  }
  CPX_CHECK_INT(p.plain.n, n);
  CPX_CHECK(p.plain.n == n && memcmp(p.plain.p, data, n) == 0);

  CPX_CHECK_INT(cpx_tls_conn_write(p.srv, p.plain.p, p.plain.n, on_cipher, &p),
                0);
  CPX_CHECK(p.to_client.n > n);
  to_client(&p);
  client_read(&p, &got);
  CPX_CHECK_INT(got.n, n);
  CPX_CHECK(got.n == n && memcmp(got.p, data, n) == 0);
  free(got.p);
  free(data);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

static void test_close_notify(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;
  char buf[16];
  size_t got;

  /* Server closes: the client sees a clean end of stream. */
  pair_init(&p, ctx, 0);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  CPX_CHECK_INT(cpx_tls_conn_shutdown(p.srv, on_cipher, &p), 0);
  CPX_CHECK(p.to_client.n > 0);
  to_client(&p);
  CPX_CHECK_INT(SSL_read_ex(p.cli, buf, sizeof(buf), &got), 0);
  CPX_CHECK_INT(SSL_get_error(p.cli, 0), SSL_ERROR_ZERO_RETURN);
  CPX_CHECK_INT(cpx_tls_conn_write(p.srv, "x", 1, on_cipher, &p), CPX_ECLOSED);
  pair_free(&p);

  /* Client sends its last bytes and close_notify in one flight. */
  pair_init(&p, ctx, 0);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  CPX_CHECK_INT(SSL_write(p.cli, "bye", 3), 3);
  SSL_shutdown(p.cli);
  CPX_CHECK_INT(to_server(&p, 0), CPX_ECLOSED);
  CPX_CHECK_MEM(p.plain.p, p.plain.n, "bye", 3);
  CPX_CHECK_INT(cpx_tls_conn_feed(p.srv, "", 0, on_plain, on_cipher, &p),
                CPX_ECLOSED);
  /* Our own close_notify may still go out. */
  p.to_client.n = 0;
  CPX_CHECK_INT(cpx_tls_conn_shutdown(p.srv, on_cipher, &p), 0);
  CPX_CHECK(p.to_client.n > 0);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

static void test_garbage(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;
  static const char get[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  char junk[4096];
  size_t i;

  /* Plain HTTP sent to the TLS port. */
  pair_init(&p, ctx, 0);
  CPX_CHECK_INT(
      cpx_tls_conn_feed(p.srv, get, strlen(get), on_plain, on_cipher, &p),
      CPX_EIO);
  CPX_CHECK_INT(cpx_tls_conn_feed(p.srv, "x", 1, on_plain, on_cipher, &p),
                CPX_EIO);
  CPX_CHECK_INT(cpx_tls_conn_write(p.srv, "x", 1, on_cipher, &p), CPX_EIO);
  CPX_CHECK_INT(cpx_tls_conn_shutdown(p.srv, on_cipher, &p), 0);
  CPX_CHECK_INT(p.plain.n, 0);
  pair_free(&p);

  /* Random bytes after a good handshake: a record that fails to decrypt. */
  pair_init(&p, ctx, 0);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  for (i = 0; i < sizeof(junk); i++)
    junk[i] = (char)(i * 7 + 3);
  junk[0] = 0x17; /* application_data */
  junk[1] = 0x03;
  junk[2] = 0x03;
  junk[3] = 0x01;
  junk[4] = 0x00;
  CPX_CHECK_INT(
      cpx_tls_conn_feed(p.srv, junk, sizeof(junk), on_plain, on_cipher, &p),
      CPX_EIO);
  CPX_CHECK_INT(p.plain.n, 0);
  pair_free(&p);

  /* A flipped bit inside a real record. */
  pair_init(&p, ctx, 0);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  SSL_write(p.cli, "hello", 5);
  {
    char rec[256];
    int n = BIO_read(p.c_out, rec, sizeof(rec));
    CPX_CHECK(n > 10);
    rec[n - 3] ^= 0x40;
    CPX_CHECK_INT(
        cpx_tls_conn_feed(p.srv, rec, (size_t)n, on_plain, on_cipher, &p),
        CPX_EIO);
  }
  CPX_CHECK_INT(p.plain.n, 0);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

/* A callback's non-zero value stops the feed and is returned as is. */
static void test_callback_stop(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;

  pair_init(&p, ctx, 0);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  SSL_write(p.cli, "one", 3);
  p.stop_with = 42;
  CPX_CHECK_INT(to_server(&p, 0), 42);
  CPX_CHECK_MEM(p.plain.p, p.plain.n, "one", 3);
  pair_free(&p);
  cpx_tls_ctx_free(ctx);
}

/* The context may be freed while a connection made from it is still open. */
static void test_ctx_free_early(void) {
  cpx_tls_ctx_t *ctx = good_ctx();
  pair_t p;

  pair_init(&p, ctx, 0);
  cpx_tls_ctx_free(ctx);
  CPX_CHECK_INT(handshake(&p, 0), 0);
  pair_free(&p);
}

static void test_ctx_errors(void) {
  cpx_tls_ctx_t *ctx = NULL;
  char err[1024], missing[300];

  snprintf(missing, sizeof(missing), "%s/missing.pem", tmpdir);
  CPX_CHECK_INT(cpx_tls_ctx_new(&ctx, missing, key_path, err, sizeof(err)),
                -ENOENT);
  CPX_CHECK(strstr(err, missing) != NULL);
  CPX_CHECK(strstr(err, "No such file") != NULL);
  CPX_CHECK(ctx == NULL);

  /* Another key of the same type: "key values mismatch". */
  CPX_CHECK_INT(cpx_tls_ctx_new(&ctx, cert_path, key2_path, err, sizeof(err)),
                CPX_EINVAL);
  CPX_CHECK(strstr(err, key2_path) != NULL);
  CPX_CHECK(strstr(err, cert_path) != NULL);
  CPX_CHECK(strstr(err, "mismatch") != NULL);
  CPX_CHECK(ctx == NULL);

  /* A key of another type (RSA key, EC certificate). */
  CPX_CHECK_INT(cpx_tls_ctx_new(&ctx, cert_path, rsakey_path, err, sizeof(err)),
                CPX_EINVAL);
  CPX_CHECK(strstr(err, rsakey_path) != NULL);
  CPX_CHECK(strstr(err, "does not match") != NULL);

  /* Not PEM at all, as certificate and as key. */
  CPX_CHECK_INT(cpx_tls_ctx_new(&ctx, junk_path, key_path, err, sizeof(err)),
                CPX_EINVAL);
  CPX_CHECK(strstr(err, junk_path) != NULL);
  CPX_CHECK(strstr(err, "certificate") != NULL);
  CPX_CHECK_INT(cpx_tls_ctx_new(&ctx, cert_path, junk_path, err, sizeof(err)),
                CPX_EINVAL);
  CPX_CHECK(strstr(err, junk_path) != NULL);
  CPX_CHECK(strstr(err, "private key") != NULL);

  /* Key and certificate swapped. */
  CPX_CHECK_INT(cpx_tls_ctx_new(&ctx, key_path, cert_path, err, sizeof(err)),
                CPX_EINVAL);
  CPX_CHECK(strstr(err, key_path) != NULL);

  CPX_CHECK_INT(cpx_tls_ctx_new(&ctx, "", key_path, err, sizeof(err)),
                CPX_EINVAL);
  CPX_CHECK(ERR_peek_error() == 0);
}

int main(void) {
  if (make_material() != 0) {
    fprintf(stderr, "cannot create test certificates\n");
    ERR_print_errors_fp(stderr);
    return 1;
  }
  CPX_TEST_RUN(test_handshake);
  CPX_TEST_RUN(test_tls12);
  CPX_TEST_RUN(test_no_renegotiation);
  CPX_TEST_RUN(test_tls11_refused);
  CPX_TEST_RUN(test_byte_at_a_time);
  CPX_TEST_RUN(test_data_with_finished);
  CPX_TEST_RUN(test_write_before_handshake);
  CPX_TEST_RUN(test_echo_1mib);
  CPX_TEST_RUN(test_close_notify);
  CPX_TEST_RUN(test_garbage);
  CPX_TEST_RUN(test_callback_stop);
  CPX_TEST_RUN(test_ctx_free_early);
  CPX_TEST_RUN(test_ctx_errors);
  remove_material();
  CPX_TEST_DONE();
}
