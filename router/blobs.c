/* blobs.c - blob placement, replication, fallback reads and repair over the
 * store nodes (see blobs.h for the contract).
 *
 * Objects: a cluster holds its nodes (one rpc_client, a health probe and a
 * bounded queue of calls each) and every operation in flight (struct
 * blob_op). An operation runs one or more store calls (struct blob_call,
 * embedded in the op); a call takes one of its node's slots, or waits in the
 * node's FIFO for one. Copies (blob_copy and read repairs) are bounded per
 * cluster instead, so a copy never waits for a slot while holding another.
 *
 * Lifetime: the cluster owns every op. Every entry from the loop (rpc
 * callbacks, timers, the op's own event) is bracketed by c_enter/c_leave;
 * an op that ends inside a bracket is parked on c->zombies and freed when
 * the outermost bracket ends, so nothing is freed under a callback that is
 * still on the stack. An op's store calls are cancelled when it ends, so no
 * late reply ever reaches it (the rpc runtime runs no callback after
 * rpc_ccall_cancel). User callbacks run only from the loop: final results
 * always from the op's event, read data from the store call's on_message. */
#include "lib/common.h"
#include "router/blobs.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "store.pb-c.h"
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/sha.h>

#define P_PUT "/mail.store.v1.BlobStore/Put"
#define P_GET "/mail.store.v1.BlobStore/Get"
#define P_STAT "/mail.store.v1.BlobStore/Stat"
#define P_DELETE "/mail.store.v1.BlobStore/Delete"
#define P_LIST "/mail.store.v1.BlobStore/List"

/* defaults of struct blob_cluster_opts */
#define BLOB_DEF_REPLICAS 2u
#define BLOB_DEF_MAX_INFLIGHT 64u
#define BLOB_DEF_MAX_QUEUED 1024u
#define BLOB_DEF_MAX_COPIES 4u
#define BLOB_DEF_MAX_COPY_QUEUE 256u
#define BLOB_DEF_PROBE_INTERVAL_MS 1000
#define BLOB_DEF_PROBE_TIMEOUT_MS 1000
#define BLOB_DEF_CALL_TIMEOUT_MS 10000
#define BLOB_DEF_MIN_RATE (1024u * 1024)
#define BLOB_DEF_STALL_MS 5000
#define BLOB_DEF_GET_BUFFER (256u * 1024)
#define BLOB_DEF_BACKOFF_MAX_MS 1000    /* a restarted node is back within about a second */
#define BLOB_DEF_CONNECT_TIMEOUT_MS 2000

#define BLOB_COPY_WINDOW (1024u * 1024) /* a copy reads its source in ranges of this */
#define BLOB_UNKNOWN_SIZE (64u << 20)   /* what a read of unknown length budgets for */
#define BLOB_LIST_MAX 10000u
#define BLOB_MSG_MAX 200

static const char blob_zero_id[BLOB_ID_HEX_LEN + 1] =
	"0000000000000000000000000000000000000000000000000000000000000000";

enum op_kind { OP_PUT, OP_GET, OP_COPY, OP_STAT, OP_DELETE, OP_LIST };

enum call_state { BC_IDLE, BC_QUEUED, BC_RUNNING };
enum attempt { PA_NONE, PA_RUNNING, PA_OK, PA_FAILED };
/* what a read learned of one replica */
enum replica_res { RES_NONE, RES_NOT_FOUND, RES_DATA_LOSS, RES_UNAVAILABLE };

struct blob_op;
struct blob_node;
struct blob_cluster;

/* one store call of an op on one node */
struct blob_call {
	struct blob_op *op;
	struct blob_node *node;
	struct rpc_ccall *rc;         /* while running */
	struct blob_call *qprev, *qnext;
	void (*start)(struct blob_call *call);
	enum call_state state;
	bool slot;                    /* holds one of node->inflight */
	/* put attempts */
	enum attempt att;
	uint64_t sent;
	bool first_sent, closed, resp_ok, existed;
	/* reads */
	bool got_first;
	uint64_t bytes;
};

struct blob_node {
	struct blob_cluster *c;
	size_t idx;
	char *name, *addr;
	struct rpc_client *rpc;
	bool up;
	char instance[33];      /* the node process's StatResponse.instance ("": none seen) */
	unsigned restarts;      /* instance changes seen */
	struct rpc_ccall *probe;
	struct event probe_ev;
	struct metric *m_up;
	unsigned inflight, n_queued;
	struct blob_call *qhead, *qtail;
};

struct blob_cluster {
	struct event_base *base;
	struct blob_node *nodes;
	size_t n;
	unsigned R, W, max_inflight, max_queued, max_copies, max_copy_queue;
	int probe_interval_ms, probe_timeout_ms, call_timeout_ms, stall_ms;
	uint64_t min_rate;
	size_t get_buffer;
	blob_copy_hook *hook;
	void *hook_arg;
	struct blob_op *ops_head, *ops_tail; /* every live op */
	struct blob_op *zombies;             /* ended inside a bracket */
	struct blob_op *cq_head, *cq_tail;   /* copies waiting to start */
	unsigned copies_running, copies_queued;
	size_t background;
	int busy;
	bool freeing;
	uint64_t op_seq;
};

struct put_state {
	const uint8_t *data;
	size_t len;
	uint8_t *owned;              /* the data, once the background needs it */
	blob_put_cb *cb;
	size_t *rank;                /* node indexes in rendezvous order */
	struct blob_call *calls;     /* one per node, by node index */
	size_t *acked;               /* node indexes in the order they acknowledged */
	unsigned acks, running;
	bool decided, bad_id, all_existed;
	char err[BLOB_MSG_MAX];      /* the last failure, for the message */
};

struct get_state {
	struct blob_get_cbs cbs;
	uint64_t offset, length, pos, total;
	bool have_total, size_told, paused, suspended, done;
	size_t *cand, n_cand, cand_i;
	bool *expected;              /* by node index: should hold the blob (repair target) */
	uint8_t *res;                /* by node index: enum replica_res */
	struct blob_call call;
	struct evbuffer *buf;        /* bytes received while paused */
	struct event stall_ev;
	bool stall_on;
	size_t served, last_node;    /* node indexes; SIZE_MAX = none */
	unsigned fallbacks;
};

struct copy_state {
	blob_result_cb *cb;          /* NULL: a read repair */
	struct blob_node *from, *to;
	struct blob_call get, put;
	uint64_t pos, total, win_end;
	bool have_total, started, queued, put_closed, wait_writable, decided;
	bool resp_ok, existed;
	struct blob_op *qnext;
};

struct unary_state {
	union {
		blob_result_cb *cb;
		blob_list_cb *list_cb;
	} u;
	struct blob_call call;
	char after[BLOB_ID_HEX_LEN + 1];
	unsigned limit;
	ProtobufCMessage *resp;
};

struct blob_op {
	struct blob_cluster *c;
	enum op_kind kind;
	uint64_t seq;
	char id[BLOB_ID_HEX_LEN + 1];
	struct blob_op *prev, *next;
	struct event ev;             /* deferred step: final callback, buffered data */
	bool dead, user_done, background;
	void *arg;
	enum rpc_status st;          /* the final result, once known */
	char msg[BLOB_MSG_MAX];
	union {
		struct put_state put;
		struct get_state get;
		struct copy_state copy;
		struct unary_state un;
	} k;
};

static struct {
	struct metric *put_ok, *put_failed, *get, *get_failed, *fallback, *repair, *repair_failed;
} blob_m;
static pthread_once_t blob_m_once = PTHREAD_ONCE_INIT;
static _Thread_local char blob_err[256];

static void op_finish(struct blob_op *op);
static void op_free(struct blob_op *op);
static void copy_pump(struct blob_cluster *c);
static void get_start(struct blob_op *op);
static void put_step(struct blob_op *op);

/* blob_metrics_init - the process-wide series (shared by every worker's cluster) */
static void blob_metrics_init(void)
{
	blob_m.put_ok = metric_counter("blob_put_total", "blob puts acknowledged at the write quorum");
	blob_m.put_failed = metric_counter("blob_put_failed_total", "blob puts that could not reach the write quorum");
	blob_m.get = metric_counter("blob_get_total", "blob reads started");
	blob_m.get_failed = metric_counter("blob_get_failed_total", "blob reads that no replica could serve");
	blob_m.fallback = metric_counter("blob_get_fallback_total", "times a read moved to another replica");
	blob_m.repair = metric_counter("blob_repair_total", "missing or corrupt replicas restored by a read");
	blob_m.repair_failed = metric_counter("blob_repair_failed_total", "read repairs that failed or were dropped");
}

/* ------------------------------------------------------------ small helpers */

static const char *errf(const char *fmt, ...) ATTR_PRINTF(1, 2);
static const char *errf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(blob_err, sizeof(blob_err), fmt, ap);
	va_end(ap);
	return blob_err;
}

bool blob_id_valid(const char *id)
{
	if (id == NULL)
		return false;
	for (size_t i = 0; i < BLOB_ID_HEX_LEN; i++) {
		char ch = id[i];
		if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
			return false;
	}
	return id[BLOB_ID_HEX_LEN] == '\0';
}

/* hex_encode - lowercase hex of n bytes into out (2n+1 bytes) */
static void hex_encode(const uint8_t *p, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	out[2 * n] = '\0';
}

void blob_id_of(const void *data, size_t len, char out[BLOB_ID_HEX_LEN + 1])
{
	uint8_t md[SHA256_DIGEST_LENGTH];
	SHA256(data, len, md);
	hex_encode(md, sizeof(md), out);
}

/* transfer_ms - deadline of a call moving `bytes`: the floor plus the time at min_rate */
static int64_t transfer_ms(const struct blob_cluster *c, uint64_t bytes)
{
	return (int64_t)c->call_timeout_ms + (int64_t)(bytes / (c->min_rate / 1000 + 1));
}

