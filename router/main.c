/* main.c - mail-router: configuration, the per-loop contexts (db pool and
 * blob cluster for every worker and for the main loop), the gRPC server that
 * serves the modules' methods, the admin API listener and readiness.
 * The router keeps no state of its own: PostgreSQL and the blob nodes are
 * the truth; everything here is rebuilt at start. */
#include "lib/common.h"
#include "router/router.h"
#include "router/migrate.h"
#include "lib/config.h"
#include "lib/daemon.h"
#include "lib/httpd.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "lib/workpool.h"
#include "lib/xalloc.h"
#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

extern const struct rt_module *const rt_modules[]; /* router/modules.c, NULL-terminated */

static const struct cfg_def router_defs[] = {
	{ "listen", CFG_ADDR, "127.0.0.1:7100", 0, 0, "gRPC listener of mail.router.v1 (front-ends)" },
	{ "metrics_listen", CFG_ADDR, "127.0.0.1:9100", 0, 0, "/metrics, /healthz, /readyz" },
	{ "admin_listen", CFG_ADDR, "127.0.0.1:8080", 0, 0, "admin API (HTTP/JSON); empty = off" },
	{ "admin_token_file", CFG_STR, "", 0, 0,
	  "file holding the admin API bearer token; created with a random token if missing" },
	{ "node_id", CFG_STR, "", 0, 0, "this router's name in logs and leases (default: hostname-pid)" },
	{ "db", CFG_STR, "host=/var/run/postgresql dbname=mail", 0, 0,
	  "libpq connection string; several hosts with target_session_attrs=read-write" },
	{ "db_pool_size", CFG_INT, "4", 1, 64, "PostgreSQL connections per worker thread" },
	{ "db_timeout", CFG_DURATION, "10s", 100, 600000, "deadline of one database request" },
	{ "migrate", CFG_BOOL, "yes", 0, 0, "apply missing schema migrations at start" },
	{ "store_nodes", CFG_STR, "store1=127.0.0.1:7201,store2=127.0.0.1:7202", 0, 0,
	  "blob store nodes: name=host:port,..." },
	{ "replicas", CFG_INT, "2", 1, 16, "copies of each blob (R)" },
	{ "write_quorum", CFG_INT, "0", 0, 16, "copies fsync'd before a write succeeds (W); 0 = R" },
	{ "max_message_size", CFG_SIZE, "50M", 1024, 1LL << 31, "largest message accepted" },
	{ "deliver_batch_max", CFG_INT, "64", 1, 1000,
	  "deliveries committed in one transaction at most (group commit; 1 = each alone)" },
	{ "deliver_batch_inflight", CFG_INT, "1", 1, 64,
	  "delivery batches being committed at once by this router, all worker threads together "
	  "(and as many blob-prepare batches); more wait and join one batch (1: bigger batches, "
	  "which measured faster from 16 concurrent deliveries up)" },
	{ "hash_threads", CFG_INT, "2", 1, 64, "threads verifying passwords" },
	{ "argon2_t_cost", CFG_INT, "2", 1, 100, "Argon2id iterations of new hashes" },
	{ "argon2_m_cost", CFG_SIZE, "19M", 8192, 1LL << 32, "Argon2id memory of new hashes" },
	{ "blob_gc_grace", CFG_DURATION, "1h", 1000, 30LL * 86400 * 1000, "unreferenced blobs are deleted after this long (blob GC)" },
	{ "expunged_retention", CFG_DURATION, "30d", 3600000, 3650LL * 86400 * 1000,
	  "expunged uids are remembered this long for QRESYNC VANISHED; older rows are pruned by housekeeping" },
	CFG_END
};

static const struct cfg_def *const router_tables[] = { config_common_defs, router_defs, NULL };

static struct router the_router;

struct rt_loop *rt_loop_of_call(const struct rpc_call *call)
{
	return the_router.loops[rpc_call_worker(call)];
}

struct daemon_worker *rt_worker_hold(const struct rpc_call *call)
{
	struct daemon_worker *w = daemon_worker_get(the_router.daemon, rpc_call_worker(call));
	if (w != NULL)
		daemon_worker_hold(w);
	return w;
}

void rt_worker_release(struct daemon_worker *w)
{
	if (w != NULL)
		daemon_worker_release(w);
}

