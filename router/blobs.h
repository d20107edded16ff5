/* blobs.h - the router's client of the replicated blob store (mail.store.v1).
 *
 * One struct blob_cluster per router worker thread, bound to that thread's
 * event_base, with one rpc_client per store node. It decides where a blob
 * lives (rendezvous hashing), writes it to R nodes and answers once W of them
 * have fsync'd it, reads it from one replica and carries on from the same
 * byte on another when that one fails, repairs a replica that turned out to
 * be missing or corrupt, and watches every node's health.
 *
 * Placement: score(node, id) = the first 8 bytes, big-endian, of
 * SHA-256("<node name>\n<blob id>"); a blob's nodes are the R highest scores
 * (ties: the smaller name). The formula is a contract: tests and tools
 * recompute it.
 *
 * Callbacks: never invoked from inside an API call (blob_put, blob_get,
 * blob_op_cancel, blob_get_resume, ...); they run from the event loop.
 * Ownership: the cluster owns every struct blob_op. A handle is valid until
 * its final callback returns or the caller cancels it; after that it is dead
 * (clear your pointer in the final callback). blob_op_cancel and
 * blob_cluster_free are safe from inside any callback of the cluster.
 *
 * Metrics (process-wide, shared by every worker's cluster): blob_put_total,
 * blob_put_failed_total, blob_get_total, blob_get_failed_total,
 * blob_get_fallback_total, blob_repair_total, blob_repair_failed_total, and
 * the gauge blob_node_up{node="..."} (the latest change any cluster saw).
 *
 * The per-node operations are named blob_node_* (not blob_stat/blob_delete/
 * blob_list) so they never collide with the store's own file layer, whose
 * functions carry the same module prefix. */
#ifndef MAIL_ROUTER_BLOBS_H
#define MAIL_ROUTER_BLOBS_H
#include "lib/common.h"
#include "proto/rpc.h"
#include <event2/event.h>

#define BLOB_ID_HEX_LEN 64          /* lowercase hex SHA-256 */
#define BLOB_MAX_NODES 64           /* store nodes a cluster may list */
#define BLOB_NODE_NAME_MAX 64

struct blob_cluster;
struct blob_op;

/* ------------------------------------------------------------ config */

struct blob_node_cfg {
	const char *name;           /* [A-Za-z0-9._-]{1,64}, unique */
	const char *addr;           /* "host:port" or "[v6]:port", unique */
};

/* blob_nodes_parse - "store1=127.0.0.1:7201,store2=127.0.0.1:7202" (spaces
 * around items allowed). On success *nodes_r (strings included) is owned by
 * the caller: release it with blob_nodes_free. */
int blob_nodes_parse(const char *s, struct blob_node_cfg **nodes_r, size_t *n_r,
		     const char **error_r);
void blob_nodes_free(struct blob_node_cfg **nodesp, size_t n);

/* every 0 means the default in parentheses */
struct blob_cluster_opts {
	unsigned replicas;          /* R, copies of each blob (2) */
	unsigned write_quorum;      /* W, fsync'd copies before a put succeeds (R) */
	unsigned max_inflight;      /* store calls running at once per node (64) */
	unsigned max_queued;        /* calls waiting for one of those slots per node (1024) */
	unsigned max_copies;        /* copies (blob_copy, read repairs) running at once (4) */
	unsigned max_copy_queue;    /* copies waiting to run (256) */
	int probe_interval_ms;      /* health probe of every node (1000) */
	int probe_timeout_ms;       /* deadline of one probe (1000) */
	int call_timeout_ms;        /* deadline of a unary call; floor of a transfer's (10000) */
	uint64_t min_rate;          /* bytes/s a transfer's deadline allows on top of the floor (1 MiB/s) */
	int stall_timeout_ms;       /* a read stream silent this long has failed (5000) */
	size_t get_buffer;          /* bytes a paused read holds before it drops its store call (256 KiB) */
	const struct rpc_client_opts *rpc; /* per-node client (TLS, ...); backoff_max 0 = 1000 ms */
};