static void set_msg(struct blob_op *op, const char *fmt, ...) ATTR_PRINTF(2, 3);
static void set_msg(struct blob_op *op, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(op->msg, sizeof(op->msg), fmt, ap);
	va_end(ap);
}

/* short_id - the first 16 hex chars for log lines */
static const char *short_id(const char *id, char buf[17])
{
	snprintf(buf, 17, "%.16s", id);
	return buf;
}

/* quoted - peer text (a store's grpc-message) made safe for a log value, quotes included */
static const char *quoted(char buf[160], const char *text)
{
	return log_quote(buf, 160, text, strlen(text));
}

static struct blob_node *node_find(const struct blob_cluster *c, const char *name)
{
	if (name == NULL)
		return NULL;
	for (size_t i = 0; i < c->n; i++) {
		if (strcmp(c->nodes[i].name, name) == 0)
			return &c->nodes[i];
	}
	return NULL;
}

/* ------------------------------------------------------------ config parsing */

/* name_ok - [A-Za-z0-9._-]{1,64} */
static bool name_ok(const char *s, size_t len)
{
	if (len == 0 || len > BLOB_NODE_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '.' || ch == '_' || ch == '-'))
			return false;
	}
	return true;
}

/* addr_ok - "host:port" (host name or IPv4) or "[v6]:port", port 1..65535 */
static bool addr_ok(const char *s, size_t len)
{
	const char *colon = NULL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == ':')
			colon = s + i;
	}
	if (colon == NULL)
		return false;
	size_t hlen = (size_t)(colon - s), plen = len - hlen - 1;
	if (plen == 0 || plen > 5)
		return false;
	unsigned port = 0;
	for (size_t i = 0; i < plen; i++) {
		if (colon[1 + i] < '0' || colon[1 + i] > '9')
			return false;
		port = port * 10 + (unsigned)(colon[1 + i] - '0');
	}
	if (port == 0 || port > 65535 || hlen == 0 || hlen > 255)
		return false;
	if (s[0] == '[') {
		if (hlen < 3 || s[hlen - 1] != ']')
			return false;
		for (size_t i = 1; i + 1 < hlen; i++) {
			char ch = s[i];
			if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
			      (ch >= 'A' && ch <= 'F') || ch == ':' || ch == '.'))
				return false;
		}
		return true;
	}
	for (size_t i = 0; i < hlen; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '.' || ch == '-'))
			return false;
	}
	return true;
}

/* blob_nodes_parse - the store_nodes config value into name/address pairs */
int blob_nodes_parse(const char *s, struct blob_node_cfg **nodes_r, size_t *n_r,
		     const char **error_r)
{
	struct blob_node_cfg *nodes = NULL;
	size_t n = 0;
	const char *p = s != NULL ? s : "";

	*nodes_r = NULL;
	*n_r = 0;
	for (;;) {
		const char *end = strchr(p, ',');
		size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
		const char *b = p, *e = p + len;
		while (b < e && (*b == ' ' || *b == '\t'))
			b++;
		while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if (b == e) {
			*error_r = n == 0 && end == NULL ? "no store nodes listed"
							 : "empty item in the store node list";
			goto fail;
		}
		const char *eq = memchr(b, '=', (size_t)(e - b));
		if (eq == NULL) {
			*error_r = errf("store node \"%.*s\" is not name=host:port", (int)MAIL_MIN(e - b, 80), b);
			goto fail;
		}
		if (!name_ok(b, (size_t)(eq - b))) {
			*error_r = errf("bad store node name \"%.*s\" (1-64 of A-Z a-z 0-9 . _ -)",
					(int)MAIL_MIN(eq - b, 80), b);
			goto fail;
		}
		if (!addr_ok(eq + 1, (size_t)(e - eq - 1))) {
			*error_r = errf("bad address \"%.*s\" for store node %.*s (host:port expected)",
					(int)MAIL_MIN(e - eq - 1, 80), eq + 1, (int)(eq - b), b);
			goto fail;
		}
		if (n == BLOB_MAX_NODES) {
			*error_r = errf("more than %d store nodes", BLOB_MAX_NODES);
			goto fail;
		}
		char *name = xstrndup(b, (size_t)(eq - b));
		char *addr = xstrndup(eq + 1, (size_t)(e - eq - 1));
		for (size_t i = 0; i < n; i++) {
			if (strcmp(nodes[i].name, name) == 0 || strcmp(nodes[i].addr, addr) == 0) {
				*error_r = strcmp(nodes[i].name, name) == 0
					? errf("store node name %s listed twice", name)
					: errf("store node address %s listed twice (%s, %s)", addr,
					       nodes[i].name, name);
				free(name);
				free(addr);
				goto fail;
			}
		}
		nodes = xrealloc(nodes, (n + 1) * sizeof(*nodes));
		nodes[n].name = name;
		nodes[n].addr = addr;
		n++;
		if (end == NULL)
			break;
		p = end + 1;
	}
	*nodes_r = nodes;
	*n_r = n;
	return 0;
fail:
	blob_nodes_free(&nodes, n);
	return -1;
}

void blob_nodes_free(struct blob_node_cfg **nodesp, size_t n)
{
	struct blob_node_cfg *nodes = *nodesp;
	if (nodes == NULL)
		return;
	*nodesp = NULL;
	for (size_t i = 0; i < n; i++) {
		free((void *)nodes[i].name);
		free((void *)nodes[i].addr);
	}
	free(nodes);
}

/* ------------------------------------------------------------ placement */

/* blob_score - rendezvous weight: SHA-256("<name>\n<id>"), first 8 bytes big-endian */
static uint64_t blob_score(const char *name, const char *id)
{
	uint8_t buf[BLOB_NODE_NAME_MAX + 1 + BLOB_ID_HEX_LEN], md[SHA256_DIGEST_LENGTH];
	size_t nl = strlen(name), il = strlen(id);
	nl = MAIL_MIN(nl, (size_t)BLOB_NODE_NAME_MAX);
	il = MAIL_MIN(il, (size_t)BLOB_ID_HEX_LEN);
	memcpy(buf, name, nl);
	buf[nl] = '\n';
	memcpy(buf + nl + 1, id, il);
	SHA256(buf, nl + 1 + il, md);
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | md[i];
	return v;
}

/* rank_nodes - every node index in rendezvous order for id (out has c->n room) */
static void rank_nodes(const struct blob_cluster *c, const char *id, size_t *out)
{
	uint64_t score[BLOB_MAX_NODES];
	for (size_t i = 0; i < c->n; i++) {
		score[i] = blob_score(c->nodes[i].name, id);
		/* insertion sort: a handful of nodes */
		size_t j = i;
		while (j > 0) {
			size_t prev = out[j - 1];
			bool before = score[i] > score[prev] ||
				      (score[i] == score[prev] &&
				       strcmp(c->nodes[i].name, c->nodes[prev].name) < 0);
			if (!before)
				break;
			out[j] = prev;
			j--;
		}
		out[j] = i;
	}
}

size_t blob_rank(const struct blob_cluster *c, const char *id, bool live_only,
		 const char **out, size_t max)
{
	size_t rank[BLOB_MAX_NODES], n = 0;
	rank_nodes(c, id, rank);
	for (size_t i = 0; i < c->n && n < max; i++) {
		if (!live_only || c->nodes[rank[i]].up)
			out[n++] = c->nodes[rank[i]].name;
	}
	return n;
}

size_t blob_place(const struct blob_cluster *c, const char *id, const char **out, size_t max)
{
	return blob_rank(c, id, true, out, MAIL_MIN(max, (size_t)c->R));
}

size_t blob_place_ideal(const struct blob_cluster *c, const char *id, const char **out,
			size_t max)
{
	return blob_rank(c, id, false, out, MAIL_MIN(max, (size_t)c->R));
}

/* ------------------------------------------------------------ brackets, ops */

static inline void c_enter(struct blob_cluster *c)
{
	c->busy++;
}

/* cluster_destroy - the last of the cluster, outside every callback */
static void cluster_destroy(struct blob_cluster *c)
{
	for (size_t i = 0; i < c->n; i++) {
		struct blob_node *nd = &c->nodes[i];
		event_del(&nd->probe_ev);
		rpc_client_free(&nd->rpc);
		free(nd->name);
		free(nd->addr);
	}
	free(c->nodes);
	free(c);
}

/* c_leave - end of an entry from the loop: free what ended inside it */
static void c_leave(struct blob_cluster *c)
{
	if (--c->busy > 0)
		return;
	while (c->zombies != NULL) {
		struct blob_op *op = c->zombies;
		c->zombies = op->next;
		op_free(op);
	}
	if (c->freeing)
		cluster_destroy(c);
}

static void op_ev_cb(evutil_socket_t fd, short what, void *arg);

/* op_new - an op linked into the cluster, with its deferred-step event */
static struct blob_op *op_new(struct blob_cluster *c, enum op_kind kind, const char *id, void *arg)
{
	struct blob_op *op = XNEW(struct blob_op);
	op->c = c;
	op->kind = kind;
	op->seq = ++c->op_seq;
	op->arg = arg;
	op->st = RPC_OK;
	if (id != NULL)
		snprintf(op->id, sizeof(op->id), "%s", id);
	event_assign(&op->ev, c->base, -1, 0, op_ev_cb, op);
	op->prev = c->ops_tail;
	if (c->ops_tail != NULL)
		c->ops_tail->next = op;
	else
		c->ops_head = op;
	c->ops_tail = op;
	return op;
}

/* op_kick - run the op's next step from the loop (never from an API call's stack) */
static void op_kick(struct blob_op *op)
{
	if (!op->dead)
		event_active(&op->ev, 0, 0);
}

/* ------------------------------------------------------------ node health, slots */