void rt_finish_db_error(struct rpc_call *call, const struct db_result *r, const char *what)
{
	if (r->status == DB_UNAVAILABLE) {
		rpc_call_finishf(call, RPC_UNAVAILABLE, "database unavailable: %s", r->message);
		return;
	}
	char q[256];
	log_error("database error", "call=%llu op=%s sqlstate=%s error=%s",
		  (unsigned long long)rpc_call_id(call), what, r->sqlstate,
		  log_quote(q, sizeof(q), r->message, strlen(r->message)));
	rpc_call_finishf(call, RPC_INTERNAL, "%s failed", what);
}

/* load_admin_token - read the token file, or create it with a random token */
static int load_admin_token(struct router *rt, const char *path, const char **error_r)
{
	if (path[0] == '\0') {
		*error_r = "admin_token_file is required when admin_listen is set";
		return -1;
	}
	FILE *f = fopen(path, "r");
	if (f != NULL) {
		char line[sizeof(rt->admin_token) + 2];
		bool ok = fgets(line, sizeof(line), f) != NULL;
		fclose(f);
		size_t n = ok ? strcspn(line, "\r\n") : 0;
		if (n < 16 || n >= sizeof(rt->admin_token)) {
			*error_r = "admin token file must hold one token of 16..127 characters";
			return -1;
		}
		memcpy(rt->admin_token, line, n);
		rt->admin_token[n] = '\0';
		return 0;
	}
	if (errno != ENOENT) {
		*error_r = strerror(errno);
		return -1;
	}
	uint8_t raw[24];
	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		*error_r = "no random bytes";
		return -1;
	}
	for (size_t i = 0; i < sizeof(raw); i++)
		snprintf(rt->admin_token + 2 * i, 3, "%02x", raw[i]);
	char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int ok = fd >= 0 && dprintf(fd, "%s\n", rt->admin_token) > 0 && fsync(fd) == 0;
	if (fd >= 0)
		close(fd);
	if (!ok || rename(tmp, path) < 0) {
		*error_r = strerror(errno);
		unlink(tmp);
		free(tmp);
		return -1;
	}
	free(tmp);
	log_info("admin token created", "file=%s", path);
	return 0;
}

/* collect_stmts - every module's prepared statements in one array */
static struct db_stmt *collect_stmts(size_t *n_r)
{
	size_t n = 0;
	for (size_t i = 0; rt_modules[i] != NULL; i++)
		n += rt_modules[i]->n_stmts;
	struct db_stmt *all = xcalloc(n, sizeof(*all));
	size_t k = 0;
	for (size_t i = 0; rt_modules[i] != NULL; i++)
		for (size_t j = 0; j < rt_modules[i]->n_stmts; j++)
			all[k++] = rt_modules[i]->stmts[j];
	*n_r = n;
	return all;
}

/* loop_init - the db pool and blob cluster of one loop, then the modules' hooks */
static void loop_init(struct router *rt, struct rt_loop *l)
{
	size_t n_stmts;
	struct db_stmt *stmts = collect_stmts(&n_stmts);
	struct db_pool_settings dbs = {
		.name = l->is_main ? "main" : "worker",
		.size = (int)config_int(rt->cfg, "db_pool_size"),
		.timeout_ms = (int)config_duration_ms(rt->cfg, "db_timeout"),
	};
	if (l->is_main && dbs.size > 2)
		dbs.size = 2; /* admin API and jobs */
	l->db = db_pool_new(l->base, rt->db_conninfo, &dbs, stmts, n_stmts);
	free(stmts);
	const char *err;
	if (blob_cluster_new(l->base, rt->nodes, rt->n_nodes, &rt->blob_opts, &l->blobs, &err) < 0)
		log_fatal("bad store node configuration", "error=\"%s\"", err);
	for (size_t i = 0; rt_modules[i] != NULL; i++)
		if (rt_modules[i]->loop_init != NULL)
			rt_modules[i]->loop_init(l);
}

static void loop_fini(struct rt_loop *l)
{
	for (size_t i = 0; rt_modules[i] != NULL; i++)
		if (rt_modules[i]->loop_fini != NULL)
			rt_modules[i]->loop_fini(l);
	blob_cluster_free(&l->blobs);
	db_pool_free(&l->db);
}

static void on_worker_start(struct daemon_worker *w, void *arg)
{
	struct router *rt = arg;
	struct rt_loop *l = rt->loops[w->index];
	l->base = w->base;
	loop_init(rt, l);
}

static void on_worker_stop(struct daemon_worker *w, void *arg)
{
	struct router *rt = arg;
	rpc_server_close_all(rt->rpc, w->index);
	loop_fini(rt->loops[w->index]);
}

