/* tls.h - OpenSSL 3 contexts and TLS bufferevents for every service.
 * Contexts: TLS 1.2 minimum, AEAD ciphers with forward secrecy for 1.2
 * (OpenSSL's defaults for 1.3), no compression, no renegotiation. A
 * self-signed development certificate can be made for the local cluster and
 * the tests. Bufferevents: implicit TLS (accept or connect on a fresh socket)
 * and STARTTLS on a live plaintext bufferevent, which throws away anything the
 * peer sent before the handshake (the CVE-2011-0411 command injection).
 *
 * Ownership: *_ctx_new return a context the caller frees with SSL_CTX_free;
 * each SSL made from it holds its own reference, so a context can be freed
 * (or replaced by tls_holder_reload) while connections still use it.
 * Errors: functions with error_r set it to a string in a thread-local buffer,
 * valid until the next tls_ call on that thread. */
#ifndef MAIL_TLS_H
#define MAIL_TLS_H
#include "lib/common.h"
#include <event2/util.h>

typedef struct ssl_ctx_st SSL_CTX;
struct bufferevent;
struct event_base;

/* tls_server_ctx_new - certificate chain and key (PEM files); ca_file (NULL
 * or "" for none) makes client certificates required and verified against it */
SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file, const char *ca_file,
			    const char **error_r);
/* tls_client_ctx_new - verify: check the server's certificate against ca_file
 * (NULL or "" = the system's default store). cert/key (NULL or "" for none):
 * a client certificate to present. */
SSL_CTX *tls_client_ctx_new(const char *ca_file, const char *cert, const char *key, bool verify,
			    const char **error_r);
/* tls_ctx_set_alpn - protocols in preference order ("h2", "http/1.1"). A client
 * context advertises them; a server context picks its most preferred one the
 * client offers and refuses the handshake (no_application_protocol) when the
 * client offers ALPN without any of them. Clients sending no ALPN are served.
 * 0 / -1 (a name empty or over 255 bytes). */
int tls_ctx_set_alpn(SSL_CTX *ctx, const char *const *protos, size_t n);

/* tls_dev_cert_generate - a self-signed EC P-256 certificate for common_name
 * with subjectAltName DNS:localhost, IP:127.0.0.1, IP:::1 (and DNS:common_name),
 * valid 10 years, usable as server and client certificate and as its own CA
 * file. Both files are written mode 0600 through a temporary file and a
 * rename, so a reader never sees half a file. 0 / -1. */
int tls_dev_cert_generate(const char *cert_path, const char *key_path, const char *common_name,
			  const char **error_r);

/* tls_bev_accept - server side of implicit TLS on an accepted socket; the
 * bufferevent owns fd and the SSL (freed with it). A peer closing without
 * close_notify is reported as BEV_EVENT_EOF. NULL on failure (fd untouched). */
struct bufferevent *tls_bev_accept(struct event_base *base, evutil_socket_t fd, SSL_CTX *ctx);
/* tls_bev_connect - client side on a connected (or connecting) socket. host:
 * sent as SNI and required in the server's certificate when the context
 * verifies (an IP literal is matched against IP SANs); NULL for neither. */
struct bufferevent *tls_bev_connect(struct event_base *base, evutil_socket_t fd, SSL_CTX *ctx,
				    const char *host);
/* tls_bev_starttls - upgrades a live plaintext bufferevent, server side.
 * Queue the "go ahead" reply on `plain` first and drop any queue of parsed
 * lines of your own. Any bytes already received are drained and DISCARDED;
 * then `plain` is wrapped in a TLS filter that owns it (freeing the returned
 * bufferevent frees plain, the SSL and the socket). Use only the returned
 * bufferevent afterwards; set its callbacks and enable it. NULL on failure
 * (plain untouched). */
struct bufferevent *tls_bev_starttls(struct bufferevent *plain, SSL_CTX *ctx);
/* tls_bev_starttls_client - the same for the client side of an upgrade:
 * anything the server sent after its go-ahead is discarded too. */
struct bufferevent *tls_bev_starttls_client(struct bufferevent *plain, SSL_CTX *ctx,
					    const char *host);
/* tls_bev_describe - "TLSv1.3 TLS_AES_256_GCM_SHA384" once the handshake is
 * done ("TLSv1.3" before; "plaintext" for a bufferevent without TLS) */
const char *tls_bev_describe(struct bufferevent *bev, char *buf, size_t size);
/* tls_bev_alpn - the negotiated ALPN protocol into buf ("" when none) */
const char *tls_bev_alpn(struct bufferevent *bev, char *buf, size_t size);
/* tls_bev_error - the last TLS error of this thread as text ("" when none);
 * call from an event callback reporting BEV_EVENT_ERROR */
const char *tls_bev_error(struct bufferevent *bev, char *buf, size_t size);

/* tls_holder - a server context that SIGHUP can replace while workers use it.
 * Thread-safe: reload on the main thread, get from any worker. */
struct tls_holder;
struct tls_holder *tls_holder_new(const char *cert_file, const char *key_file,
				  const char *ca_file, const char **error_r);
void tls_holder_free(struct tls_holder **hp);
/* tls_holder_set_alpn - applied to the current context and every reload */
int tls_holder_set_alpn(struct tls_holder *h, const char *const *protos, size_t n);
/* tls_holder_reload - reads the files again into a new context; on failure
 * the old context stays in use and -1 is returned with *error_r */
int tls_holder_reload(struct tls_holder *h, const char **error_r);
/* tls_holder_get - the current context with a reference taken: the caller
 * SSL_CTX_free()s it (after SSL_new, which takes its own) */
SSL_CTX *tls_holder_get(struct tls_holder *h);
#endif
