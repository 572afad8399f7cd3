/* cpx_tls.h: TLS over any byte transport, with OpenSSL memory BIOs: the
 * server side (cpx_server.c) and the client side (cpx_h1.c). The owner feeds
 * ciphertext read from the socket and writes the ciphertext this layer
 * produces; plaintext goes to and from the HTTP layer.
 *
 * Ownership: cpx_tls_ctx_t is created from the config at start or reload and
 * freed by cpx_tls_ctx_free when no connection uses it (connections hold a
 * reference via SSL_CTX refcounting). cpx_tls_conn_t belongs to one
 * connection and is freed by cpx_tls_conn_free when the connection closes.
 */
#ifndef CPX_TLS_H
#define CPX_TLS_H

#include "cpx.h"

typedef struct cpx_tls_ctx_s cpx_tls_ctx_t;
typedef struct cpx_tls_conn_s cpx_tls_conn_t;
/* OpenSSL's SSL_SESSION, opaque here: a client keeps one per endpoint to
 * resume the next handshake (one round trip and no certificate check). */
typedef struct ssl_session_st cpx_tls_session_t;

/* Called with bytes to hand on: decrypted plaintext (to the HTTP parser) or
 * ciphertext (to write to the socket). Return 0 to go on, non-zero to stop. */
typedef int (*cpx_tls_out_cb)(void *ud, const char *buf, size_t len);

/* Loads a PEM certificate chain and key. On failure returns a negative code
 * and writes a human message naming the file into err. */
int cpx_tls_ctx_new(cpx_tls_ctx_t **out, const char *cert_file,
                    const char *key_file, char *err, size_t errlen);
void cpx_tls_ctx_free(cpx_tls_ctx_t *ctx);

int cpx_tls_conn_new(cpx_tls_ctx_t *ctx, cpx_tls_conn_t **out);
void cpx_tls_conn_free(cpx_tls_conn_t *c);

/* Feeds ciphertext from the peer. Plaintext is delivered to on_plain; any
 * handshake or alert bytes to send go to on_cipher. Returns 0, or CPX_EIO on
 * a TLS error (the connection must then be closed), or CPX_ECLOSED once the
 * peer has sent close_notify (plaintext before it in the same feed is still
 * delivered first), or a callback's value. The callbacks' buffers are only
 * valid during the call: copy what must outlive it. */
int cpx_tls_conn_feed(cpx_tls_conn_t *c, const char *buf, size_t len,
                      cpx_tls_out_cb on_plain, cpx_tls_out_cb on_cipher,
                      void *ud);

/* Encrypts plaintext; ciphertext goes to on_cipher. Returns 0, CPX_EAGAIN if
 * the handshake is not complete yet (the caller keeps the data and retries
 * after the next feed), CPX_ECLOSED after cpx_tls_conn_shutdown, CPX_EIO, or
 * a callback's value. Any length: records are produced 16 KiB at a time. */
int cpx_tls_conn_write(cpx_tls_conn_t *c, const char *buf, size_t len,
                       cpx_tls_out_cb on_cipher, void *ud);

/* Produces a close_notify alert into on_cipher. Before the handshake is done
 * or after a TLS error it produces nothing and returns 0: just close. */
int cpx_tls_conn_shutdown(cpx_tls_conn_t *c, cpx_tls_out_cb on_cipher,
                          void *ud);

int cpx_tls_conn_handshake_done(const cpx_tls_conn_t *c);

/* ---- client side ---------------------------------------------------------
 *
 * A client context verifies the server's chain against ca_file (PEM, one or
 * more certificates) or, when ca_file is NULL or "", the system trust store
 * (OpenSSL's default bundle file, read now so no handshake reads files on
 * the loop). TLS 1.2 at least, ALPN http/1.1, no compression or
 * renegotiation. Errors as for cpx_tls_ctx_new. */
int cpx_tls_client_ctx_new(cpx_tls_ctx_t **out, const char *ca_file, char *err,
                           size_t errlen);

/* Called when the server hands out a session (a TLS 1.3 ticket arrives after
 * the handshake, while reading). The callee owns s (cpx_tls_session_free). */
typedef void (*cpx_tls_session_cb)(void *ud, cpx_tls_session_t *s);

/* A client connection to host (a name: sent as SNI and checked against the
 * certificate's names; an address literal: checked against its IP entries).
 * session, when not NULL, is offered for resumption (borrowed: the
 * connection takes its own reference). on_session may be NULL. Start the
 * handshake with cpx_tls_conn_feed(c, NULL, 0, ...): the ClientHello goes
 * to on_cipher. */
int cpx_tls_client_conn_new(cpx_tls_ctx_t *ctx, const char *host,
                            cpx_tls_session_t *session,
                            cpx_tls_session_cb on_session, void *ud,
                            cpx_tls_conn_t **out);
void cpx_tls_session_free(cpx_tls_session_t *s);
void cpx_tls_session_ref(cpx_tls_session_t *s);
/* 1 while OpenSSL would still offer s. */
int cpx_tls_session_resumable(const cpx_tls_session_t *s);
/* 1 for a TLS 1.3 ticket: offered once, then spent. */
int cpx_tls_session_single_use(const cpx_tls_session_t *s);
/* 1 when the handshake resumed an offered session. */
int cpx_tls_conn_resumed(const cpx_tls_conn_t *c);
/* 1 when the peer sent bytes this layer holds undelivered. */
int cpx_tls_conn_pending(const cpx_tls_conn_t *c);
/* Why the connection failed (after CPX_EIO): the certificate check's
 * verdict ("certificate verify failed: hostname mismatch") or OpenSSL's
 * reason. Written into buf (always terminated). */
void cpx_tls_conn_error(const cpx_tls_conn_t *c, char *buf, size_t len);

#endif /* CPX_TLS_H */