static void on_drain(struct daemon_worker *w, void *arg)
{
	struct router *rt = arg;
	rpc_server_drain(rt->rpc, w->index);
	for (size_t i = 0; rt_modules[i] != NULL; i++)
		if (rt_modules[i]->loop_drain != NULL)
			rt_modules[i]->loop_drain(rt->loops[w->index]);
}

static void on_accept(struct daemon_worker *w, evutil_socket_t fd, const struct sockaddr *peer,
		      int peer_len, void *arg)
{
	struct router *rt = arg;
	rpc_server_accept(rt->rpc, w->index, w->base, fd, peer, peer_len);
}

/* ready_check - PostgreSQL reachable and a write quorum of store nodes up */
static bool ready_check(void *arg, const char **why_r)
{
	struct router *rt = arg;
	struct rt_loop *m = rt->loops[rt->nloops - 1];
	struct db_pool_stats st;
	db_pool_stats(m->db, &st);
	if (st.connections_ready == 0) {
		*why_r = "database";
		return false;
	}
	unsigned up = 0;
	for (size_t i = 0; i < blob_node_count(m->blobs); i++)
		up += blob_node_up(m->blobs, blob_node_name(m->blobs, i));
	if (up < rt->blob_opts.write_quorum) {
		*why_r = "store write quorum";
		return false;
	}
	return true;
}

