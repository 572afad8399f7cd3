/* cpx_tls.h: server-side TLS over any byte transport, with OpenSSL memory
 * BIOs. The server feeds ciphertext read from the socket and writes the
 * ciphertext this layer produces; plaintext goes to and from the HTTP layer.
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

#endif /* CPX_TLS_H */
