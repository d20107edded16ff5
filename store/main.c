/* main.c - mail-store: configuration, the blob file layer, the BlobStore
 * gRPC service on the daemon runtime's workers, health and metrics.
 *
 *   mail-store --listen=127.0.0.1:7201 --data-dir=DIR --metrics-listen=127.0.0.1:9201
 *
 * Shutdown order (SIGTERM): workers drain (GOAWAY, running calls finish,
 * each call holds its worker), then on each worker the remaining calls are
 * cancelled and the commits still on a sync thread are waited for; then the
 * RPC server, the service and the file layer are freed, in that order. */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/daemon.h"
#include "lib/httpd.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "proto/rpc.h"
#include "store/blobfs.h"
#include "store/service.h"
#include <inttypes.h>
#include <stdlib.h>
#include <openssl/ssl.h>

#define STORE_SERVICE_NAME "mail-store"
/* requests carry at most a 64 KiB chunk plus a few fields; a larger chunk
 * must still reach the handler to be refused with INVALID_ARGUMENT */
#define STORE_MAX_REQUEST (2 * RPC_CHUNK_SIZE)

static const struct cfg_def store_defs[] = {
	{ "listen", CFG_ADDR, "127.0.0.1:7201", 0, 0, "gRPC listener (mail.store.v1.BlobStore)" },
	{ "metrics_listen", CFG_ADDR, "127.0.0.1:9201", 0, 0,
	  "HTTP /metrics, /healthz, /readyz (empty: off)" },
	{ "data_dir", CFG_STR, "", 0, 0, "directory holding the blobs (required)" },
	{ "max_blob_size", CFG_SIZE, "64M", 1, INT64_C(1) << 40, "largest blob a Put may store" },
	{ "min_free", CFG_SIZE, "256M", 0, INT64_C(1) << 50,
	  "free disk space kept in reserve: a Put that would go below it is refused "
	  "(RESOURCE_EXHAUSTED) and /readyz fails" },
	{ "max_puts", CFG_INT, "1024", 1, 100000, "puts in progress at once (each holds a temp file)" },
	{ "sync_mode", CFG_STR, "syncfs", 0, 0,
	  "how commits are made durable in groups: syncfs (one pipelined syncfs per batch; "
	  "measured fastest, also beside busy writers on the same filesystem), batch "
	  "(fdatasync each file, fsync each directory once per batch) or pool (sync_threads "
	  "threads, one blob each)" },
	{ "sync_threads", CFG_INT, "4", 1, BLOB_SYNC_THREADS_MAX, "sync threads for sync_mode batch or pool" },
	{ "sync_batch_max", CFG_INT, "256", 1, BLOB_SYNC_BATCH_MAX, "most commits made durable together" },
	CFG_END
};
static const struct cfg_def *const store_tables[] = { config_common_defs, store_defs, NULL };

struct store_main {
	struct config *cfg;
	struct blobfs *fs;
	struct store_service *svc;
	struct rpc_server *srv;
	struct tls_holder *tls;
};

/* store_check_config - what config_parse cannot know; 0 / -1 with a message */
static int store_check_config(const struct config *cfg, const char **error_r)
{
	enum blob_sync_mode mode;
	if (config_str(cfg, "data_dir")[0] == '\0') {
		*error_r = "data_dir is required (--data-dir=DIR)";
		return -1;
	}
	if (config_str(cfg, "listen")[0] == '\0') {
		*error_r = "listen is required";
		return -1;
	}
	if (blob_sync_mode_parse(config_str(cfg, "sync_mode"), &mode) < 0) {
		*error_r = "sync_mode must be syncfs, batch or pool";
		return -1;
	}
	if ((config_str(cfg, "tls_cert")[0] == '\0') != (config_str(cfg, "tls_key")[0] == '\0')) {
		*error_r = "tls_cert and tls_key go together";
		return -1;
	}
	return 0;
}

/* store_config - parse, --help, --check-config; 1 = run, 0 / 2 = exit status 0 / 1 */
static int store_config(int argc, char **argv, struct config **cfg_r)
{
	extern char **environ;
	bool help, check;
	const char *error;
	static const char summary[] = "the blob node: immutable content-addressed blobs on local disk";
	if (config_parse(store_tables, argc, argv, environ, cfg_r, &help, &check, &error) < 0) {
		fprintf(stderr, "%s: configuration error: %s\n", STORE_SERVICE_NAME, error);
		return 2;
	}
	if (help) {
		config_print_help(stdout, STORE_SERVICE_NAME, summary, store_tables);
		config_free(cfg_r);
		return 0;
	}
	if (store_check_config(*cfg_r, &error) < 0) {
		fprintf(stderr, "%s: configuration error: %s\n", STORE_SERVICE_NAME, error);
		config_free(cfg_r);
		return 2;
	}
	if (check) {
		printf("%s: configuration OK\n", STORE_SERVICE_NAME);
		config_free(cfg_r);
		return 0;
	}
	enum log_level lv = LOG_LEVEL_INFO;
	(void)log_level_parse(config_str(*cfg_r, "log_level"), &lv);
	log_init(STORE_SERVICE_NAME, lv);
	return 1;
}

