/* test_tls.c - lib/tls over real handshakes: two bufferevents on one
 * event_base joined by a socketpair. Covers the development certificate
 * (files, mode, SANs, lifetime), implicit TLS with verification (good CA,
 * wrong CA, wrong host name, IP name), TLS 1.2, ALPN, client certificates,
 * the STARTTLS upgrade throwing away plaintext the client pipelined after
 * its STARTTLS command, context errors, and the reloadable holder. */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <cmocka.h>
#include "lib/common.h"
#include "lib/linereader.h"
#include "lib/tls.h"
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

static char dir[64];
static char a_crt[128], a_key[128], b_crt[128], b_key[128];

/* ------------------------------------------------------------ the pair harness */

struct side {
	struct bufferevent *bev;
	bool connected, error;
	char err[256];
	struct evbuffer *got;
};

struct pair {
	struct event_base *base;
	struct side srv, cli;
	bool pong;
	char srv_desc[128], cli_desc[128], alpn[64];
};

static void pair_event(struct bufferevent *bev, short what, void *arg)
{
	struct pair *p = arg;
	struct side *s = bev == p->srv.bev ? &p->srv : &p->cli;
	if (what & BEV_EVENT_CONNECTED) {
		s->connected = true;
		if (s == &p->cli)
			evbuffer_add(bufferevent_get_output(bev), "ping\n", 5);
		return;
	}
	if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
		s->error = true;
		tls_bev_error(bev, s->err, sizeof(s->err));
		event_base_loopexit(p->base, NULL);
	}
}

static void pair_read(struct bufferevent *bev, void *arg)
{
	struct pair *p = arg;
	struct side *s = bev == p->srv.bev ? &p->srv : &p->cli;
	evbuffer_add_buffer(s->got, bufferevent_get_input(bev));
	if (s == &p->srv && evbuffer_get_length(s->got) >= 5) {
		evbuffer_add(bufferevent_get_output(bev), "pong\n", 5);
	} else if (s == &p->cli && evbuffer_get_length(s->got) >= 5) {
		p->pong = true;
		tls_bev_describe(p->srv.bev, p->srv_desc, sizeof(p->srv_desc));
		tls_bev_describe(p->cli.bev, p->cli_desc, sizeof(p->cli_desc));
		tls_bev_alpn(p->srv.bev, p->alpn, sizeof(p->alpn));
		event_base_loopexit(p->base, NULL);
	}
}

/* run_pair - implicit TLS between sctx and cctx; true when ping/pong went through */
static bool run_pair(SSL_CTX *sctx, SSL_CTX *cctx, const char *host, struct pair *p)
{
	int sv[2];
	memset(p, 0, sizeof(*p));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	evutil_make_socket_nonblocking(sv[0]);
	evutil_make_socket_nonblocking(sv[1]);
	p->base = event_base_new();
	p->srv.got = evbuffer_new();
	p->cli.got = evbuffer_new();
	p->srv.bev = tls_bev_accept(p->base, sv[0], sctx);
	p->cli.bev = tls_bev_connect(p->base, sv[1], cctx, host);
	assert_non_null(p->srv.bev);
	assert_non_null(p->cli.bev);
	bufferevent_setcb(p->srv.bev, pair_read, NULL, pair_event, p);
	bufferevent_setcb(p->cli.bev, pair_read, NULL, pair_event, p);
	bufferevent_enable(p->srv.bev, EV_READ | EV_WRITE);
	bufferevent_enable(p->cli.bev, EV_READ | EV_WRITE);
	struct timeval tv = { 5, 0 };
	event_base_loopexit(p->base, &tv);
	event_base_dispatch(p->base);
	bufferevent_free(p->srv.bev);
	bufferevent_free(p->cli.bev);
	evbuffer_free(p->srv.got);
	evbuffer_free(p->cli.got);
	event_base_free(p->base);
	return p->pong;
}

static SSL_CTX *server_ctx(const char *crt, const char *key, const char *ca)
{
	const char *error = NULL;
	SSL_CTX *ctx = tls_server_ctx_new(crt, key, ca, &error);
	if (ctx == NULL)
		fail_msg("server ctx: %s", error);
	return ctx;
}

static SSL_CTX *client_ctx(const char *ca, const char *crt, const char *key, bool verify)
{
	const char *error = NULL;
	SSL_CTX *ctx = tls_client_ctx_new(ca, crt, key, verify, &error);
	if (ctx == NULL)
		fail_msg("client ctx: %s", error);
	return ctx;
}