/* node_set_up - the node's state changes (logged once per change) */
static void node_set_up(struct blob_node *nd, bool up, const char *why)
{
	if (nd->up == up)
		return;
	nd->up = up;
	metric_set(nd->m_up, up ? 1 : 0);
	char q[160];
	if (up)
		log_info("blob node up", "node=%s addr=%s", nd->name, nd->addr);
	else
		log_warn("blob node down", "node=%s addr=%s reason=%s", nd->name, nd->addr, quoted(q, why));
}

/* node_failed - a call failed: the transport kind of failure marks the node down */
static void node_failed(struct blob_node *nd, enum rpc_status st, const char *msg)
{
	if (st == RPC_UNAVAILABLE || st == RPC_DEADLINE_EXCEEDED)
		node_set_up(nd, false, msg);
}

static bool node_has_room(const struct blob_node *nd)
{
	return nd->inflight < nd->c->max_inflight || nd->n_queued < nd->c->max_queued;
}

static void call_init(struct blob_call *call, struct blob_op *op, struct blob_node *nd,
		      void (*start)(struct blob_call *))
{
	call->op = op;
	call->node = nd;
	call->rc = NULL;
	call->start = start;
	call->state = BC_IDLE;
	call->slot = false;
	call->sent = 0;
	call->first_sent = call->closed = call->resp_ok = call->existed = false;
	call->got_first = false;
	call->bytes = 0;
}

/* call_submit - run now in a free slot of its node, or wait in the node's
 * FIFO; false when the queue is full */
static bool call_submit(struct blob_call *call)
{
	struct blob_node *nd = call->node;
	struct blob_cluster *c = nd->c;

	if (nd->inflight < c->max_inflight) {
		nd->inflight++;
		call->slot = true;
		call->state = BC_RUNNING;
		call->start(call);
		return true;
	}
	if (nd->n_queued >= c->max_queued)
		return false;
	call->qnext = NULL;
	call->qprev = nd->qtail;
	if (nd->qtail != NULL)
		nd->qtail->qnext = call;
	else
		nd->qhead = call;
	nd->qtail = call;
	nd->n_queued++;
	call->state = BC_QUEUED;
	return true;
}

/* node_pump - start queued calls while the node has free slots */
static void node_pump(struct blob_node *nd)
{
	struct blob_cluster *c = nd->c;
	while (!c->freeing && nd->inflight < c->max_inflight && nd->qhead != NULL) {
		struct blob_call *call = nd->qhead;
		nd->qhead = call->qnext;
		if (nd->qhead != NULL)
			nd->qhead->qprev = NULL;
		else
			nd->qtail = NULL;
		nd->n_queued--;
		nd->inflight++;
		call->slot = true;
		call->state = BC_RUNNING;
		call->start(call);
	}
}

/* call_end - the store call is over (reported or cancelled): free its slot */
static void call_end(struct blob_call *call)
{
	struct blob_node *nd = call->node;
	if (call->state == BC_QUEUED) {
		if (call->qprev != NULL)
			call->qprev->qnext = call->qnext;
		else
			nd->qhead = call->qnext;
		if (call->qnext != NULL)
			call->qnext->qprev = call->qprev;
		else
			nd->qtail = call->qprev;
		call->qprev = call->qnext = NULL;
		nd->n_queued--;
	}
	call->state = BC_IDLE;
	call->rc = NULL;
	if (call->slot) {
		call->slot = false;
		nd->inflight--;
		node_pump(nd);
	}
}

/* call_cancel - stop a running or queued call; no callback of it follows */
static void call_cancel(struct blob_call *call)
{
	if (call->state == BC_IDLE)
		return;
	if (call->rc != NULL)
		rpc_ccall_cancel(call->rc);
	call_end(call);
}

/* ------------------------------------------------------------ probes */

static void probe_on_done(struct rpc_ccall *rc, enum rpc_status st, const char *message, void *arg)
{
	struct blob_node *nd = arg;
	struct blob_cluster *c = nd->c;
	c_enter(c);
	nd->probe = NULL;
	if (st == RPC_OK)
		node_set_up(nd, true, "");
	else
		node_set_up(nd, false, message);
	c_leave(c);
}

/* probe_on_message - a new instance is a restart, whether or not a probe saw
 * the node down in between */
static void probe_on_message(struct rpc_ccall *rc, const uint8_t *msg, size_t len, void *arg)
{
	struct blob_node *nd = arg;
	Mail__Store__V1__StatResponse *resp = mail__store__v1__stat_response__unpack(NULL, len, msg);
	if (resp == NULL)
		return;
	const char *inst = resp->instance != NULL ? resp->instance : "";
	size_t n = strlen(inst);
	if (n > 0 && n < sizeof(nd->instance)) {
		if (nd->instance[0] != '\0' && strcmp(nd->instance, inst) != 0) {
			nd->restarts++;
			log_info("blob node restarted", "node=%s addr=%s", nd->name, nd->addr);
		}
		memcpy(nd->instance, inst, n + 1);
	}
	mail__store__v1__stat_response__free_unpacked(resp, NULL);
}

static const struct rpc_ccall_cbs probe_cbs = { .on_message = probe_on_message, .on_done = probe_on_done };

/* probe_tick - one Stat of the all-zero id per node and period (one at a time) */
static void probe_tick(evutil_socket_t fd, short what, void *arg)
{
	struct blob_node *nd = arg;
	struct blob_cluster *c = nd->c;
	c_enter(c);
	if (nd->probe == NULL && !c->freeing) {
		Mail__Store__V1__StatRequest req = MAIL__STORE__V1__STAT_REQUEST__INIT;
		req.id = (char *)blob_zero_id;
		nd->probe = rpc_client_unary_pb(nd->rpc, P_STAT, c->probe_timeout_ms, &req.base,
						&probe_cbs, nd);
	}
	c_leave(c);
}

/* ------------------------------------------------------------ cluster */

int blob_cluster_new(struct event_base *base, const struct blob_node_cfg *nodes, size_t n,
		     const struct blob_cluster_opts *opts, struct blob_cluster **c_r,
		     const char **error_r)
{
	static const struct blob_cluster_opts defaults;
	struct rpc_client_opts ro;

	*c_r = NULL;
	if (opts == NULL)
		opts = &defaults;
	unsigned R = opts->replicas ? opts->replicas : BLOB_DEF_REPLICAS;
	unsigned W = opts->write_quorum ? opts->write_quorum : R;
	if (n == 0) {
		*error_r = "no store nodes";
		return -1;
	}
	if (n > BLOB_MAX_NODES) {
		*error_r = errf("more than %d store nodes", BLOB_MAX_NODES);
		return -1;
	}
	if (R > n) {
		*error_r = errf("replicas=%u but only %zu store nodes", R, n);
		return -1;
	}
	if (W > R) {
		*error_r = errf("write_quorum=%u is larger than replicas=%u", W, R);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (nodes[i].name == NULL || nodes[i].addr == NULL ||
		    !name_ok(nodes[i].name, strlen(nodes[i].name)) ||
		    !addr_ok(nodes[i].addr, strlen(nodes[i].addr))) {
			*error_r = errf("bad store node #%zu", i + 1);
			return -1;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(nodes[i].name, nodes[j].name) == 0) {
				*error_r = errf("store node name %s listed twice", nodes[i].name);
				return -1;
			}
		}
	}
	pthread_once(&blob_m_once, blob_metrics_init);

	memset(&ro, 0, sizeof(ro));
	if (opts->rpc != NULL)
		ro = *opts->rpc;
	if (ro.backoff_max_ms <= 0)
		ro.backoff_max_ms = BLOB_DEF_BACKOFF_MAX_MS;
	if (ro.connect_timeout_ms <= 0)
		ro.connect_timeout_ms = BLOB_DEF_CONNECT_TIMEOUT_MS;

	struct blob_cluster *c = XNEW(struct blob_cluster);
	c->base = base;
	c->R = R;
	c->W = W;
	c->max_inflight = opts->max_inflight ? opts->max_inflight : BLOB_DEF_MAX_INFLIGHT;
	c->max_queued = opts->max_queued ? opts->max_queued : BLOB_DEF_MAX_QUEUED;
	c->max_copies = opts->max_copies ? opts->max_copies : BLOB_DEF_MAX_COPIES;
	c->max_copy_queue = opts->max_copy_queue ? opts->max_copy_queue : BLOB_DEF_MAX_COPY_QUEUE;
	c->probe_interval_ms = opts->probe_interval_ms > 0 ? opts->probe_interval_ms
							   : BLOB_DEF_PROBE_INTERVAL_MS;
	c->probe_timeout_ms = opts->probe_timeout_ms > 0 ? opts->probe_timeout_ms
							 : BLOB_DEF_PROBE_TIMEOUT_MS;
	c->call_timeout_ms = opts->call_timeout_ms > 0 ? opts->call_timeout_ms
						       : BLOB_DEF_CALL_TIMEOUT_MS;
	c->min_rate = opts->min_rate ? opts->min_rate : BLOB_DEF_MIN_RATE;
	c->stall_ms = opts->stall_timeout_ms > 0 ? opts->stall_timeout_ms : BLOB_DEF_STALL_MS;
	c->get_buffer = opts->get_buffer ? opts->get_buffer : BLOB_DEF_GET_BUFFER;
	c->n = n;
	c->nodes = xcalloc(n, sizeof(*c->nodes));
	for (size_t i = 0; i < n; i++) {
		struct blob_node *nd = &c->nodes[i];
		char mname[BLOB_NODE_NAME_MAX + 32];
		nd->c = c;
		nd->idx = i;
		nd->name = xstrdup(nodes[i].name);
		nd->addr = xstrdup(nodes[i].addr);
		nd->rpc = rpc_client_new(base, nd->addr, &ro);
		nd->up = true; /* optimistic: a failed call or probe says otherwise */
		snprintf(mname, sizeof(mname), "blob_node_up{node=\"%s\"}", nd->name);
		nd->m_up = metric_gauge(mname, "1 when the store node answers, as this router sees it");
		metric_set(nd->m_up, 1);
		event_assign(&nd->probe_ev, base, -1, EV_PERSIST, probe_tick, nd);
		struct timeval tv = { c->probe_interval_ms / 1000, (c->probe_interval_ms % 1000) * 1000 };
		event_add(&nd->probe_ev, &tv);
		event_active(&nd->probe_ev, 0, 0); /* a first probe right away */
	}
	log_info("blob cluster", "nodes=%zu replicas=%u write_quorum=%u", n, R, W);
	*c_r = c;
	return 0;
}

