/* router.h - the router process: shared, read-only settings (struct router)
 * and one context per event loop (struct rt_loop: each worker thread and the
 * main thread, which serves the admin API and runs background jobs).
 *
 * Services are split by concern into modules (rt_auth, rt_deliver,
 * rt_mailbox, rt_message, rt_watch, rt_admin, rt_jobs). Each module exports
 * a struct rt_module: its gRPC methods, its prepared statements and optional
 * per-loop init/fini hooks. main.c concatenates them; modules never edit
 * each other's tables. */
#ifndef MAIL_ROUTER_H
#define MAIL_ROUTER_H
#include "lib/common.h"
#include "proto/rpc.h"
#include "router/db.h"
#include "router/blobs.h"
#include "router/password.h"

struct config;
struct daemon;
struct workpool;
struct httpd;

struct router {
	const struct config *cfg;
	struct daemon *daemon;
	struct rpc_server *rpc;
	struct workpool *hashers;        /* Argon2/crypt verification off the loops */
	const char *node_id;             /* this router's name (logs, queue leases, locks) */
	const char *db_conninfo;
	struct blob_node_cfg *nodes;
	size_t n_nodes;
	struct blob_cluster_opts blob_opts;
	struct password_params pw_params;
	uint64_t max_message_size;       /* largest message Deliver/Append accept */
	int deliver_batch_max;           /* group commit: deliveries per transaction */
	int deliver_batch_inflight;      /* batches of each kind at once, all loops together */
	char admin_token[128];           /* bearer token of the admin API */
	int nloops;                      /* workers + 1 (main) */
	struct rt_loop **loops;          /* index = worker index; [nworkers] = main */
};

struct rt_loop {
	struct router *rt;
	int index;                       /* worker index, or nworkers for the main loop */
	bool is_main;
	struct event_base *base;
	struct db_pool *db;
	struct blob_cluster *blobs;
	void *mod[8];                    /* per-module state, indexed by module slot */
};

struct rt_module {
	const char *name;
	const struct rpc_method *methods;
	size_t n_methods;
	const struct db_stmt *stmts;
	size_t n_stmts;
	int slot;                        /* index into rt_loop.mod (unique per module) */
	/* per loop, on that loop's thread, after db and blobs exist */
	void (*loop_init)(struct rt_loop *l);
	void (*loop_fini)(struct rt_loop *l);
	/* per loop, on that loop's thread, when a drain starts (SIGTERM): end the
	 * calls that would never end by themselves (server streams) */
	void (*loop_drain)(struct rt_loop *l);
	/* once, on the main thread, before daemon_run (admin routes, readiness) */
	void (*main_init)(struct router *rt, struct httpd *admin, struct httpd *metrics);
};

/* rt_loop_of_call - the loop context a gRPC call runs on */
struct rt_loop *rt_loop_of_call(const struct rpc_call *call);

/* rt_worker_hold - keep the call's worker loop alive until rt_worker_release:
 * for work that may outlive its call (a pool job finishing after a cancel). The
 * reply bytes themselves need no hold: the rpc server keeps a draining worker
 * until every connection's output is written. NULL when there is no worker. */
struct daemon_worker *rt_worker_hold(const struct rpc_call *call);
void rt_worker_release(struct daemon_worker *w);
/* rt_finish_db_error - ends a call after a failed db request with the right
 * status: UNAVAILABLE for no answer, INTERNAL for an SQL error (logged) */
void rt_finish_db_error(struct rpc_call *call, const struct db_result *r, const char *what);
#endif