/* blob_cluster_new - clients for every node (connected lazily) and the
 * health probes. -1 with *error_r on a bad configuration (no nodes, R larger
 * than the node count, W > R, bad or duplicate names). */
int blob_cluster_new(struct event_base *base, const struct blob_node_cfg *nodes, size_t n,
		     const struct blob_cluster_opts *opts, struct blob_cluster **c_r,
		     const char **error_r);
/* blob_cluster_free - cancels every operation (no callbacks) and background work */
void blob_cluster_free(struct blob_cluster **cp);

/* blob_cluster_set_copy_hook - told of a copy the caller did not ask for:
 * a put's acknowledgement that came after its callback (W < R) and a read
 * repair. The router records the new placement from here. */
typedef void blob_copy_hook(const char *id, const char *node, void *arg);
void blob_cluster_set_copy_hook(struct blob_cluster *c, blob_copy_hook *hook, void *arg);
/* blob_cluster_background - repairs and put tails still running (drain on shutdown) */
size_t blob_cluster_background(const struct blob_cluster *c);

/* ------------------------------------------------------------ nodes, placement */

size_t blob_node_count(const struct blob_cluster *c);
const char *blob_node_name(const struct blob_cluster *c, size_t i);
const char *blob_node_addr(const struct blob_cluster *c, size_t i);
/* blob_node_up - the last word on the node: a probe or a call succeeded
 * (true) or a call failed with UNAVAILABLE/DEADLINE_EXCEEDED or a probe
 * failed (false). Unknown names are down. Nodes start up. */
bool blob_node_up(const struct blob_cluster *c, const char *name);
/* blob_node_restarts - how often this cluster's health probe found the node
 * answering as a new process (StatResponse.instance changed), seen down or not */
unsigned blob_node_restarts(const struct blob_cluster *c, const char *name);

/* blob_id_valid - 64 lowercase hex chars */
bool blob_id_valid(const char *id);
/* blob_id_of - the id of these bytes (hex SHA-256) */
void blob_id_of(const void *data, size_t len, char out[BLOB_ID_HEX_LEN + 1]);

/* blob_rank - every node (or every live one) in rendezvous order for id;
 * returns how many names were written (at most max; names are borrowed) */
size_t blob_rank(const struct blob_cluster *c, const char *id, bool live_only,
		 const char **out, size_t max);
/* blob_place - where a put of id goes now: the first R live nodes */
size_t blob_place(const struct blob_cluster *c, const char *id, const char **out, size_t max);
/* blob_place_ideal - the first R of all nodes, live or not (the repair job's target) */
size_t blob_place_ideal(const struct blob_cluster *c, const char *id, const char **out,
			size_t max);

/* ------------------------------------------------------------ operations */

/* blob_op_cancel - no callback follows; the op's store calls are cancelled.
 * Sets *opp = NULL. A put past its callback is not the caller's any more. */
void blob_op_cancel(struct blob_op **opp);

struct blob_put_result {
	enum rpc_status status;     /* OK, UNAVAILABLE, INVALID_ARGUMENT (id does not match) */
	const char *message;        /* "" when none */
	const char *id;
	uint64_t size;
	const char *const *nodes;   /* the nodes that fsync'd it: at least W when OK; on
				     * failure the copies made anyway (the GC's to find) */
	size_t n_nodes;
	bool existed;               /* every one of them already had it */
};
typedef void blob_put_cb(const struct blob_put_result *res, void *arg);

/* blob_put - store data on the R placed live nodes in parallel (64 KiB chunks,
 * with expected_id). The callback comes once: OK when W nodes have fsync'd
 * it, else UNAVAILABLE once fewer than W can succeed (a failed node is
 * replaced by the next live one in rendezvous order). The other copies go on
 * in the background (the hook hears of late ones). id: the data's hex
 * SHA-256, or NULL to compute it here. `data` must live until the callback;
 * the cluster copies what the background still needs. Never NULL. */