void blob_cluster_free(struct blob_cluster **cp)
{
	struct blob_cluster *c = *cp;
	if (c == NULL)
		return;
	*cp = NULL;
	c->freeing = true;
	c->busy++;
	while (c->ops_head != NULL)
		op_finish(c->ops_head);
	for (size_t i = 0; i < c->n; i++) {
		struct blob_node *nd = &c->nodes[i];
		event_del(&nd->probe_ev);
		if (nd->probe != NULL) {
			rpc_ccall_cancel(nd->probe);
			nd->probe = NULL;
		}
	}
	c_leave(c);
}

void blob_cluster_set_copy_hook(struct blob_cluster *c, blob_copy_hook *hook, void *arg)
{
	c->hook = hook;
	c->hook_arg = arg;
}

size_t blob_cluster_background(const struct blob_cluster *c)
{
	return c->background;
}

size_t blob_node_count(const struct blob_cluster *c)
{
	return c->n;
}

const char *blob_node_name(const struct blob_cluster *c, size_t i)
{
	return i < c->n ? c->nodes[i].name : NULL;
}

const char *blob_node_addr(const struct blob_cluster *c, size_t i)
{
	return i < c->n ? c->nodes[i].addr : NULL;
}

bool blob_node_up(const struct blob_cluster *c, const char *name)
{
	const struct blob_node *nd = node_find(c, name);
	return nd != NULL && nd->up;
}

unsigned blob_node_restarts(const struct blob_cluster *c, const char *name)
{
	const struct blob_node *nd = node_find(c, name);
	return nd != NULL ? nd->restarts : 0;
}

/* ------------------------------------------------------------ op end */

/* op_free - the memory of an ended op */
static void op_free(struct blob_op *op)
{
	switch (op->kind) {
	case OP_PUT:
		free(op->k.put.owned);
		free(op->k.put.rank);
		free(op->k.put.calls);
		free(op->k.put.acked);
		break;
	case OP_GET:
		if (op->k.get.buf != NULL)
			evbuffer_free(op->k.get.buf);
		free(op->k.get.cand);
		free(op->k.get.expected);
		free(op->k.get.res);
		break;
	case OP_COPY:
		break;
	case OP_STAT:
	case OP_DELETE:
	case OP_LIST:
		if (op->k.un.resp != NULL)
			protobuf_c_message_free_unpacked(op->k.un.resp, NULL);
		break;
	}
	free(op);
}

/* copy_unqueue - take a waiting copy out of the cluster's copy queue */
static void copy_unqueue(struct blob_cluster *c, struct blob_op *op)
{
	struct blob_op **pp = &c->cq_head, *prev = NULL;
	while (*pp != NULL && *pp != op) {
		prev = *pp;
		pp = &(*pp)->k.copy.qnext;
	}
	if (*pp == NULL)
		return;
	*pp = op->k.copy.qnext;
	if (c->cq_tail == op)
		c->cq_tail = prev;
	op->k.copy.qnext = NULL;
	op->k.copy.queued = false;
	c->copies_queued--;
}

/* op_finish - the op is over: cancel its calls and timers, unlink it, free
 * it now or (inside a bracket) when the bracket ends */
static void op_finish(struct blob_op *op)
{
	struct blob_cluster *c = op->c;

	if (op->dead)
		return;
	op->dead = true;
	switch (op->kind) {
	case OP_PUT:
		for (size_t i = 0; i < c->n; i++)
			call_cancel(&op->k.put.calls[i]);
		break;
	case OP_GET:
		call_cancel(&op->k.get.call);
		if (op->k.get.stall_on) {
			event_del(&op->k.get.stall_ev);
			op->k.get.stall_on = false;
		}
		break;
	case OP_COPY:
		call_cancel(&op->k.copy.get);
		call_cancel(&op->k.copy.put);
		if (op->k.copy.queued)
			copy_unqueue(c, op);
		if (op->k.copy.started) {
			op->k.copy.started = false;
			c->copies_running--;
		}
		break;
	case OP_STAT:
	case OP_DELETE:
	case OP_LIST:
		call_cancel(&op->k.un.call);
		break;
	}
	event_del(&op->ev);
	if (op->background) {
		op->background = false;
		c->background--;
	}
	if (op->prev != NULL)
		op->prev->next = op->next;
	else
		c->ops_head = op->next;
	if (op->next != NULL)
		op->next->prev = op->prev;
	else
		c->ops_tail = op->prev;
	op->prev = op->next = NULL;
	bool was_copy = op->kind == OP_COPY;
	if (c->busy > 0) {
		op->next = c->zombies;
		c->zombies = op;
	} else {
		op_free(op); /* no callback of ours is on the stack */
	}
	if (was_copy && !c->freeing)
		copy_pump(c);
}

void blob_op_cancel(struct blob_op **opp)
{
	struct blob_op *op = *opp;
	if (op == NULL)
		return;
	*opp = NULL;
	if (op->dead || op->user_done)
		return; /* a put past its callback belongs to the cluster */
	op_finish(op);
}

/* ------------------------------------------------------------ put */

static void put_pump(struct blob_call *call);

static void put_on_message(struct rpc_ccall *rc, const uint8_t *msg, size_t len, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	Mail__Store__V1__PutResponse *r = mail__store__v1__put_response__unpack(NULL, len, msg);
	if (r != NULL && r->id != NULL && strcmp(r->id, op->id) == 0 && r->size == op->k.put.len) {
		call->resp_ok = true;
		call->existed = r->existed;
	} else {
		char sid[17];
		log_warn("blob put: unexpected PutResponse", "id=%s node=%s", short_id(op->id, sid),
			 call->node->name);
	}
	if (r != NULL)
		mail__store__v1__put_response__free_unpacked(r, NULL);
}

static void put_on_writable(struct rpc_ccall *rc, void *arg)
{
	struct blob_call *call = arg;
	if (call->state == BC_RUNNING && call->rc != NULL)
		put_pump(call);
}

static void put_on_done(struct rpc_ccall *rc, enum rpc_status st, const char *message, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	struct blob_cluster *c = op->c;
	struct put_state *p = &op->k.put;
	struct blob_node *nd = call->node;
	char sid[17];

	c_enter(c);
	call_end(call);
	p->running--;
	if (st == RPC_OK && call->resp_ok) {
		call->att = PA_OK;
		p->acked[p->acks++] = nd->idx;
		if (!call->existed)
			p->all_existed = false;
		node_set_up(nd, true, "");
		if (op->user_done) {
			log_info("blob put: late copy", "id=%s node=%s", short_id(op->id, sid), nd->name);
			if (c->hook != NULL)
				c->hook(op->id, nd->name, c->hook_arg);
		}
	} else {
		if (st == RPC_OK) {
			st = RPC_INTERNAL;
			message = "no valid PutResponse";
		}
		call->att = PA_FAILED;
		node_failed(nd, st, message);
		if (st == RPC_INVALID_ARGUMENT)
			p->bad_id = true;
		snprintf(p->err, sizeof(p->err), "%s: %s %s", nd->name, rpc_status_name(st), message);
		char q[160];
		log_info("blob put failed on a node", "id=%s node=%s status=%s err=%s",
			 short_id(op->id, sid), nd->name, rpc_status_name(st), quoted(q, message));
	}
	put_step(op);
	c_leave(c);
}

static const struct rpc_ccall_cbs put_cbs = {
	.on_message = put_on_message,
	.on_done = put_on_done,
	.on_writable = put_on_writable,
};

/* put_pump - queue chunks until the call's back-pressure mark or the end */
static void put_pump(struct blob_call *call)
{
	struct blob_op *op = call->op;
	struct put_state *p = &op->k.put;

	while (!call->closed && rpc_ccall_queued(call->rc) < RPC_CALL_HIGH_WATER) {
		size_t n = (size_t)MAIL_MIN((uint64_t)RPC_CHUNK_SIZE, p->len - call->sent);
		Mail__Store__V1__PutRequest req = MAIL__STORE__V1__PUT_REQUEST__INIT;
		if (!call->first_sent) {
			req.expected_id = op->id;
			req.size_hint = p->len;
		}
		req.data.data = (uint8_t *)p->data + call->sent;
		req.data.len = n;
		if (rpc_ccall_send_pb(call->rc, &req.base) < 0)
			return; /* the call is over; on_done says how */
		call->first_sent = true;
		call->sent += n;
		if (call->sent == p->len) {
			rpc_ccall_close_send(call->rc);
			call->closed = true;
		}
	}
}

static void put_start_call(struct blob_call *call)
{
	struct blob_op *op = call->op;
	call->rc = rpc_client_call(call->node->rpc, P_PUT, transfer_ms(op->c, op->k.put.len),
				   &put_cbs, call);
	put_pump(call);
}

/* put_step - start attempts on live nodes until R are running or done, then
 * decide: OK at W acknowledgements, failure once W cannot be reached */