int main(int argc, char **argv)
{
	struct config *cfg;
	enum config_result cr;
	switch ((cr = config_load("mail-router", "the mail cluster's router (gRPC mail.router.v1, admin API)",
			    router_tables, argc, argv, &cfg))) {
	case CONFIG_EXIT_OK:
		return 0;
	case CONFIG_EXIT_FAIL:
		return 2;
	case CONFIG_RUN:
	case CONFIG_CHECK:
		break;
	}
	signal(SIGPIPE, SIG_IGN);
	struct router *rt = &the_router;
	rt->cfg = cfg;
	const char *err;
	rt->db_conninfo = config_str(cfg, "db");
	if (db_conninfo_check(rt->db_conninfo, &err) < 0)
		log_fatal("bad db connection string", "error=\"%s\"", err);
	if (blob_nodes_parse(config_str(cfg, "store_nodes"), &rt->nodes, &rt->n_nodes, &err) < 0)
		log_fatal("bad store_nodes", "error=\"%s\"", err);
	rt->blob_opts.replicas = (unsigned)config_int(cfg, "replicas");
	rt->blob_opts.write_quorum = (unsigned)config_int(cfg, "write_quorum");
	if (rt->blob_opts.write_quorum == 0)
		rt->blob_opts.write_quorum = rt->blob_opts.replicas;
	if (rt->blob_opts.replicas > rt->n_nodes || rt->blob_opts.write_quorum > rt->blob_opts.replicas)
		log_fatal("replicas/write_quorum do not fit the store nodes",
			  "replicas=%u write_quorum=%u nodes=%zu", rt->blob_opts.replicas,
			  rt->blob_opts.write_quorum, rt->n_nodes);
	rt->max_message_size = config_size(cfg, "max_message_size");
	rt->deliver_batch_max = (int)config_int(cfg, "deliver_batch_max");
	rt->deliver_batch_inflight = (int)config_int(cfg, "deliver_batch_inflight");
	rt->pw_params = (struct password_params)PASSWORD_DEFAULT_PARAMS;
	rt->pw_params.t_cost = (uint32_t)config_int(cfg, "argon2_t_cost");
	rt->pw_params.m_cost_kib = (uint32_t)(config_size(cfg, "argon2_m_cost") / 1024);
	char *node_id = NULL;
	if (config_str(cfg, "node_id")[0] != '\0') {
		node_id = xstrdup(config_str(cfg, "node_id"));
	} else {
		char host[128] = "router";
		gethostname(host, sizeof(host) - 1);
		node_id = xasprintf("%s-%d", host, (int)getpid());
	}
	rt->node_id = node_id;
	const char *admin_addr = config_str(cfg, "admin_listen");
	if (admin_addr[0] != '\0' && config_str(cfg, "admin_token_file")[0] == '\0')
		log_fatal("admin_token_file is required when admin_listen is set", "%s", "");
	if (cr == CONFIG_CHECK) {
		free(node_id);
		blob_nodes_free(&rt->nodes, rt->n_nodes);
		config_free(&cfg);
		config_check_ok("mail-router");
	}
	if (admin_addr[0] != '\0' && load_admin_token(rt, config_str(cfg, "admin_token_file"), &err) < 0)
		log_fatal("cannot load the admin token", "error=\"%s\"", err);

	if (config_bool(cfg, "migrate")) {
		if (migrate_run(rt->db_conninfo, &err) < 0)
			log_fatal("schema migration failed", "error=\"%s\"", err);
	}

	rt->daemon = daemon_new(cfg);
	int nworkers = daemon_worker_count(rt->daemon);
	rt->nloops = nworkers + 1;
	rt->loops = xcalloc((size_t)rt->nloops, sizeof(*rt->loops));
	for (int i = 0; i < rt->nloops; i++) {
		rt->loops[i] = XNEW(struct rt_loop);
		rt->loops[i]->rt = rt;
		rt->loops[i]->index = i;
		rt->loops[i]->is_main = i == nworkers;
	}
	rt->hashers = workpool_new("hash", (int)config_int(cfg, "hash_threads"), 10000);

	size_t n_methods = 0;
	for (size_t i = 0; rt_modules[i] != NULL; i++)
		n_methods += rt_modules[i]->n_methods;
	struct rpc_method *methods = xcalloc(n_methods ? n_methods : 1, sizeof(*methods));
	size_t k = 0;
	for (size_t i = 0; rt_modules[i] != NULL; i++)
		for (size_t j = 0; j < rt_modules[i]->n_methods; j++)
			methods[k++] = rt_modules[i]->methods[j];
	struct rpc_server_opts ropts = { .max_message = RPC_CHUNK_SIZE * 2 + 4096 };
	struct tls_holder *tls = NULL;
	if (config_str(cfg, "tls_cert")[0] != '\0') {
		tls = tls_holder_new(config_str(cfg, "tls_cert"), config_str(cfg, "tls_key"),
				     config_str(cfg, "tls_ca")[0] ? config_str(cfg, "tls_ca") : NULL, &err);
		if (tls == NULL)
			log_fatal("cannot load TLS certificate", "error=\"%s\"", err);
		ropts.tls = tls_holder_get(tls);
	}
	rt->rpc = rpc_server_new(methods, n_methods, &ropts, nworkers);
	if (ropts.tls != NULL)
		SSL_CTX_free(ropts.tls);

	if (daemon_listen(rt->daemon, config_str(cfg, "listen"), on_accept, rt, &err) < 0)
		log_fatal("cannot listen", "addr=%s error=\"%s\"", config_str(cfg, "listen"), err);
	daemon_on_worker_start(rt->daemon, on_worker_start, rt);
	daemon_on_worker_stop(rt->daemon, on_worker_stop, rt);
	daemon_on_drain(rt->daemon, on_drain, rt);

	/* the main loop: admin API, background jobs, readiness */
	struct rt_loop *m = rt->loops[nworkers];
	m->base = daemon_main_base(rt->daemon);
	loop_init(rt, m);
	struct httpd *admin = NULL;
	if (admin_addr[0] != '\0') {
		admin = httpd_new(m->base, admin_addr, &err);
		if (admin == NULL)
			log_fatal("cannot listen for the admin API", "addr=%s error=\"%s\"", admin_addr, err);
	}
	struct httpd *metrics = daemon_httpd(rt->daemon);
	if (metrics != NULL)
		httpd_add_ready_check(metrics, "router", ready_check, rt);
	for (size_t i = 0; rt_modules[i] != NULL; i++)
		if (rt_modules[i]->main_init != NULL)
			rt_modules[i]->main_init(rt, admin, metrics);

	log_info("router starting", "node=%s workers=%d store_nodes=%zu replicas=%u write_quorum=%u",
		 rt->node_id, nworkers, rt->n_nodes, rt->blob_opts.replicas, rt->blob_opts.write_quorum);
	int status = daemon_run(rt->daemon);

	loop_fini(m);
	httpd_free(&admin);
	workpool_free(&rt->hashers);
	rpc_server_free(&rt->rpc);
	daemon_free(&rt->daemon);
	for (int i = 0; i < rt->nloops; i++)
		free(rt->loops[i]);
	free(rt->loops);
	free(methods);
	tls_holder_free(&tls);
	blob_nodes_free(&rt->nodes, rt->n_nodes);
	free(node_id);
	config_free(&cfg);
	return status;
}
