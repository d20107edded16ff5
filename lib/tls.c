/* tls.c - OpenSSL 3 contexts, the development certificate, TLS bufferevents
 * (implicit and STARTTLS) and the reloadable server context holder.
 * Contexts are reference counted by OpenSSL: every SSL takes its own
 * reference, so replacing or freeing a context never breaks a live
 * connection. The ALPN list of a context lives in its ex_data and is freed
 * with it. */
#include "lib/common.h"
#include "lib/tls.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/stat.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>

/* TLS 1.2 suites: ECDHE + AEAD only (Mozilla "intermediate"); 1.3 keeps OpenSSL's */
#define TLS_CIPHERS_12 \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS_DEV_CERT_DAYS 3650

static _Thread_local char tls_errbuf[512];

/* tls_fail - formats *error_r with OpenSSL's most recent error appended */
ATTR_PRINTF(2, 3)
static void tls_fail(const char **error_r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tls_errbuf, sizeof(tls_errbuf), fmt, ap);
	va_end(ap);
	unsigned long e, last = 0;
	while ((e = ERR_get_error()) != 0)
		last = e; /* the last one queued says most about the cause */
	if (last != 0 && n >= 0 && (size_t)n < sizeof(tls_errbuf) - 3) {
		memcpy(tls_errbuf + n, ": ", 3);
		ERR_error_string_n(last, tls_errbuf + n + 2, sizeof(tls_errbuf) - (size_t)n - 2);
	}
	if (error_r != NULL)
		*error_r = tls_errbuf;
}

static bool empty(const char *s)
{
	return s == NULL || s[0] == '\0';
}

/* tls_ctx_common - the settings server and client share */
static int tls_ctx_common(SSL_CTX *ctx, const char **error_r)
{
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_cipher_list(ctx, TLS_CIPHERS_12) != 1) {
		tls_fail(error_r, "cannot set TLS versions or ciphers");
		return -1;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	/* long-idle connections should not keep 2 x 16 KiB buffers each */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	return 0;
}

/* tls_ctx_load_pair - certificate chain + private key, checked to match */
static int tls_ctx_load_pair(SSL_CTX *ctx, const char *cert_file, const char *key_file,
			     const char **error_r)
{
	if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
		tls_fail(error_r, "cannot load certificate %s", cert_file);
		return -1;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
		tls_fail(error_r, "cannot load private key %s", key_file);
		return -1;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		tls_fail(error_r, "private key %s does not match certificate %s", key_file, cert_file);
		return -1;
	}
	return 0;
}

SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file, const char *ca_file,
			    const char **error_r)
{
	static const unsigned char sid_ctx[] = "lib-tls";
	ERR_clear_error();
	if (empty(cert_file) || empty(key_file)) {
		tls_fail(error_r, "a TLS server needs both a certificate and a key file");
		return NULL;
	}
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		tls_fail(error_r, "SSL_CTX_new failed");
		return NULL;
	}
	if (tls_ctx_common(ctx, error_r) < 0 ||
	    tls_ctx_load_pair(ctx, cert_file, key_file, error_r) < 0)
		goto fail;
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	/* needed for resumption once client certificates are verified */
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	if (!empty(ca_file)) {
		if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			tls_fail(error_r, "cannot load CA file %s", ca_file);
			goto fail;
		}
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
		if (names != NULL)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

SSL_CTX *tls_client_ctx_new(const char *ca_file, const char *cert, const char *key, bool verify,
			    const char **error_r)
{
	ERR_clear_error();
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL) {
		tls_fail(error_r, "SSL_CTX_new failed");
		return NULL;
	}
	if (tls_ctx_common(ctx, error_r) < 0)
		goto fail;
	if (verify) {
		if (empty(ca_file)) {
			if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
				tls_fail(error_r, "cannot load the system CA store");
				goto fail;
			}
		} else if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			tls_fail(error_r, "cannot load CA file %s", ca_file);
			goto fail;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	if (!empty(cert) || !empty(key)) {
		if (empty(cert) || empty(key)) {
			tls_fail(error_r, "a client certificate needs both a certificate and a key file");
			goto fail;
		}
		if (tls_ctx_load_pair(ctx, cert, key, error_r) < 0)
			goto fail;
	}
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* ----------------------------------------------------------------------- ALPN */