static void put_step(struct blob_op *op)
{
	struct blob_cluster *c = op->c;
	struct put_state *p = &op->k.put;

	if (op->dead)
		return;
	for (size_t i = 0; i < c->n && !p->bad_id && p->acks + p->running < c->R; i++) {
		struct blob_call *call = &p->calls[p->rank[i]];
		struct blob_node *nd = &c->nodes[p->rank[i]];
		if (call->att != PA_NONE || !nd->up || !node_has_room(nd))
			continue;
		call_init(call, op, nd, put_start_call);
		call->att = PA_RUNNING;
		p->running++;
		call_submit(call);
	}
	if (!p->decided) {
		if (p->acks >= c->W) {
			p->decided = true;
			op->st = RPC_OK;
			op_kick(op);
		} else if (p->bad_id || p->acks + p->running < c->W) {
			p->decided = true;
			for (size_t i = 0; i < c->n; i++) {
				if (p->calls[i].att == PA_RUNNING) {
					call_cancel(&p->calls[i]);
					p->calls[i].att = PA_FAILED;
				}
			}
			p->running = 0;
			if (p->bad_id) {
				op->st = RPC_INVALID_ARGUMENT;
				set_msg(op, "content does not match the blob id (%s)", p->err);
			} else {
				op->st = RPC_UNAVAILABLE;
				if (p->err[0] != '\0')
					set_msg(op, "write quorum %u not reached (%u acknowledged); last error: %s",
						c->W, p->acks, p->err);
				else
					set_msg(op, "write quorum %u not reached: too few live store nodes", c->W);
			}
			op_kick(op);
		}
	} else if (op->user_done && p->running == 0) {
		char sid[17];
		log_info("blob put background done", "id=%s copies=%u replicas=%u",
			 short_id(op->id, sid), p->acks, c->R);
		op_finish(op);
	}
}

/* put_report - the one callback of a put (from the op's event) */
static void put_report(struct blob_op *op)
{
	struct blob_cluster *c = op->c;
	struct put_state *p = &op->k.put;
	const char *names[BLOB_MAX_NODES];
	char sid[17];

	for (unsigned i = 0; i < p->acks; i++)
		names[i] = c->nodes[p->acked[i]].name;
	struct blob_put_result res = {
		.status = op->st,
		.message = op->st == RPC_OK ? "" : op->msg,
		.id = op->id,
		.size = p->len,
		.nodes = names,
		.n_nodes = p->acks, /* on failure: copies made anyway, for the GC */
		.existed = op->st == RPC_OK && p->all_existed,
	};
	if (op->st == RPC_OK) {
		metric_inc(blob_m.put_ok);
		log_debug("blob put ok", "id=%s size=%zu copies=%u", short_id(op->id, sid), p->len, p->acks);
		if (p->running > 0 && p->owned == NULL) {
			/* the caller may free data in its callback; the tail needs it */
			p->owned = xmalloc(p->len + 1);
			memcpy(p->owned, p->data, p->len);
			p->data = p->owned;
		}
	} else {
		metric_inc(blob_m.put_failed);
		char q[160];
		log_warn("blob put failed", "id=%s size=%zu status=%s err=%s", short_id(op->id, sid),
			 p->len, rpc_status_name(op->st), quoted(q, op->msg));
	}
	op->user_done = true;
	if (p->cb != NULL)
		p->cb(&res, op->arg);
	if (op->dead)
		return;
	if (op->st != RPC_OK || p->running == 0) {
		op_finish(op);
	} else {
		op->background = true;
		c->background++;
	}
}

struct blob_op *blob_put(struct blob_cluster *c, const uint8_t *data, size_t len, const char *id,
			 blob_put_cb *cb, void *arg)
{
	static const uint8_t empty[1];
	struct blob_op *op = op_new(c, OP_PUT, NULL, arg);
	struct put_state *p = &op->k.put;

	p->data = len > 0 ? data : empty;
	p->len = len;
	p->cb = cb;
	p->all_existed = true;
	p->rank = xcalloc(c->n, sizeof(*p->rank));
	p->calls = xcalloc(c->n, sizeof(*p->calls));
	p->acked = xcalloc(c->n, sizeof(*p->acked));
	for (size_t i = 0; i < c->n; i++)
		call_init(&p->calls[i], op, &c->nodes[i], put_start_call);
	if (id == NULL) {
		blob_id_of(p->data, len, op->id);
	} else if (!blob_id_valid(id)) {
		p->decided = true;
		op->st = RPC_INVALID_ARGUMENT;
		set_msg(op, "blob id is not 64 lowercase hex chars");
		op_kick(op);
		return op;
	} else {
		memcpy(op->id, id, BLOB_ID_HEX_LEN + 1);
	}
	rank_nodes(c, op->id, p->rank);
	put_step(op);
	return op;
}

/* ------------------------------------------------------------ get */

/* get_end - the end offset of the read, when known */
static bool get_end(const struct blob_op *op, uint64_t *end_r)
{
	const struct get_state *g = &op->k.get;
	uint64_t want = g->length == 0 ? UINT64_MAX
		: (g->offset > UINT64_MAX - g->length ? UINT64_MAX : g->offset + g->length);
	if (g->have_total) {
		*end_r = MAIL_MIN(want, g->total);
		return true;
	}
	*end_r = want;
	return g->length != 0;
}

static void stall_arm(struct blob_op *op)
{
	struct get_state *g = &op->k.get;
	struct timeval tv = { op->c->stall_ms / 1000, (op->c->stall_ms % 1000) * 1000 };
	evtimer_add(&g->stall_ev, &tv);
	g->stall_on = true;
}

static void stall_stop(struct blob_op *op)
{
	struct get_state *g = &op->k.get;
	if (g->stall_on) {
		event_del(&g->stall_ev);
		g->stall_on = false;
	}
}

/* repair_start - queue a background copy that restores a replica */
static void repair_start(struct blob_cluster *c, const char *id, struct blob_node *from,
			 struct blob_node *to, const char *why);

/* get_complete - the read's outcome is known; on_done follows the buffered bytes */
static void get_complete(struct blob_op *op, enum rpc_status st, const char *msg)
{
	struct blob_cluster *c = op->c;
	struct get_state *g = &op->k.get;

	if (g->done)
		return;
	g->done = true;
	g->suspended = false;
	call_cancel(&g->call);
	stall_stop(op);
	op->st = st;
	snprintf(op->msg, sizeof(op->msg), "%s", msg);
	if (st == RPC_OK && g->served != SIZE_MAX) {
		/* replicas that should have it but said it is missing or corrupt */
		for (size_t i = 0; i < c->n; i++) {
			if (i == g->served || !g->expected[i])
				continue;
			if (g->res[i] == RES_NOT_FOUND)
				repair_start(c, op->id, &c->nodes[g->served], &c->nodes[i], "not found");
			else if (g->res[i] == RES_DATA_LOSS)
				repair_start(c, op->id, &c->nodes[g->served], &c->nodes[i], "corrupt");
		}
	} else if (st != RPC_OK) {
		metric_inc(blob_m.get_failed);
	}
	op_kick(op);
}

/* get_all_failed - no candidate left: NOT_FOUND only if every one said so */
static void get_all_failed(struct blob_op *op)
{
	struct get_state *g = &op->k.get;
	bool all_nf = true, any_unavail = false;
	for (size_t i = 0; i < g->n_cand; i++) {
		uint8_t r = g->res[g->cand[i]];
		if (r != RES_NOT_FOUND)
			all_nf = false;
		if (r == RES_UNAVAILABLE || r == RES_NONE)
			any_unavail = true;
	}
	if (all_nf)
		get_complete(op, RPC_NOT_FOUND, "no replica has the blob");
	else if (any_unavail)
		get_complete(op, RPC_UNAVAILABLE, "no replica could serve the blob");
	else
		get_complete(op, RPC_DATA_LOSS, "every copy found is corrupt");
}

static void get_on_message(struct rpc_ccall *rc, const uint8_t *msg, size_t len, void *arg);
static void get_on_done(struct rpc_ccall *rc, enum rpc_status st, const char *message, void *arg);
static const struct rpc_ccall_cbs get_cbs = { .on_message = get_on_message, .on_done = get_on_done };

static void get_start_call(struct blob_call *call)
{
	struct blob_op *op = call->op;
	struct get_state *g = &op->k.get;
	Mail__Store__V1__GetRequest req = MAIL__STORE__V1__GET_REQUEST__INIT;
	uint64_t end;
	bool known = get_end(op, &end);

	req.id = op->id;
	req.offset = g->pos;
	req.length = known && end != UINT64_MAX ? end - g->pos : 0;
	call->got_first = false;
	call->bytes = 0;
	int64_t tmo = transfer_ms(op->c, known && end != UINT64_MAX ? end - g->pos : BLOB_UNKNOWN_SIZE);
	call->rc = rpc_client_unary_pb(call->node->rpc, P_GET, tmo, &req.base, &get_cbs, call);
}

/* get_start - (re)start the stream at the current candidate or the next usable one */
static void get_start(struct blob_op *op)
{
	struct blob_cluster *c = op->c;
	struct get_state *g = &op->k.get;
	uint64_t end;

	if (op->dead || g->done)
		return;
	if (get_end(op, &end) && g->have_total && g->pos >= end) {
		/* everything arrived; only the trailer was lost */
		g->served = g->last_node;
		get_complete(op, RPC_OK, "");
		return;
	}
	for (; g->cand_i < g->n_cand; g->cand_i++) {
		struct blob_node *nd = &c->nodes[g->cand[g->cand_i]];
		if (!nd->up || !node_has_room(nd)) {
			if (g->res[nd->idx] == RES_NONE)
				g->res[nd->idx] = RES_UNAVAILABLE;
			continue;
		}
		if (g->last_node != nd->idx && (g->last_node != SIZE_MAX || g->cand_i > 0)) {
			g->fallbacks++;
			metric_inc(blob_m.fallback);
		}
		g->last_node = nd->idx;
		call_init(&g->call, op, nd, get_start_call);
		call_submit(&g->call);
		stall_arm(op); /* also bounds the wait for a slot */
		return;
	}
	get_all_failed(op);
}