static void store_accept(struct daemon_worker *w, evutil_socket_t fd, const struct sockaddr *peer,
			 int peer_len, void *arg)
{
	struct store_main *m = arg;
	rpc_server_accept(m->srv, w->index, w->base, fd, peer, peer_len);
}

static void store_worker_start(struct daemon_worker *w, void *arg)
{
	struct store_main *m = arg;
	store_service_worker_start(m->svc, w);
}

static void store_worker_drain(struct daemon_worker *w, void *arg)
{
	struct store_main *m = arg;
	rpc_server_drain(m->srv, w->index);
}

static void store_worker_stop(struct daemon_worker *w, void *arg)
{
	struct store_main *m = arg;
	rpc_server_close_all(m->srv, w->index);
	store_service_worker_stop(m->svc, w);
}

/* store_reload - SIGHUP: new TLS certificates for new connections */
static void store_reload(struct daemon *d, void *arg)
{
	struct store_main *m = arg;
	if (m->tls == NULL) {
		log_info("reload", "tls=%s", "off");
		return;
	}
	const char *error;
	if (tls_holder_reload(m->tls, &error) < 0) {
		log_warn("reload failed, keeping the old certificate", "error=\"%s\"", error);
		return;
	}
	SSL_CTX *ctx = tls_holder_get(m->tls);
	rpc_server_set_tls(m->srv, ctx);
	SSL_CTX_free(ctx);
	log_info("reload", "tls=%s", "reloaded");
}

static bool store_ready_check(void *arg, const char **why_r)
{
	struct store_main *m = arg;
	return blobfs_ready(m->fs, why_r);
}

int main(int argc, char **argv)
{
	struct store_main m = { 0 };
	int rc = store_config(argc, argv, &m.cfg);
	if (rc != 1)
		return rc == 0 ? 0 : 1;
	const struct config *cfg = m.cfg;

	struct blobfs_opts fo = {
		.dir = config_str(cfg, "data_dir"),
		.min_free = config_size(cfg, "min_free"),
		.sync_threads = (int)config_int(cfg, "sync_threads"),
		.sync_batch_max = (size_t)config_int(cfg, "sync_batch_max"),
		.on_batch = store_service_on_batch,
	};
	(void)blob_sync_mode_parse(config_str(cfg, "sync_mode"), &fo.sync_mode);
	const char *error;
	if (blobfs_open(&fo, &m.fs, &error) < 0)
		log_fatal("cannot open the data dir", "error=\"%s\"", error);

	struct daemon *d = daemon_new(cfg);
	struct store_service_opts so = {
		.fs = m.fs,
		.daemon = d,
		.max_blob_size = config_size(cfg, "max_blob_size"),
		.max_puts = (size_t)config_int(cfg, "max_puts"),
	};
	m.svc = store_service_new(&so);

	struct rpc_server_opts ro = { .max_message = STORE_MAX_REQUEST };
	SSL_CTX *tls = NULL;
	if (config_str(cfg, "tls_cert")[0] != '\0') {
		m.tls = tls_holder_new(config_str(cfg, "tls_cert"), config_str(cfg, "tls_key"),
				       config_str(cfg, "tls_ca"), &error);
		if (m.tls == NULL)
			log_fatal("cannot load the TLS certificate", "error=\"%s\"", error);
		tls = tls_holder_get(m.tls);
		ro.tls = tls;
	}
	size_t n_methods;
	const struct rpc_method *methods = store_service_methods(&n_methods);
	m.srv = rpc_server_new(methods, n_methods, &ro, daemon_worker_count(d));
	if (tls != NULL)
		SSL_CTX_free(tls); /* the server keeps its own reference */

	daemon_on_worker_start(d, store_worker_start, &m);
	daemon_on_drain(d, store_worker_drain, &m);
	daemon_on_worker_stop(d, store_worker_stop, &m);
	daemon_on_reload(d, store_reload, &m);
	if (daemon_httpd(d) != NULL)
		httpd_add_ready_check(daemon_httpd(d), "data_dir", store_ready_check, &m);
	if (daemon_listen(d, config_str(cfg, "listen"), store_accept, &m, &error) < 0)
		log_fatal("cannot listen", "addr=%s error=\"%s\"", config_str(cfg, "listen"), error);
	log_info("store starting", "data_dir=%s tls=%s max_blob_size=%" PRIu64 " min_free=%" PRIu64,
		 config_str(cfg, "data_dir"), m.tls != NULL ? "on" : "off",
		 config_size(cfg, "max_blob_size"), config_size(cfg, "min_free"));

	rc = daemon_run(d);

	rpc_server_free(&m.srv);
	daemon_free(&d);
	store_service_free(&m.svc);
	blobfs_free(&m.fs);
	tls_holder_free(&m.tls);
	config_free(&m.cfg);
	return rc;
}