struct blob_op *blob_put(struct blob_cluster *c, const uint8_t *data, size_t len, const char *id,
			 blob_put_cb *cb, void *arg);

struct blob_get_cbs {
	/* on_size (optional): the blob's total size, once, before any on_data */
	void (*on_size)(uint64_t size, void *arg);
	/* on_data: the next bytes of the range, in order, never twice */
	void (*on_data)(const uint8_t *data, size_t len, void *arg);
	/* on_done: once; OK when the whole range was delivered. NOT_FOUND when
	 * every replica said so, OUT_OF_RANGE for an offset past the end,
	 * DATA_LOSS when the copies found were all corrupt, else UNAVAILABLE. */
	void (*on_done)(enum rpc_status st, const char *message, void *arg);
};

/* blob_get - stream bytes [offset, offset+length) (length 0 = to the end).
 * Replicas are tried in the order of nodes_hint (NULL-terminated names, e.g.
 * the placement PostgreSQL recorded; NULL = rendezvous order), then the other
 * nodes in rendezvous order; down nodes are skipped. When a replica fails
 * before or during the stream the next one continues from the next byte.
 * A replica that said NOT_FOUND or DATA_LOSS while another had the blob is
 * repaired in the background (only nodes that should hold it: the hint, or
 * the ideal placement). Never NULL. */
struct blob_op *blob_get(struct blob_cluster *c, const char *id, const char *const *nodes_hint,
			 uint64_t offset, uint64_t length, const struct blob_get_cbs *cbs,
			 void *arg);
/* blob_get_pause/resume - the caller's back-pressure: no on_data while
 * paused. A paused read keeps at most get_buffer bytes (plus one chunk);
 * beyond that it drops its store call and resumes with a range read. */
void blob_get_pause(struct blob_op *op);
void blob_get_resume(struct blob_op *op);
/* blob_get_node - the node currently streaming (NULL between replicas) */
const char *blob_get_node(const struct blob_op *op);
/* blob_get_fallbacks - how many times this read moved to another replica */
unsigned blob_get_fallbacks(const struct blob_op *op);

/* results of the single-node operations (the repair and GC jobs use them) */
struct blob_result {
	enum rpc_status status;
	const char *message;        /* "" when none */
	bool exists;                /* stat: the node has it; delete: it was there; copy: the target already had it */
	uint64_t size;              /* stat, copy: the blob's size */
};
typedef void blob_result_cb(const struct blob_result *res, void *arg);

/* blob_copy - stream the blob from one node into a Put on another (with
 * expected_id, so the target verifies every byte); never holds the whole
 * blob: the source is read in 1 MiB range windows, each asked for only when
 * the target has taken the previous one. UNAVAILABLE at once when either node
 * is down. Never NULL. */
struct blob_op *blob_copy(struct blob_cluster *c, const char *id, const char *from_node,
			  const char *to_node, blob_result_cb *cb, void *arg);
/* blob_node_stat / blob_node_delete - one node, one call. Never NULL. */
struct blob_op *blob_node_stat(struct blob_cluster *c, const char *node, const char *id,
			       blob_result_cb *cb, void *arg);
struct blob_op *blob_node_delete(struct blob_cluster *c, const char *node, const char *id,
				 blob_result_cb *cb, void *arg);

struct blob_info {
	const char *id;
	uint64_t size;
};
/* blob_list_cb - one page of ids > after, ascending; more: another page follows */
typedef void blob_list_cb(enum rpc_status st, const char *message, const struct blob_info *blobs,
			  size_t n, bool more, void *arg);
/* blob_node_list - limit 0 = 1000, at most 10000. Never NULL. */
struct blob_op *blob_node_list(struct blob_cluster *c, const char *node, const char *after,
			       unsigned limit, blob_list_cb *cb, void *arg);
#endif