struct tls_alpn {
	unsigned char *wire; /* length-prefixed names, as on the wire */
	unsigned int len;
};

static int tls_alpn_index = -1;
static pthread_once_t tls_alpn_once = PTHREAD_ONCE_INIT;

static void tls_alpn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
			  void *argp)
{
	struct tls_alpn *a = ptr;
	if (a != NULL) {
		free(a->wire);
		free(a);
	}
}

static void tls_alpn_init(void)
{
	tls_alpn_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tls_alpn_free);
	if (tls_alpn_index < 0)
		log_panic("SSL_CTX_get_ex_new_index failed", "what=%s", "alpn");
}

/* tls_alpn_select - server side: our first preference the client offers */
static int tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
			   const unsigned char *in, unsigned int inlen, void *arg)
{
	const struct tls_alpn *a = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tls_alpn_index);
	unsigned char *sel;
	unsigned char sel_len;
	if (a == NULL)
		return SSL_TLSEXT_ERR_NOACK;
	if (SSL_select_next_proto(&sel, &sel_len, a->wire, a->len, in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_ALERT_FATAL; /* RFC 7301: no_application_protocol */
	*out = sel;
	*outlen = sel_len;
	return SSL_TLSEXT_ERR_OK;
}

int tls_ctx_set_alpn(SSL_CTX *ctx, const char *const *protos, size_t n)
{
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(protos[i]);
		if (l == 0 || l > 255)
			return -1;
		total += 1 + l;
	}
	if (total == 0 || total > 65535)
		return -1;
	pthread_once(&tls_alpn_once, tls_alpn_init);
	struct tls_alpn *a = XNEW(struct tls_alpn);
	a->wire = xmalloc(total);
	a->len = (unsigned int)total;
	size_t off = 0;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(protos[i]);
		a->wire[off++] = (unsigned char)l;
		memcpy(a->wire + off, protos[i], l);
		off += l;
	}
	/* a client context advertises the list, a server context selects from it */
	if (SSL_CTX_set_alpn_protos(ctx, a->wire, a->len) != 0) {
		tls_alpn_free(NULL, a, NULL, 0, 0, NULL);
		return -1;
	}
	struct tls_alpn *old = SSL_CTX_get_ex_data(ctx, tls_alpn_index);
	if (SSL_CTX_set_ex_data(ctx, tls_alpn_index, a) != 1) {
		tls_alpn_free(NULL, a, NULL, 0, 0, NULL);
		return -1;
	}
	tls_alpn_free(NULL, old, NULL, 0, 0, NULL);
	SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);
	return 0;
}

/* ------------------------------------------------------ development certificate */

/* add_ext - one X509v3 extension in openssl.cnf syntax */
static int add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX v3;
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (ext == NULL)
		return -1;
	int ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok == 1 ? 0 : -1;
}

/* is_dns_name - letters, digits, '-' and '.' only (what may go in a DNS SAN) */
static bool is_dns_name(const char *s)
{
	if (s[0] == '\0' || strlen(s) > 253)
		return false;
	for (const char *p = s; *p != '\0'; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
			return false;
	}
	return true;
}