/* get_call_failed - one replica failed: classify, then the next one goes on */
static void get_call_failed(struct blob_op *op, struct blob_node *nd, enum rpc_status st,
			    const char *message, uint64_t call_bytes)
{
	struct get_state *g = &op->k.get;
	char sid[17];

	char q[160];
	log_info("blob read failed on a replica", "id=%s node=%s status=%s pos=%" PRIu64 " err=%s",
		 short_id(op->id, sid), nd->name, rpc_status_name(st), g->pos, quoted(q, message));
	switch (st) {
	case RPC_OUT_OF_RANGE:
	case RPC_INVALID_ARGUMENT:
		get_complete(op, st, message); /* every replica would say the same */
		return;
	case RPC_NOT_FOUND:
		g->res[nd->idx] = RES_NOT_FOUND;
		break;
	case RPC_DATA_LOSS:
		g->res[nd->idx] = RES_DATA_LOSS;
		break;
	case RPC_DEADLINE_EXCEEDED:
		if (call_bytes > 0) {
			/* a long stream outlived its budget while moving: go on where it was */
			get_start(op);
			return;
		}
		/* fall through */
	default:
		g->res[nd->idx] = RES_UNAVAILABLE;
		node_failed(nd, st, message);
		break;
	}
	g->cand_i++;
	get_start(op);
}

/* get_deliver - bytes to the caller now, or into the buffer while paused (a
 * paused read that buffered enough drops its store call: resumed later) */
static void get_deliver(struct blob_op *op, const uint8_t *data, size_t n)
{
	struct get_state *g = &op->k.get;

	if (!g->paused && evbuffer_get_length(g->buf) == 0) {
		g->cbs.on_data(data, n, op->arg);
		return;
	}
	evbuffer_add(g->buf, data, n);
	if (!g->paused) {
		op_kick(op);
	} else if (evbuffer_get_length(g->buf) > op->c->get_buffer && g->call.state == BC_RUNNING) {
		char sid[17];
		log_debug("blob read paused: store call dropped", "id=%s node=%s pos=%" PRIu64
			  " buffered=%zu", short_id(op->id, sid), g->call.node->name, g->pos,
			  evbuffer_get_length(g->buf));
		call_cancel(&g->call);
		stall_stop(op);
		g->suspended = true;
	}
}

static void get_on_message(struct rpc_ccall *rc, const uint8_t *msg, size_t len, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	struct blob_cluster *c = op->c;
	struct get_state *g = &op->k.get;
	struct blob_node *nd = call->node;
	uint64_t end;

	c_enter(c);
	Mail__Store__V1__GetResponse *r = mail__store__v1__get_response__unpack(NULL, len, msg);
	if (r == NULL) {
		uint64_t b = call->bytes;
		call_cancel(call);
		stall_stop(op);
		get_call_failed(op, nd, RPC_INTERNAL, "malformed GetResponse", b);
		goto out;
	}
	if (!call->got_first) {
		call->got_first = true;
		if (g->have_total && r->size != g->total) {
			uint64_t b = call->bytes;
			call_cancel(call);
			stall_stop(op);
			get_call_failed(op, nd, RPC_DATA_LOSS, "blob size differs between replicas", b);
			goto out;
		}
		g->have_total = true;
		g->total = r->size;
		if (!g->size_told) {
			g->size_told = true;
			if (g->cbs.on_size != NULL)
				g->cbs.on_size(g->total, op->arg);
			if (op->dead)
				goto out;
		}
	}
	if (r->data.len > 0) {
		get_end(op, &end);
		if (r->data.len > end - g->pos) {
			uint64_t b = call->bytes;
			call_cancel(call);
			stall_stop(op);
			get_call_failed(op, nd, RPC_INTERNAL, "more bytes than the range holds", b);
			goto out;
		}
		g->pos += r->data.len;
		call->bytes += r->data.len;
		get_deliver(op, r->data.data, r->data.len);
	}
	if (!op->dead && call->state == BC_RUNNING)
		stall_arm(op);
out:
	if (r != NULL)
		mail__store__v1__get_response__free_unpacked(r, NULL);
	c_leave(c);
}

static void get_on_done(struct rpc_ccall *rc, enum rpc_status st, const char *message, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	struct blob_cluster *c = op->c;
	struct get_state *g = &op->k.get;
	struct blob_node *nd = call->node;
	uint64_t bytes = call->bytes, end;
	bool got_first = call->got_first;

	c_enter(c);
	call_end(call);
	stall_stop(op);
	if (st == RPC_OK) {
		if (!got_first) {
			st = RPC_INTERNAL;
			message = "no GetResponse";
		} else if (get_end(op, &end) && g->pos < end) {
			st = RPC_DATA_LOSS;
			message = "stream ended before the range did";
		}
	}
	if (st == RPC_OK) {
		node_set_up(nd, true, "");
		g->served = nd->idx;
		get_complete(op, RPC_OK, "");
	} else {
		get_call_failed(op, nd, st, message, bytes);
	}
	c_leave(c);
}

/* get_stall_cb - no byte for stall_ms: that replica is treated as gone */
static void get_stall_cb(evutil_socket_t fd, short what, void *arg)
{
	struct blob_op *op = arg;
	struct blob_cluster *c = op->c;
	struct get_state *g = &op->k.get;

	c_enter(c);
	g->stall_on = false;
	if (!op->dead && g->call.state != BC_IDLE) {
		struct blob_node *nd = g->call.node;
		bool queued = g->call.state == BC_QUEUED;
		call_cancel(&g->call);
		if (queued) /* waited for a slot all this time: try the next replica */
			get_call_failed(op, nd, RPC_RESOURCE_EXHAUSTED, "no free slot on the node", 0);
		else
			get_call_failed(op, nd, RPC_DEADLINE_EXCEEDED, "read stream stalled", 0);
	}
	c_leave(c);
}

/* get_step - from the op's event: hand over buffered bytes, resume a
 * dropped call, or report the end */
static void get_step(struct blob_op *op)
{
	struct get_state *g = &op->k.get;

	while (!op->dead && !g->paused && evbuffer_get_length(g->buf) > 0) {
		size_t n = MAIL_MIN(evbuffer_get_length(g->buf), (size_t)RPC_CHUNK_SIZE);
		const uint8_t *p = evbuffer_pullup(g->buf, (ev_ssize_t)n);
		g->cbs.on_data(p, n, op->arg);
		evbuffer_drain(g->buf, n);
	}
	if (op->dead || g->paused)
		return;
	if (g->done) {
		op->user_done = true;
		g->cbs.on_done(op->st, op->st == RPC_OK ? "" : op->msg, op->arg);
		op_finish(op);
	} else if (g->suspended) {
		g->suspended = false;
		get_start(op);
	}
}

struct blob_op *blob_get(struct blob_cluster *c, const char *id, const char *const *nodes_hint,
			 uint64_t offset, uint64_t length, const struct blob_get_cbs *cbs,
			 void *arg)
{
	struct blob_op *op = op_new(c, OP_GET, NULL, arg);
	struct get_state *g = &op->k.get;
	size_t rank[BLOB_MAX_NODES];

	metric_inc(blob_m.get);
	g->cbs = *cbs;
	g->offset = g->pos = offset;
	g->length = length;
	g->served = g->last_node = SIZE_MAX;
	g->buf = evbuffer_new();
	g->cand = xcalloc(c->n, sizeof(*g->cand));
	g->expected = xcalloc(c->n, sizeof(*g->expected));
	g->res = xcalloc(c->n, sizeof(*g->res));
	evtimer_assign(&g->stall_ev, c->base, get_stall_cb, op);
	call_init(&g->call, op, &c->nodes[0], get_start_call);
	if (!blob_id_valid(id)) {
		get_complete(op, RPC_INVALID_ARGUMENT, "blob id is not 64 lowercase hex chars");
		return op;
	}
	memcpy(op->id, id, BLOB_ID_HEX_LEN + 1);
	rank_nodes(c, op->id, rank);
	bool *in = g->expected; /* reused below as the "already a candidate" set */
	if (nodes_hint != NULL) {
		for (size_t i = 0; nodes_hint[i] != NULL; i++) {
			struct blob_node *nd = node_find(c, nodes_hint[i]);
			if (nd == NULL) {
				log_debug("blob read: unknown node in placement", "node=%s", nodes_hint[i]);
				continue;
			}
			if (!in[nd->idx]) {
				in[nd->idx] = true;
				g->cand[g->n_cand++] = nd->idx;
			}
		}
	}
	size_t n_hint = g->n_cand;
	for (size_t i = 0; i < c->n; i++) {
		if (!in[rank[i]])
			g->cand[g->n_cand++] = rank[i];
	}
	/* who should hold it: the recorded placement, else the ideal placement */
	memset(g->expected, 0, c->n * sizeof(*g->expected));
	if (n_hint > 0) {
		for (size_t i = 0; i < n_hint; i++)
			g->expected[g->cand[i]] = true;
	} else {
		for (size_t i = 0; i < c->R; i++)
			g->expected[rank[i]] = true;
	}
	get_start(op);
	return op;
}

void blob_get_pause(struct blob_op *op)
{
	if (op != NULL && !op->dead && op->kind == OP_GET)
		op->k.get.paused = true;
}

void blob_get_resume(struct blob_op *op)
{
	if (op == NULL || op->dead || op->kind != OP_GET || !op->k.get.paused)
		return;
	op->k.get.paused = false;
	op_kick(op);
}

const char *blob_get_node(const struct blob_op *op)
{
	if (op == NULL || op->kind != OP_GET || op->k.get.call.state != BC_RUNNING)
		return NULL;
	return op->k.get.call.node->name;
}

unsigned blob_get_fallbacks(const struct blob_op *op)
{
	return op != NULL && op->kind == OP_GET ? op->k.get.fallbacks : 0;
}

/* ------------------------------------------------------------ copy */

static void copy_window(struct blob_op *op);
static void copy_put_on_message(struct rpc_ccall *rc, const uint8_t *msg, size_t len, void *arg);
static void copy_put_on_writable(struct rpc_ccall *rc, void *arg);
static void copy_put_on_done(struct rpc_ccall *rc, enum rpc_status st, const char *message, void *arg);
static const struct rpc_ccall_cbs copy_put_cbs = {
	.on_message = copy_put_on_message,
	.on_done = copy_put_on_done,
	.on_writable = copy_put_on_writable,
};