/* ----------------------------------------------------------------------- tests */

static int group_setup(void **state)
{
	const char *error = NULL;
	snprintf(dir, sizeof(dir), "/tmp/mailtlsXXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(a_crt, sizeof(a_crt), "%s/a.crt", dir);
	snprintf(a_key, sizeof(a_key), "%s/a.key", dir);
	snprintf(b_crt, sizeof(b_crt), "%s/b.crt", dir);
	snprintf(b_key, sizeof(b_key), "%s/b.key", dir);
	if (tls_dev_cert_generate(a_crt, a_key, "localhost", &error) < 0 ||
	    tls_dev_cert_generate(b_crt, b_key, "node-b.test", &error) < 0) {
		fprintf(stderr, "dev cert: %s\n", error);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static X509 *read_cert(const char *path)
{
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	assert_non_null(x);
	return x;
}

static void test_dev_cert(void **state)
{
	struct stat st;
	assert_int_equal(stat(a_crt, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(stat(a_key, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	X509 *x = read_cert(a_crt);
	assert_int_equal(X509_check_host(x, "localhost", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
	assert_int_equal(X509_check_ip_asc(x, "::1", 0), 1);
	assert_int_equal(X509_check_host(x, "example.org", 0, 0, NULL), 0);
	/* valid now and for at least 9 more years */
	assert_true(X509_cmp_current_time(X509_get0_notBefore(x)) < 0);
	time_t in9y = time(NULL) + (time_t)9 * 366 * 86400;
	assert_true(X509_cmp_time(X509_get0_notAfter(x), &in9y) > 0);
	EVP_PKEY *pk = X509_get0_pubkey(x);
	assert_int_equal(EVP_PKEY_get_base_id(pk), EVP_PKEY_EC);
	X509_free(x);
	/* the common name goes in as a SAN too */
	x = read_cert(b_crt);
	assert_int_equal(X509_check_host(x, "node-b.test", 0, 0, NULL), 1);
	char cn[64];
	X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn));
	assert_string_equal(cn, "node-b.test");
	X509_free(x);
	/* no temporary files left behind */
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "ls '%s' | grep -q tmp", dir);
	assert_int_not_equal(system(cmd), 0);
}

static void test_handshake(void **state)
{
	struct pair p;
	SSL_CTX *s = server_ctx(a_crt, a_key, NULL);
	SSL_CTX *c = client_ctx(a_crt, NULL, NULL, true);
	assert_true(run_pair(s, c, "localhost", &p));
	assert_true(p.srv.connected && p.cli.connected);
	assert_int_equal(strncmp(p.srv_desc, "TLSv1.3 TLS_", 12), 0);
	assert_string_equal(p.srv_desc, p.cli_desc);
	/* an IP literal is checked against the IP SANs */
	assert_true(run_pair(s, c, "127.0.0.1", &p));
	assert_true(run_pair(s, c, "::1", &p));
	/* no name given: only the chain is checked */
	assert_true(run_pair(s, c, NULL, &p));
	SSL_CTX_free(c);

	/* TLS 1.2 with an ECDHE AEAD suite */
	c = client_ctx(a_crt, NULL, NULL, true);
	SSL_CTX_set_max_proto_version(c, TLS1_2_VERSION);
	assert_true(run_pair(s, c, "localhost", &p));
	assert_string_equal(p.cli_desc, "TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256");
	SSL_CTX_free(c);

	/* TLS 1.1 is refused */
	c = client_ctx(a_crt, NULL, NULL, true);
	SSL_CTX_set_min_proto_version(c, TLS1_VERSION);
	SSL_CTX_set_max_proto_version(c, TLS1_1_VERSION);
	assert_false(run_pair(s, c, "localhost", &p));
	SSL_CTX_free(c);
	SSL_CTX_free(s);
}

static void test_verify_failures(void **state)
{
	struct pair p;
	SSL_CTX *s = server_ctx(a_crt, a_key, NULL);
	SSL_CTX *wrong_ca = client_ctx(b_crt, NULL, NULL, true);
	assert_false(run_pair(s, wrong_ca, "localhost", &p));
	assert_true(p.cli.error);
	if (strstr(p.cli.err, "certificate verify failed") == NULL)
		fail_msg("error text: %s", p.cli.err);
	SSL_CTX *c = client_ctx(a_crt, NULL, NULL, true);
	assert_false(run_pair(s, c, "example.org", &p));
	assert_true(p.cli.error);
	/* verify off: anything goes */
	SSL_CTX *any = client_ctx(NULL, NULL, NULL, false);
	assert_true(run_pair(s, any, "example.org", &p));
	SSL_CTX_free(wrong_ca);
	SSL_CTX_free(c);
	SSL_CTX_free(any);
	SSL_CTX_free(s);
}

static void test_alpn(void **state)
{
	static const char *const srv_protos[] = { "h2", "imap" };
	static const char *const cli_imap[] = { "imap", "http/1.1" };
	static const char *const cli_both[] = { "imap", "h2" };
	static const char *const cli_none[] = { "smtp" };
	struct pair p;
	SSL_CTX *s = server_ctx(a_crt, a_key, NULL);
	assert_int_equal(tls_ctx_set_alpn(s, srv_protos, 2), 0);
	SSL_CTX *c = client_ctx(a_crt, NULL, NULL, true);
	assert_true(run_pair(s, c, "localhost", &p)); /* a client without ALPN is served */
	assert_string_equal(p.alpn, "");
	assert_int_equal(tls_ctx_set_alpn(c, cli_imap, 2), 0);
	assert_true(run_pair(s, c, "localhost", &p));
	assert_string_equal(p.alpn, "imap");
	assert_int_equal(tls_ctx_set_alpn(c, cli_both, 2), 0); /* replaces; server's order wins */
	assert_true(run_pair(s, c, "localhost", &p));
	assert_string_equal(p.alpn, "h2");
	assert_int_equal(tls_ctx_set_alpn(c, cli_none, 1), 0);
	assert_false(run_pair(s, c, "localhost", &p)); /* no_application_protocol */
	static const char *const bad[] = { "" };
	assert_int_equal(tls_ctx_set_alpn(c, bad, 1), -1);
	SSL_CTX_free(c);
	SSL_CTX_free(s);
}

static void test_client_certificates(void **state)
{
	struct pair p;
	/* the server trusts b's certificate as the client CA */
	SSL_CTX *s = server_ctx(a_crt, a_key, b_crt);
	SSL_CTX *with = client_ctx(a_crt, b_crt, b_key, true);
	SSL_CTX *without = client_ctx(a_crt, NULL, NULL, true);
	SSL_CTX *other = client_ctx(a_crt, a_crt, a_key, true);
	assert_true(run_pair(s, with, "localhost", &p));
	assert_false(run_pair(s, without, "localhost", &p));
	assert_true(p.srv.error);
	assert_false(run_pair(s, other, "localhost", &p));
	assert_true(p.srv.error);
	SSL_CTX_free(with);
	SSL_CTX_free(without);
	SSL_CTX_free(other);
	SSL_CTX_free(s);
}

static void test_ctx_errors(void **state)
{
	const char *error = NULL;
	char missing[160];
	snprintf(missing, sizeof(missing), "%s/missing.crt", dir);
	assert_null(tls_server_ctx_new(missing, a_key, NULL, &error));
	assert_non_null(strstr(error, "missing.crt"));
	assert_null(tls_server_ctx_new(a_crt, b_key, NULL, &error));
	assert_non_null(strstr(error, "mismatch"));
	assert_null(tls_server_ctx_new(a_crt, a_key, missing, &error));
	assert_non_null(strstr(error, "CA file"));
	assert_null(tls_server_ctx_new("", a_key, NULL, &error));
	assert_null(tls_client_ctx_new(missing, NULL, NULL, true, &error));
	assert_null(tls_client_ctx_new(a_crt, a_crt, NULL, true, &error));
	/* the system store loads (it may be empty on a bare machine) */
	SSL_CTX *c = tls_client_ctx_new(NULL, NULL, NULL, true, &error);
	assert_non_null(c);
	SSL_CTX_free(c);
	snprintf(missing, sizeof(missing), "%s/no/such/dir/x.crt", dir);
	assert_int_equal(tls_dev_cert_generate(missing, a_key, "x", &error), -1);
	/* a failed generation leaves the existing pair alone */
	c = tls_server_ctx_new(a_crt, a_key, NULL, &error);
	assert_non_null(c);
	SSL_CTX_free(c);
}

/* ------------------------------------------------------------------- STARTTLS */

struct starttls {
	struct event_base *base;
	SSL_CTX *sctx, *cctx;
	struct bufferevent *srv, *cli;
	struct linereader srv_lr, cli_lr;
	size_t pending_at_starttls; /* plaintext the server had buffered and dropped */
	struct evbuffer *srv_got;    /* what the server read over TLS */
	bool cli_done, failed;
	char desc[128];
};

static void st_event(struct bufferevent *bev, short what, void *arg)
{
	struct starttls *st = arg;
	if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
		st->failed = true;
		event_base_loopexit(st->base, NULL);
	}
}

static void st_srv_tls_read(struct bufferevent *bev, void *arg)
{
	struct starttls *st = arg;
	evbuffer_add_buffer(st->srv_got, bufferevent_get_input(bev));
	if (evbuffer_search_eol(st->srv_got, NULL, NULL, EVBUFFER_EOL_LF).pos >= 0) {
		tls_bev_describe(bev, st->desc, sizeof(st->desc));
		evbuffer_add(bufferevent_get_output(bev), "250 ok\r\n", 8);
	}
}

static void st_srv_plain_read(struct bufferevent *bev, void *arg)
{
	struct starttls *st = arg;
	char line[65];
	size_t len;
	struct evbuffer *in = bufferevent_get_input(bev);
	while (linereader_next(&st->srv_lr, in, line, &len) == LR_LINE) {
		if (strcmp(line, "STARTTLS") != 0)
			continue;
		evbuffer_add(bufferevent_get_output(bev), "220 go ahead\r\n", 14);
		st->pending_at_starttls = evbuffer_get_length(in);
		struct bufferevent *up = tls_bev_starttls(bev, st->sctx);
		assert_non_null(up);
		st->srv = up;
		linereader_reset(&st->srv_lr);
		bufferevent_setcb(up, st_srv_tls_read, NULL, st_event, st);
		bufferevent_enable(up, EV_READ | EV_WRITE);
		return; /* bev now belongs to the filter */
	}
}

static void st_cli_tls_read(struct bufferevent *bev, void *arg)
{
	struct starttls *st = arg;
	char line[65];
	size_t len;
	if (linereader_next(&st->cli_lr, bufferevent_get_input(bev), line, &len) == LR_LINE) {
		assert_string_equal(line, "250 ok");
		st->cli_done = true;
		event_base_loopexit(st->base, NULL);
	}
}

static void st_cli_plain_read(struct bufferevent *bev, void *arg)
{
	struct starttls *st = arg;
	char line[65];
	size_t len;
	if (linereader_next(&st->cli_lr, bufferevent_get_input(bev), line, &len) != LR_LINE)
		return;
	assert_string_equal(line, "220 go ahead");
	struct bufferevent *up = tls_bev_starttls_client(bev, st->cctx, "localhost");
	assert_non_null(up);
	st->cli = up;
	bufferevent_setcb(up, st_cli_tls_read, NULL, st_event, st);
	bufferevent_enable(up, EV_READ | EV_WRITE);
	/* queued until the handshake is done */
	evbuffer_add(bufferevent_get_output(up), "AFTER TLS\r\n", 11);
}

static void test_starttls_discards_pipelined(void **state)
{
	struct starttls st;
	int sv[2];
	memset(&st, 0, sizeof(st));
	st.sctx = server_ctx(a_crt, a_key, NULL);
	st.cctx = client_ctx(a_crt, NULL, NULL, true);
	st.srv_got = evbuffer_new();
	linereader_init(&st.srv_lr, 64);
	linereader_init(&st.cli_lr, 64);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	evutil_make_socket_nonblocking(sv[0]);
	evutil_make_socket_nonblocking(sv[1]);
	/* the attack: a command sent in the same packet right after STARTTLS */
	static const char attack[] = "EHLO x\r\nSTARTTLS\r\nRSET INJECTED\r\nMAIL FROM:<evil>\r\n";
	assert_int_equal(write(sv[1], attack, sizeof(attack) - 1), (ssize_t)sizeof(attack) - 1);

	st.base = event_base_new();
	st.srv = bufferevent_socket_new(st.base, sv[0], BEV_OPT_CLOSE_ON_FREE);
	st.cli = bufferevent_socket_new(st.base, sv[1], BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(st.srv, st_srv_plain_read, NULL, st_event, &st);
	bufferevent_setcb(st.cli, st_cli_plain_read, NULL, st_event, &st);
	bufferevent_enable(st.srv, EV_READ | EV_WRITE);
	bufferevent_enable(st.cli, EV_READ | EV_WRITE);
	struct timeval tv = { 5, 0 };
	event_base_loopexit(st.base, &tv);
	event_base_dispatch(st.base);

	assert_false(st.failed);
	assert_true(st.cli_done);
	/* the injected lines were in the server's buffer, and were dropped */
	assert_int_equal(st.pending_at_starttls, strlen("RSET INJECTED\r\nMAIL FROM:<evil>\r\n"));
	size_t n = evbuffer_get_length(st.srv_got);
	char got[64] = "";
	assert_true(n < sizeof(got));
	evbuffer_remove(st.srv_got, got, n);
	assert_string_equal(got, "AFTER TLS\r\n");
	assert_int_equal(strncmp(st.desc, "TLSv1.3 TLS_", 12), 0);

	bufferevent_free(st.srv); /* frees the plaintext bufferevents under them too */
	bufferevent_free(st.cli);
	evbuffer_free(st.srv_got);
	event_base_free(st.base);
	SSL_CTX_free(st.sctx);
	SSL_CTX_free(st.cctx);
}

/* --------------------------------------------------------------------- holder */

static void cert_cn(SSL_CTX *ctx, char *buf, size_t size)
{
	X509 *x = SSL_CTX_get0_certificate(ctx);
	assert_non_null(x);
	X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, (int)size);
}

static void test_holder_reload(void **state)
{
	static const char *const h2[] = { "h2" };
	char crt[160], key[160], cn[64];
	const char *error = NULL;
	struct pair p;
	snprintf(crt, sizeof(crt), "%s/h.crt", dir);
	snprintf(key, sizeof(key), "%s/h.key", dir);
	assert_int_equal(tls_dev_cert_generate(crt, key, "first.test", &error), 0);

	struct tls_holder *h = tls_holder_new(crt, key, NULL, &error);
	assert_non_null(h);
	assert_int_equal(tls_holder_set_alpn(h, h2, 1), 0);
	SSL_CTX *c1 = tls_holder_get(h);
	cert_cn(c1, cn, sizeof(cn));
	assert_string_equal(cn, "first.test");

	/* new files, then SIGHUP's reload */
	assert_int_equal(tls_dev_cert_generate(crt, key, "second.test", &error), 0);
	assert_int_equal(tls_holder_reload(h, &error), 0);
	SSL_CTX *c2 = tls_holder_get(h);
	assert_ptr_not_equal(c1, c2);
	cert_cn(c2, cn, sizeof(cn));
	assert_string_equal(cn, "second.test");

	/* the old context still works for whoever holds it; ALPN survived the reload */
	SSL_CTX *cli = client_ctx(NULL, NULL, NULL, false);
	assert_int_equal(tls_ctx_set_alpn(cli, h2, 1), 0);
	assert_true(run_pair(c1, cli, NULL, &p));
	assert_true(run_pair(c2, cli, NULL, &p));
	assert_string_equal(p.alpn, "h2");
	SSL_CTX_free(c1);

	/* a missing file: reported, and the current context stays */
	unlink(key);
	error = NULL;
	assert_int_equal(tls_holder_reload(h, &error), -1);
	assert_non_null(error);
	assert_non_null(strstr(error, "h.key"));
	SSL_CTX *c3 = tls_holder_get(h);
	assert_ptr_equal(c3, c2);
	assert_true(run_pair(c3, cli, NULL, &p));
	SSL_CTX_free(c3);
	SSL_CTX_free(c2);
	SSL_CTX_free(cli);
	tls_holder_free(&h);
	assert_null(h);

	/* a holder cannot start without its files */
	assert_null(tls_holder_new(crt, key, NULL, &error));
	unlink(crt);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dev_cert),
		cmocka_unit_test(test_handshake),
		cmocka_unit_test(test_verify_failures),
		cmocka_unit_test(test_alpn),
		cmocka_unit_test(test_client_certificates),
		cmocka_unit_test(test_ctx_errors),
		cmocka_unit_test(test_starttls_discards_pipelined),
		cmocka_unit_test(test_holder_reload),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