/* tls_dev_cert_make - the key and the signed self-signed certificate */
static X509 *tls_dev_cert_make(EVP_PKEY *pkey, const char *cn, const char **error_r)
{
	X509 *x = X509_new();
	BIGNUM *bn = BN_new();
	char san[400];

	if (x == NULL || bn == NULL)
		goto fail;
	/* a random 127-bit positive serial: no two dev certs collide */
	if (X509_set_version(x, X509_VERSION_3) != 1 ||
	    BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
	    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
		goto fail;
	/* an hour of slack for clocks that disagree a little */
	if (X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), TLS_DEV_CERT_DAYS, 0, NULL) == NULL)
		goto fail;
	X509_NAME *name = X509_get_subject_name(x);
	if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
				       (const unsigned char *)"development only", -1, -1, 0) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn,
				       -1, -1, 0) != 1 ||
	    X509_set_issuer_name(x, name) != 1 || X509_set_pubkey(x, pkey) != 1)
		goto fail;
	if (strcmp(cn, "localhost") != 0 && is_dns_name(cn))
		snprintf(san, sizeof(san), "DNS:localhost,IP:127.0.0.1,IP:::1,DNS:%s", cn);
	else
		snprintf(san, sizeof(san), "DNS:localhost,IP:127.0.0.1,IP:::1");
	/* a leaf that is also its own trust anchor (the CA file clients load) */
	if (add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
	    add_ext(x, NID_key_usage, "critical,digitalSignature") < 0 ||
	    add_ext(x, NID_ext_key_usage, "serverAuth,clientAuth") < 0 ||
	    add_ext(x, NID_subject_key_identifier, "hash") < 0 ||
	    add_ext(x, NID_authority_key_identifier, "keyid:always") < 0 ||
	    add_ext(x, NID_subject_alt_name, san) < 0)
		goto fail;
	if (X509_sign(x, pkey, EVP_sha256()) <= 0)
		goto fail;
	BN_free(bn);
	return x;
fail:
	tls_fail(error_r, "cannot build the development certificate");
	BN_free(bn);
	X509_free(x);
	return NULL;
}

/* write_pem_temp - writes key or cert to a new "path.tmp.PID" (mode 0600,
 * fsync'd); returns that name (caller frees) or NULL */
static char *write_pem_temp(const char *path, EVP_PKEY *pkey, X509 *x, const char **error_r)
{
	char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		tls_fail(error_r, "cannot create %s: %s", tmp, strerror(errno));
		free(tmp);
		return NULL;
	}
	(void)fchmod(fd, 0600); /* an old file of that name may have had another mode */
	FILE *fp = fdopen(fd, "w");
	if (fp == NULL) {
		tls_fail(error_r, "cannot write %s: %s", tmp, strerror(errno));
		close(fd);
		goto fail;
	}
	int ok = pkey != NULL ? PEM_write_PrivateKey(fp, pkey, NULL, NULL, 0, NULL, NULL)
			      : PEM_write_X509(fp, x);
	if (ok != 1 || fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
		tls_fail(error_r, "cannot write %s", tmp);
		fclose(fp);
		goto fail;
	}
	if (fclose(fp) != 0) {
		tls_fail(error_r, "cannot write %s: %s", tmp, strerror(errno));
		goto fail;
	}
	return tmp;
fail:
	unlink(tmp);
	free(tmp);
	return NULL;
}

int tls_dev_cert_generate(const char *cert_path, const char *key_path, const char *common_name,
			  const char **error_r)
{
	ERR_clear_error();
	if (empty(common_name))
		common_name = "localhost";
	EVP_PKEY *pkey = EVP_EC_gen("P-256");
	if (pkey == NULL) {
		tls_fail(error_r, "cannot generate an EC P-256 key");
		return -1;
	}
	X509 *x = tls_dev_cert_make(pkey, common_name, error_r);
	char *key_tmp = NULL, *cert_tmp = NULL;
	int ret = -1;
	/* both files complete before either replaces an existing one, so a
	 * failure never leaves a new key next to an old certificate */
	if (x != NULL && (key_tmp = write_pem_temp(key_path, pkey, NULL, error_r)) != NULL &&
	    (cert_tmp = write_pem_temp(cert_path, NULL, x, error_r)) != NULL) {
		if (rename(key_tmp, key_path) < 0)
			tls_fail(error_r, "cannot rename %s to %s: %s", key_tmp, key_path, strerror(errno));
		else if (rename(cert_tmp, cert_path) < 0)
			tls_fail(error_r, "cannot rename %s to %s: %s", cert_tmp, cert_path, strerror(errno));
		else
			ret = 0;
	}
	if (ret < 0) {
		if (key_tmp != NULL)
			unlink(key_tmp);
		if (cert_tmp != NULL)
			unlink(cert_tmp);
	}
	free(key_tmp);
	free(cert_tmp);
	X509_free(x);
	EVP_PKEY_free(pkey);
	return ret;
}

/* --------------------------------------------------------------- bufferevents */