/* copy_end - the copy's outcome; reported from the op's event */
static void copy_end(struct blob_op *op, enum rpc_status st, const char *fmt, ...) ATTR_PRINTF(3, 4);
static void copy_end(struct blob_op *op, enum rpc_status st, const char *fmt, ...)
{
	va_list ap;
	if (op->k.copy.decided)
		return;
	op->k.copy.decided = true;
	call_cancel(&op->k.copy.get);
	call_cancel(&op->k.copy.put);
	op->st = st;
	va_start(ap, fmt);
	vsnprintf(op->msg, sizeof(op->msg), fmt, ap);
	va_end(ap);
	op_kick(op);
}

static void copy_get_on_message(struct rpc_ccall *rc, const uint8_t *msg, size_t len, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	struct blob_cluster *c = op->c;
	struct copy_state *cp = &op->k.copy;

	c_enter(c);
	Mail__Store__V1__GetResponse *r = mail__store__v1__get_response__unpack(NULL, len, msg);
	if (r == NULL) {
		copy_end(op, RPC_INTERNAL, "source %s: malformed GetResponse", cp->from->name);
		goto out;
	}
	if (!call->got_first) {
		call->got_first = true;
		if (cp->have_total && r->size != cp->total) {
			copy_end(op, RPC_DATA_LOSS, "source %s: size changed", cp->from->name);
			goto out;
		}
		if (!cp->have_total) {
			cp->have_total = true;
			cp->total = r->size;
			cp->win_end = MAIL_MIN(cp->win_end, cp->total);
			call_init(&cp->put, op, cp->to, NULL);
			cp->put.state = BC_RUNNING;
			cp->put.rc = rpc_client_call(cp->to->rpc, P_PUT, transfer_ms(c, cp->total),
						     &copy_put_cbs, &cp->put);
		}
	}
	if (r->data.len > cp->win_end - cp->pos) {
		copy_end(op, RPC_INTERNAL, "source %s: more bytes than asked for", cp->from->name);
		goto out;
	}
	if (r->data.len > 0 || !cp->put.first_sent) {
		Mail__Store__V1__PutRequest req = MAIL__STORE__V1__PUT_REQUEST__INIT;
		if (!cp->put.first_sent) {
			req.expected_id = op->id;
			req.size_hint = cp->total;
		}
		req.data = r->data;
		if (rpc_ccall_send_pb(cp->put.rc, &req.base) == 0) {
			cp->put.first_sent = true;
			cp->pos += r->data.len;
		}
	}
out:
	if (r != NULL)
		mail__store__v1__get_response__free_unpacked(r, NULL);
	c_leave(c);
}

static void copy_get_on_done(struct rpc_ccall *rc, enum rpc_status st, const char *message, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	struct blob_cluster *c = op->c;
	struct copy_state *cp = &op->k.copy;
	bool got_first = call->got_first;

	c_enter(c);
	call_end(call);
	if (st != RPC_OK) {
		node_failed(cp->from, st, message);
		copy_end(op, st, "source %s: %s", cp->from->name, message);
	} else if (!got_first) {
		copy_end(op, RPC_INTERNAL, "source %s: no GetResponse", cp->from->name);
	} else if (cp->pos < cp->win_end) {
		copy_end(op, RPC_DATA_LOSS, "source %s: stream ended early", cp->from->name);
	} else if (cp->pos >= cp->total) {
		rpc_ccall_close_send(cp->put.rc);
		cp->put_closed = true;
	} else if (rpc_ccall_queued(cp->put.rc) < RPC_CALL_HIGH_WATER) {
		copy_window(op);
	} else {
		cp->wait_writable = true; /* the target is slower: its on_writable asks for more */
		log_debug("blob copy waits for the target", "to=%s pos=%" PRIu64 " queued=%zu",
			  cp->to->name, cp->pos, rpc_ccall_queued(cp->put.rc));
	}
	c_leave(c);
}

static const struct rpc_ccall_cbs copy_get_cbs = {
	.on_message = copy_get_on_message,
	.on_done = copy_get_on_done,
};

static void copy_put_on_message(struct rpc_ccall *rc, const uint8_t *msg, size_t len, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	Mail__Store__V1__PutResponse *r = mail__store__v1__put_response__unpack(NULL, len, msg);
	if (r != NULL && r->id != NULL && strcmp(r->id, op->id) == 0 && r->size == op->k.copy.total) {
		op->k.copy.resp_ok = true;
		op->k.copy.existed = r->existed;
	}
	if (r != NULL)
		mail__store__v1__put_response__free_unpacked(r, NULL);
}

static void copy_put_on_writable(struct rpc_ccall *rc, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	struct blob_cluster *c = op->c;
	c_enter(c);
	if (op->k.copy.wait_writable && !op->k.copy.decided) {
		op->k.copy.wait_writable = false;
		copy_window(op);
	}
	c_leave(c);
}

static void copy_put_on_done(struct rpc_ccall *rc, enum rpc_status st, const char *message, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	struct blob_cluster *c = op->c;
	struct copy_state *cp = &op->k.copy;

	c_enter(c);
	call_end(call);
	if (st == RPC_OK && cp->resp_ok && cp->put_closed) {
		node_set_up(cp->to, true, "");
		copy_end(op, RPC_OK, "%s", "");
	} else {
		if (st == RPC_OK) {
			st = RPC_INTERNAL;
			message = "no valid PutResponse";
		}
		node_failed(cp->to, st, message);
		copy_end(op, st, "target %s: %s", cp->to->name, message);
	}
	c_leave(c);
}

/* copy_window - ask the source for the next range */
static void copy_window(struct blob_op *op)
{
	struct blob_cluster *c = op->c;
	struct copy_state *cp = &op->k.copy;
	Mail__Store__V1__GetRequest req = MAIL__STORE__V1__GET_REQUEST__INIT;

	uint64_t len = cp->have_total ? MAIL_MIN((uint64_t)BLOB_COPY_WINDOW, cp->total - cp->pos)
				      : BLOB_COPY_WINDOW;
	cp->win_end = cp->pos + len;
	req.id = op->id;
	req.offset = cp->pos;
	req.length = len;
	call_init(&cp->get, op, cp->from, NULL);
	cp->get.state = BC_RUNNING;
	cp->get.rc = rpc_client_unary_pb(cp->from->rpc, P_GET, transfer_ms(c, len), &req.base,
					 &copy_get_cbs, &cp->get);
}

/* copy_begin - a copy gets its turn */
static void copy_begin(struct blob_op *op)
{
	struct blob_cluster *c = op->c;
	struct copy_state *cp = &op->k.copy;

	cp->started = true;
	c->copies_running++;
	if (!cp->from->up || !cp->to->up) {
		copy_end(op, RPC_UNAVAILABLE, "store node %s is down",
			 !cp->from->up ? cp->from->name : cp->to->name);
		return;
	}
	copy_window(op);
}

/* copy_pump - start waiting copies while there is room */
static void copy_pump(struct blob_cluster *c)
{
	while (!c->freeing && c->copies_running < c->max_copies && c->cq_head != NULL) {
		struct blob_op *op = c->cq_head;
		c->cq_head = op->k.copy.qnext;
		if (c->cq_head == NULL)
			c->cq_tail = NULL;
		op->k.copy.qnext = NULL;
		op->k.copy.queued = false;
		c->copies_queued--;
		copy_begin(op);
	}
}

/* copy_new - a copy op, started now or queued; false when the queue is full */
static bool copy_new(struct blob_cluster *c, const char *id, struct blob_node *from,
		     struct blob_node *to, blob_result_cb *cb, void *arg, struct blob_op **op_r)
{
	struct blob_op *op = op_new(c, OP_COPY, id, arg);
	struct copy_state *cp = &op->k.copy;

	*op_r = op;
	cp->cb = cb;
	cp->from = from;
	cp->to = to;
	call_init(&cp->get, op, from, NULL);
	call_init(&cp->put, op, to, NULL);
	if (c->copies_running < c->max_copies) {
		copy_begin(op);
		return true;
	}
	if (c->copies_queued >= c->max_copy_queue)
		return false;
	cp->queued = true;
	if (c->cq_tail != NULL)
		c->cq_tail->k.copy.qnext = op;
	else
		c->cq_head = op;
	c->cq_tail = op;
	c->copies_queued++;
	return true;
}

/* copy_report - from the op's event: the caller's callback, or a repair's accounting */
static void copy_report(struct blob_op *op)
{
	struct blob_cluster *c = op->c;
	struct copy_state *cp = &op->k.copy;
	char sid[17];

	if (cp->cb == NULL) {
		if (op->st == RPC_OK) {
			metric_inc(blob_m.repair);
			log_info("blob repaired", "id=%s from=%s to=%s size=%" PRIu64,
				 short_id(op->id, sid), cp->from->name, cp->to->name, cp->total);
			if (c->hook != NULL)
				c->hook(op->id, cp->to->name, c->hook_arg);
		} else {
			metric_inc(blob_m.repair_failed);
			char q[160];
			log_warn("blob repair failed", "id=%s from=%s to=%s status=%s err=%s",
				 short_id(op->id, sid), cp->from->name, cp->to->name,
				 rpc_status_name(op->st), quoted(q, op->msg));
		}
	} else {
		struct blob_result res = {
			.status = op->st,
			.message = op->st == RPC_OK ? "" : op->msg,
			.exists = op->st == RPC_OK && cp->existed,
			.size = cp->total,
		};
		cp->cb(&res, op->arg);
	}
	op_finish(op);
}

static void repair_start(struct blob_cluster *c, const char *id, struct blob_node *from,
			 struct blob_node *to, const char *why)
{
	char sid[17];
	struct blob_op *op;