/* tls_ssl_set_peer_name - SNI and the name the certificate must carry */
static int tls_ssl_set_peer_name(SSL *ssl, const char *host)
{
	unsigned char addr[16];
	if (empty(host))
		return 0;
	if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1) {
		/* no SNI for IP literals (RFC 6066) */
		return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1 ? 0 : -1;
	}
	if (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1)
		return -1;
	return 0;
}

struct bufferevent *tls_bev_accept(struct event_base *base, evutil_socket_t fd, SSL_CTX *ctx)
{
	SSL *ssl = SSL_new(ctx);
	if (ssl == NULL)
		return NULL;
	struct bufferevent *bev = bufferevent_openssl_socket_new(base, fd, ssl,
								 BUFFEREVENT_SSL_ACCEPTING,
								 BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

struct bufferevent *tls_bev_connect(struct event_base *base, evutil_socket_t fd, SSL_CTX *ctx,
				    const char *host)
{
	SSL *ssl = SSL_new(ctx);
	if (ssl == NULL)
		return NULL;
	if (tls_ssl_set_peer_name(ssl, host) < 0) {
		SSL_free(ssl);
		return NULL;
	}
	struct bufferevent *bev = bufferevent_openssl_socket_new(base, fd, ssl,
								 BUFFEREVENT_SSL_CONNECTING,
								 BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

/* tls_bev_upgrade - the STARTTLS step both sides share: discard what is
 * buffered, then wrap plain in a TLS filter that owns it */
static struct bufferevent *tls_bev_upgrade(struct bufferevent *plain, SSL *ssl,
					   enum bufferevent_ssl_state state)
{
	/* bytes the peer sent before the handshake were not protected by it:
	 * a command (or reply) injected there must never be acted on */
	struct evbuffer *in = bufferevent_get_input(plain);
	evbuffer_drain(in, evbuffer_get_length(in));
	bufferevent_setcb(plain, NULL, NULL, NULL, NULL);
	struct bufferevent *bev = bufferevent_openssl_filter_new(bufferevent_get_base(plain), plain,
								 ssl, state, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

struct bufferevent *tls_bev_starttls(struct bufferevent *plain, SSL_CTX *ctx)
{
	SSL *ssl = SSL_new(ctx);
	if (ssl == NULL)
		return NULL;
	return tls_bev_upgrade(plain, ssl, BUFFEREVENT_SSL_ACCEPTING);
}

struct bufferevent *tls_bev_starttls_client(struct bufferevent *plain, SSL_CTX *ctx,
					    const char *host)
{
	SSL *ssl = SSL_new(ctx);
	if (ssl == NULL)
		return NULL;
	if (tls_ssl_set_peer_name(ssl, host) < 0) {
		SSL_free(ssl);
		return NULL;
	}
	return tls_bev_upgrade(plain, ssl, BUFFEREVENT_SSL_CONNECTING);
}

const char *tls_bev_describe(struct bufferevent *bev, char *buf, size_t size)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	if (ssl == NULL) {
		snprintf(buf, size, "plaintext");
		return buf;
	}
	const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
	if (c != NULL)
		snprintf(buf, size, "%s %s", SSL_get_version(ssl), SSL_CIPHER_get_name(c));
	else
		snprintf(buf, size, "%s", SSL_get_version(ssl));
	return buf;
}

const char *tls_bev_alpn(struct bufferevent *bev, char *buf, size_t size)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	const unsigned char *p = NULL;
	unsigned int len = 0;
	if (ssl != NULL)
		SSL_get0_alpn_selected(ssl, &p, &len);
	if (size > 0) {
		size_t n = MAIL_MIN((size_t)len, size - 1);
		if (n > 0)
			memcpy(buf, p, n);
		buf[n] = '\0';
	}
	return buf;
}

const char *tls_bev_error(struct bufferevent *bev, char *buf, size_t size)
{
	/* the first error OpenSSL queued is the cause; libevent may add bare codes */
	unsigned long e, first = 0;
	while ((e = bufferevent_get_openssl_error(bev)) != 0) {
		if (first == 0 && ERR_GET_LIB(e) != 0)
			first = e;
	}
	if (size == 0)
		return buf;
	buf[0] = '\0';
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	long v = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
	if (v != X509_V_OK)
		snprintf(buf, size, "certificate verify failed: %s", X509_verify_cert_error_string(v));
	else if (first != 0)
		ERR_error_string_n(first, buf, size);
	return buf;
}

/* --------------------------------------------------------------------- holder */

struct tls_holder {
	pthread_mutex_t lock;
	SSL_CTX *ctx;
	char *cert, *key, *ca;
	char **alpn;
	size_t n_alpn;
};

/* tls_holder_build - a fresh context from the holder's files and ALPN list */
static SSL_CTX *tls_holder_build(struct tls_holder *h, const char **error_r)
{
	SSL_CTX *ctx = tls_server_ctx_new(h->cert, h->key, h->ca, error_r);
	if (ctx != NULL && h->n_alpn > 0 &&
	    tls_ctx_set_alpn(ctx, (const char *const *)h->alpn, h->n_alpn) < 0) {
		tls_fail(error_r, "bad ALPN list");
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

struct tls_holder *tls_holder_new(const char *cert_file, const char *key_file,
				  const char *ca_file, const char **error_r)
{
	struct tls_holder *h = XNEW(struct tls_holder);
	h->cert = xstrdup(cert_file != NULL ? cert_file : "");
	h->key = xstrdup(key_file != NULL ? key_file : "");
	h->ca = xstrdup(ca_file != NULL ? ca_file : "");
	pthread_mutex_init(&h->lock, NULL);
	h->ctx = tls_holder_build(h, error_r);
	if (h->ctx == NULL) {
		tls_holder_free(&h);
		return NULL;
	}
	return h;
}

void tls_holder_free(struct tls_holder **hp)
{
	struct tls_holder *h = *hp;
	if (h == NULL)
		return;
	*hp = NULL;
	SSL_CTX_free(h->ctx);
	for (size_t i = 0; i < h->n_alpn; i++)
		free(h->alpn[i]);
	free(h->alpn);
	free(h->cert);
	free(h->key);
	free(h->ca);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

int tls_holder_set_alpn(struct tls_holder *h, const char *const *protos, size_t n)
{
	pthread_mutex_lock(&h->lock);
	int ret = tls_ctx_set_alpn(h->ctx, protos, n);
	if (ret == 0) {
		for (size_t i = 0; i < h->n_alpn; i++)
			free(h->alpn[i]);
		free(h->alpn);
		h->alpn = xcalloc(n, sizeof(*h->alpn));
		for (size_t i = 0; i < n; i++)
			h->alpn[i] = xstrdup(protos[i]);
		h->n_alpn = n;
	}
	pthread_mutex_unlock(&h->lock);
	return ret;
}

int tls_holder_reload(struct tls_holder *h, const char **error_r)
{
	/* build outside the lock: reading files must not stall the workers */
	pthread_mutex_lock(&h->lock);
	char **alpn = NULL;
	size_t n_alpn = h->n_alpn;
	if (n_alpn > 0) {
		alpn = xcalloc(n_alpn, sizeof(*alpn));
		for (size_t i = 0; i < n_alpn; i++)
			alpn[i] = xstrdup(h->alpn[i]);
	}
	pthread_mutex_unlock(&h->lock);

	SSL_CTX *ctx = tls_server_ctx_new(h->cert, h->key, h->ca, error_r);
	if (ctx != NULL && n_alpn > 0 &&
	    tls_ctx_set_alpn(ctx, (const char *const *)alpn, n_alpn) < 0) {
		tls_fail(error_r, "bad ALPN list");
		SSL_CTX_free(ctx);
		ctx = NULL;
	}
	for (size_t i = 0; i < n_alpn; i++)
		free(alpn[i]);
	free(alpn);
	if (ctx == NULL)
		return -1;

	pthread_mutex_lock(&h->lock);
	SSL_CTX *old = h->ctx;
	h->ctx = ctx;
	pthread_mutex_unlock(&h->lock);
	SSL_CTX_free(old); /* connections made from it keep their own reference */
	return 0;
}

SSL_CTX *tls_holder_get(struct tls_holder *h)
{
	pthread_mutex_lock(&h->lock);
	SSL_CTX *ctx = h->ctx;
	SSL_CTX_up_ref(ctx);
	pthread_mutex_unlock(&h->lock);
	return ctx;
}