	for (struct blob_op *o = c->ops_head; o != NULL; o = o->next) {
		if (o->kind == OP_COPY && o->k.copy.cb == NULL && o->k.copy.to == to &&
		    strcmp(o->id, id) == 0)
			return; /* already on its way */
	}
	log_info("blob repair", "id=%s from=%s to=%s reason=\"%s\"", short_id(id, sid), from->name,
		 to->name, why);
	if (!copy_new(c, id, from, to, NULL, NULL, &op)) {
		metric_inc(blob_m.repair_failed);
		log_warn("blob repair dropped: too many waiting", "id=%s to=%s", sid, to->name);
		op->user_done = true;
		op_finish(op);
		return;
	}
	op->background = true;
	c->background++;
}

struct blob_op *blob_copy(struct blob_cluster *c, const char *id, const char *from_node,
			  const char *to_node, blob_result_cb *cb, void *arg)
{
	struct blob_node *from = node_find(c, from_node), *to = node_find(c, to_node);
	struct blob_op *op;

	if (!blob_id_valid(id) || from == NULL || to == NULL || from == to) {
		op = op_new(c, OP_COPY, NULL, arg);
		op->k.copy.cb = cb;
		op->k.copy.from = from != NULL ? from : &c->nodes[0];
		op->k.copy.to = to != NULL ? to : &c->nodes[0];
		call_init(&op->k.copy.get, op, op->k.copy.from, NULL);
		call_init(&op->k.copy.put, op, op->k.copy.to, NULL);
		copy_end(op, RPC_INVALID_ARGUMENT, "%s",
			 !blob_id_valid(id) ? "blob id is not 64 lowercase hex chars"
			 : from == to && from != NULL ? "source and target are the same node"
			 : "unknown store node");
		return op;
	}
	if (!copy_new(c, id, from, to, cb, arg, &op))
		copy_end(op, RPC_RESOURCE_EXHAUSTED, "%s", "too many copies waiting");
	return op;
}

/* ------------------------------------------------------------ stat, delete, list */

static void unary_on_message(struct rpc_ccall *rc, const uint8_t *msg, size_t len, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	struct unary_state *u = &op->k.un;
	const ProtobufCMessageDescriptor *d =
		op->kind == OP_STAT ? &mail__store__v1__stat_response__descriptor
		: op->kind == OP_DELETE ? &mail__store__v1__delete_response__descriptor
		: &mail__store__v1__list_response__descriptor;
	if (u->resp != NULL)
		return; /* one response message per call; ignore extras */
	u->resp = protobuf_c_message_unpack(d, NULL, len, msg);
}

static void unary_on_done(struct rpc_ccall *rc, enum rpc_status st, const char *message, void *arg)
{
	struct blob_call *call = arg;
	struct blob_op *op = call->op;
	struct blob_cluster *c = op->c;
	struct unary_state *u = &op->k.un;

	c_enter(c);
	call_end(call);
	if (st == RPC_OK && u->resp == NULL) {
		st = RPC_INTERNAL;
		message = "no valid response";
	}
	if (st == RPC_OK && op->kind == OP_LIST) {
		Mail__Store__V1__ListResponse *lr = (Mail__Store__V1__ListResponse *)u->resp;
		bool ok = lr->n_blobs <= (u->limit ? u->limit : 1000);
		for (size_t i = 0; ok && i < lr->n_blobs; i++)
			ok = lr->blobs[i] != NULL && blob_id_valid(lr->blobs[i]->id);
		if (!ok) {
			st = RPC_INTERNAL;
			message = "malformed ListResponse";
		}
	}
	if (st == RPC_OK)
		node_set_up(call->node, true, "");
	else
		node_failed(call->node, st, message);
	op->st = st;
	snprintf(op->msg, sizeof(op->msg), "%s", message);
	op_kick(op);
	c_leave(c);
}

static const struct rpc_ccall_cbs unary_cbs = {
	.on_message = unary_on_message,
	.on_done = unary_on_done,
};

static void unary_start_call(struct blob_call *call)
{
	struct blob_op *op = call->op;
	struct blob_cluster *c = op->c;
	struct rpc_client *rpc = call->node->rpc;

	if (op->kind == OP_STAT) {
		Mail__Store__V1__StatRequest req = MAIL__STORE__V1__STAT_REQUEST__INIT;
		req.id = op->id;
		call->rc = rpc_client_unary_pb(rpc, P_STAT, c->call_timeout_ms, &req.base, &unary_cbs, call);
	} else if (op->kind == OP_DELETE) {
		Mail__Store__V1__DeleteRequest req = MAIL__STORE__V1__DELETE_REQUEST__INIT;
		req.id = op->id;
		call->rc = rpc_client_unary_pb(rpc, P_DELETE, c->call_timeout_ms, &req.base, &unary_cbs, call);
	} else {
		Mail__Store__V1__ListRequest req = MAIL__STORE__V1__LIST_REQUEST__INIT;
		req.after = op->k.un.after;
		req.limit = op->k.un.limit;
		call->rc = rpc_client_unary_pb(rpc, P_LIST, c->call_timeout_ms, &req.base, &unary_cbs, call);
	}
}

/* unary_new - one call on one node, or an early error reported from the loop */
static struct blob_op *unary_new(struct blob_cluster *c, enum op_kind kind, const char *node,
				 const char *id, void *arg)
{
	struct blob_node *nd = node_find(c, node);
	struct blob_op *op = op_new(c, kind, NULL, arg);

	call_init(&op->k.un.call, op, nd != NULL ? nd : &c->nodes[0], unary_start_call);
	if (kind != OP_LIST && !blob_id_valid(id)) {
		op->st = RPC_INVALID_ARGUMENT;
		set_msg(op, "blob id is not 64 lowercase hex chars");
	} else if (nd == NULL) {
		op->st = RPC_INVALID_ARGUMENT;
		set_msg(op, "unknown store node");
	} else if (!nd->up) {
		op->st = RPC_UNAVAILABLE;
		set_msg(op, "store node %s is down", nd->name);
	} else {
		if (id != NULL)
			memcpy(op->id, id, BLOB_ID_HEX_LEN + 1);
		return op;
	}
	op_kick(op);
	return op;
}

/* unary_go - submit the call of a fresh unary op */
static void unary_go(struct blob_op *op)
{
	if (op->st != RPC_OK)
		return;
	if (!call_submit(&op->k.un.call)) {
		op->st = RPC_RESOURCE_EXHAUSTED;
		set_msg(op, "too many calls waiting for store node %s", op->k.un.call.node->name);
		op_kick(op);
	}
}

struct blob_op *blob_node_stat(struct blob_cluster *c, const char *node, const char *id,
			       blob_result_cb *cb, void *arg)
{
	struct blob_op *op = unary_new(c, OP_STAT, node, id, arg);
	op->k.un.u.cb = cb;
	unary_go(op);
	return op;
}

struct blob_op *blob_node_delete(struct blob_cluster *c, const char *node, const char *id,
				 blob_result_cb *cb, void *arg)
{
	struct blob_op *op = unary_new(c, OP_DELETE, node, id, arg);
	op->k.un.u.cb = cb;
	unary_go(op);
	return op;
}

struct blob_op *blob_node_list(struct blob_cluster *c, const char *node, const char *after,
			       unsigned limit, blob_list_cb *cb, void *arg)
{
	struct blob_op *op = unary_new(c, OP_LIST, node, NULL, arg);
	op->k.un.u.list_cb = cb;
	op->k.un.limit = MAIL_MIN(limit, BLOB_LIST_MAX);
	if (after != NULL && after[0] != '\0' && !blob_id_valid(after) && op->st == RPC_OK) {
		op->st = RPC_INVALID_ARGUMENT;
		set_msg(op, "after is not \"\" or a blob id");
		op_kick(op);
	}
	snprintf(op->k.un.after, sizeof(op->k.un.after), "%s", after != NULL && op->st == RPC_OK ? after : "");
	unary_go(op);
	return op;
}

/* unary_report - from the op's event: the caller's callback */
static void unary_report(struct blob_op *op)
{
	struct unary_state *u = &op->k.un;
	const char *msg = op->st == RPC_OK ? "" : op->msg;

	op->user_done = true;
	if (op->kind == OP_LIST) {
		struct blob_info *infos = NULL;
		size_t n = 0;
		bool more = false;
		if (op->st == RPC_OK) {
			Mail__Store__V1__ListResponse *lr = (Mail__Store__V1__ListResponse *)u->resp;
			infos = xcalloc(lr->n_blobs + 1, sizeof(*infos));
			for (n = 0; n < lr->n_blobs; n++) {
				infos[n].id = lr->blobs[n]->id;
				infos[n].size = lr->blobs[n]->size;
			}
			more = lr->more;
		}
		if (u->u.list_cb != NULL)
			u->u.list_cb(op->st, msg, infos, n, more, op->arg);
		free(infos);
	} else {
		struct blob_result res = { .status = op->st, .message = msg };
		if (op->st == RPC_OK && op->kind == OP_STAT) {
			Mail__Store__V1__StatResponse *sr = (Mail__Store__V1__StatResponse *)u->resp;
			res.exists = sr->exists;
			res.size = sr->size;
		} else if (op->st == RPC_OK) {
			res.exists = ((Mail__Store__V1__DeleteResponse *)u->resp)->existed;
		}
		if (u->u.cb != NULL)
			u->u.cb(&res, op->arg);
	}
	op_finish(op);
}

/* ------------------------------------------------------------ the op's event */

static void op_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	struct blob_op *op = arg;
	struct blob_cluster *c = op->c;

	c_enter(c);
	if (!op->dead) {
		switch (op->kind) {
		case OP_PUT:
			if (op->k.put.decided && !op->user_done)
				put_report(op);
			break;
		case OP_GET:
			get_step(op);
			break;
		case OP_COPY:
			copy_report(op);
			break;
		case OP_STAT:
		case OP_DELETE:
		case OP_LIST:
			unary_report(op);
			break;
		}
	}
	c_leave(c);
}
