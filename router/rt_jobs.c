/* rt_jobs.c - the router's background jobs (module rt_mod_jobs, slot 6):
 * placement bookkeeping, blob repair, blob GC and queue housekeeping.
 *
 * Who owns what. Every loop registers a copy hook on its own blob cluster; the
 * hook records late put acknowledgements and read repairs in blobs.nodes through
 * that loop's db pool (mail_blob_add_node: an idempotent array append) and owns
 * nothing else. The jobs themselves run on the MAIN loop only, with its db pool
 * and blob cluster; struct jobs (l->mod[6] of the main loop) owns every request
 * and blob operation they start and cancels them in loop_fini.
 *
 * Coordination: any router may run a job, exactly one does at a time, another
 * takes over when it dies. Each job has a lease row in job_leases (migration
 * 0002), renewed every JOBS_LEASE_RENEW_MS for JOBS_LEASE_MS by its holder
 * (rt->node_id) and taken over by anybody once expired. A row rather than
 * pg_try_advisory_lock: an advisory lock belongs to a session, and our pool
 * reconnects and multiplexes connections, so the lock would be lost (or kept)
 * with whichever connection ran the statement, invisibly to us; a lock on a
 * dedicated connection would need a blocking-free second connection type and
 * still leaves the question of what the holder does while that connection is
 * down. With a row the rule is simple and checkable: the holder works only until
 * (when it sent its last successful renewal) + JOBS_LEASE_MS - JOBS_LEASE_MARGIN_MS,
 * which is before the lease can expire in the database, whatever happened to the
 * connection; and every job statement re-checks the lease in the database itself
 * (mail_job_lease_valid), so a holder that lost its lease changes nothing. A router
 * killed with -9 loses its leases within JOBS_LEASE_MS and the others, retrying
 * every JOBS_LEASE_RENEW_MS, take over within ~13 s. A router stopped cleanly does
 * not release them (its main loop has ended before its modules are finalized):
 * the lease runs out the same way.
 *
 * Blob repair, two scans taking turns, bounded work per step (one page), copies
 * made by at most JOBS_REPAIR_PARALLEL blob_copy's at a time, no new scan until
 * the copies a page asked for are done:
 *  - placement scan: pages through blobs in id order (mail_job_repair_scan) for
 *    blobs in use whose recorded nodes include fewer than R live configured nodes
 *    (a node counts as live until it has been down for JOBS_NODE_DOWN_GRACE_MS,
 *    so a restart does not trigger a wave of copies), and copies each to the next
 *    live nodes in rendezvous order until R live copies exist. Recorded nodes that
 *    are down stay in blobs.nodes: they may come back with their copies, and the GC
 *    must delete those too. A pass runs when a node stops counting as live (it
 *    starts over if one was under way: the blobs it had passed may hold copies on
 *    that node), when the lease is taken, and otherwise every JOBS_REPAIR_PASS_MS
 *    as a safety net - not over and over: on a store of millions of blobs a pass
 *    is minutes of database reads.
 *  - verification: pages through one node's own List (ascending ids) and compares
 *    it with the blobs the database says it holds in the same id range
 *    (mail_job_verify_page); each recorded copy the node does not have is copied
 *    back to it from another holder. This is how a node that comes back empty
 *    (disk replaced) gets its copies back; a node seen coming back up, or seen
 *    answering as a new process (a restart no probe saw as downtime:
 *    blob_node_restarts), is verified first, at full speed. Every live node is re-verified every JOBS_VERIFY_PASS_MS
 *    (a scrub for copies lost while the node ran), a page every
 *    JOBS_VERIFY_PAGE_GAP_MS at most.
 *  Sources are the live recorded holders first, then the other live nodes (the
 *  hook may have missed one); a source without the blob fails fast and the next
 *  is tried. A made copy is recorded with mail_blob_add_node.
 *  Metrics: repair_copies_total (copies made), repair_failed_total,
 *  repair_missing (copies known missing: waiting, running, or failed since the
 *  current placement pass began).
 *
 * Blob GC (two-phase, see 0002_jobs.sql): claims blobs unreferenced for longer
 * than blob_gc_grace (mail_job_blob_gc_claim; while a claim stands no new
 * reference can be taken), deletes each from every live node (recorded or not:
 * failed puts leave unrecorded copies), then removes the row only if it is
 * still unreferenced and still under that claim (mail_job_blob_gc_finish, the
 * same statement checks and deletes). A recorded holder that is down keeps the
 * row (retried after JOBS_GC_RETRY_MS) until it is back or leaves the
 * configuration. No delete is sent later than JOBS_GC_DELETE_WINDOW_MS after its
 * claim (claims go stale after 5 minutes). 0001's mail_blob_gc (row first,
 * bodies after) is not used: a delivery of the same bytes in between would lose
 * its body.
 *
 * Housekeeping: mail_housekeep (old delivery tokens, expired maildrop locks,
 * stale auth failures) every JOBS_HOUSEKEEP_MS, and at once on taking the lease.
 * Under the same lease, expunged-row pruning (0007_prune.sql): the QRESYNC rows of
 * table expunged older than the retention (config expunged_retention, 30 days)
 * are deleted, a pass over the mailboxes that have such rows at most every
 * JOBS_PRUNE_PASS_MS (and at once on taking the lease), in steps of at most
 * JOBS_PRUNE_MAILBOXES mailboxes and JOBS_PRUNE_BATCH rows, one after the other.
 * The statement records per mailbox the highest modseq it deleted, so that a
 * QRESYNC client older than that still gets every vanished uid (as a superset);
 * it skips a mailbox whose row is locked rather than wait, and the cursor (a
 * mailbox id) is ours only: a new tenure starts a new pass.
 * Metric: expunged_pruned_total. */
#include "lib/common.h"
#include "router/router.h"
#include "lib/config.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/xalloc.h"
#include <event2/event.h>
#include <inttypes.h>
#include <stdlib.h>
#include <time.h>

#define JOBS_SLOT 6
#define JOBS_LEASE_MS 10000             /* a lease lives this long unless renewed */
#define JOBS_LEASE_RENEW_MS 3000        /* renew (or try to take over) this often */
#define JOBS_LEASE_MARGIN_MS 1000       /* stop working this long before it could lapse */
#define JOBS_LEASE_TIMEOUT_MS 2500      /* deadline of one renewal */
#define JOBS_TICK_MS 500                /* the scheduler looks at every job this often */
#define JOBS_NODE_DOWN_GRACE_MS 10000   /* a down node counts as lost after this long */
#define JOBS_REPAIR_PAGE 500            /* blobs per placement scan step */
#define JOBS_REPAIR_PASS_MS 600000      /* a placement pass at least this often (and on
					 * a node lost, and on taking the lease) */
#define JOBS_REPAIR_PAGE_GAP_MS 50      /* between pages of one pass: at most 10,000 rows/s,
					 * so a pass over millions of blobs is a steady
					 * trickle, not a full-speed scan every 5 s */
#define JOBS_VERIFY_PAGE 1000           /* ids per verification step */
#define JOBS_VERIFY_PASS_MS 3600000     /* a node's scrub pass this often (and on its return) */
#define JOBS_VERIFY_PAGE_GAP_MS 100     /* between pages of a scrub pass: at most 10,000 ids/s */
#define JOBS_REPAIR_PARALLEL 8          /* copies running at once */
#define JOBS_GC_BATCH 100               /* blobs claimed per GC step */
#define JOBS_GC_PARALLEL 8              /* claimed blobs being deleted at once */
#define JOBS_GC_INTERVAL_MIN_MS 500     /* GC steps: grace / 4 within these bounds */
#define JOBS_GC_INTERVAL_MAX_MS 30000
#define JOBS_GC_DELETE_WINDOW_MS 60000  /* no node delete later than this after the claim */
#define JOBS_GC_RETRY_MS 60000          /* a blob whose copies could not all go: retry after */
#define JOBS_HOUSEKEEP_MS 60000         /* housekeeping interval */
#define JOBS_PRUNE_PASS_MS 3600000       /* a new expunged-pruning pass at most this often */
#define JOBS_PRUNE_MAILBOXES 500         /* mailboxes visited per pruning step */
#define JOBS_PRUNE_BATCH 10000           /* expunged rows deleted per pruning step */
#define JOBS_CLAIM_MAX 40               /* a GC claim's text */

enum jobs_job { JOB_REPAIR, JOB_GC, JOB_HOUSEKEEP, JOB_COUNT };
static const char *const jobs_names[JOB_COUNT] = { "blob_repair", "blob_gc", "housekeep" };
#define JOBS_ARRAY "{\"blob_repair\",\"blob_gc\",\"housekeep\"}"

/* node-name text arrays: every configured name quoted */
#define JOBS_NAMES_TEXT (BLOB_MAX_NODES * (BLOB_NODE_NAME_MAX + 3) + 3)

struct jobs;

struct jobs_lease {
	bool held;              /* we hold it, as far as we know */
	int64_t until_ms;       /* monotonic: stop working then unless renewed */
	struct metric *m_held;
	struct metric *m_steps;
};

/* one copy the repair job wants made */
struct jobs_task {
	struct jobs_task *prev, *next;
	struct jobs *j;
	char id[BLOB_ID_HEX_LEN + 1];
	const char *why;
	uint16_t target;
	uint16_t src[BLOB_MAX_NODES];
	uint16_t n_src, next_src;
	bool started;
	struct blob_op *op;
	struct db_request *req;
};

struct jobs_gblob;
/* one node delete of a claimed blob */
struct jobs_gdel {
	struct jobs_gblob *g;
	uint16_t node;
	struct blob_op *op;
};

/* one blob the GC claimed */
struct jobs_gblob {
	struct jobs_gblob *prev, *next;
	struct jobs *j;
	char id[BLOB_ID_HEX_LEN + 1];
	char claim[JOBS_CLAIM_MAX];
	uint64_t recorded;      /* configured nodes the row names */
	uint64_t kept;          /* recorded nodes that may still hold a copy */
	int64_t claimed_ms;
	unsigned outstanding;
	bool started;
	struct db_request *req;
	struct jobs_gdel *dels; /* one per configured node */
};

struct jobs {
	struct router *rt;
	struct rt_loop *l;
	struct blob_cluster *c;
	struct db_pool *db;
	struct event *tick_ev, *kick_ev;
	size_t n_nodes;
	unsigned replicas;

	/* leases */
	struct db_request *lease_req;
	bool lease_tried;
	int64_t lease_sent_ms;
	unsigned lease_errors;
	struct jobs_lease lease[JOB_COUNT];

	/* node health as the jobs see it */
	int64_t down_since[BLOB_MAX_NODES];     /* 0: up */
	uint64_t verify_first;                  /* came back up: verify next */
	uint64_t lost;                          /* no longer live: a placement pass was started */
	unsigned restarts[BLOB_MAX_NODES];      /* blob_node_restarts as last seen */

	/* repair */
	struct db_request *scan_req;
	struct blob_op *list_op;
	bool verify_turn;
	char a_cursor[BLOB_ID_HEX_LEN + 1];
	bool a_in_pass;
	int64_t a_pass_start;
	int64_t a_next_page;            /* the pass's next page not before this */
	bool a_restart;                 /* a node was lost: a new pass from the start */
	size_t v_node;
	bool v_in_pass;
	bool v_urgent;                  /* the pass of a node back up: no page gap */
	int64_t v_next_page;
	char v_cursor[BLOB_ID_HEX_LEN + 1];
	int64_t v_pass_start[BLOB_MAX_NODES];
	char (*v_listed)[BLOB_ID_HEX_LEN + 1];
	size_t n_listed;
	bool v_to_end;
	char v_upto[BLOB_ID_HEX_LEN + 1];
	struct jobs_task *tasks_head, *tasks_tail, *tasks_pending;
	size_t n_tasks, n_running;
	unsigned failed_pass;

	/* GC */
	int64_t grace_ms, gc_interval_ms, gc_next_ms;
	struct db_request *gc_req;
	struct jobs_gblob *gc_head, *gc_tail;
	size_t gc_n, gc_active;
	unsigned gc_deleted, gc_kept, gc_lost;

	/* housekeeping */
	struct db_request *hk_req;
	int64_t hk_next_ms;
	/* expunged pruning */
	int64_t expunged_keep_ms;
	struct db_request *pr_req;
	int64_t pr_next_ms;
	char pr_cursor[24];     /* last mailbox id visited this pass ("0": none yet) */
	long long pr_pass_rows;
};

static struct {
	struct metric *repair_copies, *repair_failed, *repair_missing;
	struct metric *gc_deleted, *gc_kept, *housekeep_rows, *placement_recorded;
	struct metric *expunged_pruned;
} jobs_m;

static void jobs_kick(struct jobs *j);

/* ------------------------------------------------------------ helpers */

static int64_t jobs_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* jobs_quote_msg - a database or store message, safe for a log value */
static const char *jobs_quote_msg(char buf[200], const char *msg)
{
	if (msg == NULL)
		msg = "";
	return log_quote(buf, 200, msg, strlen(msg));
}

static const char *jobs_short(const char *id, char buf[17])
{
	snprintf(buf, 17, "%.16s", id);
	return buf;
}

/* jobs_held - may job k work now? */
static bool jobs_held(const struct jobs *j, enum jobs_job k, int64_t now)
{
	return j->lease[k].held && now < j->lease[k].until_ms;
}

static const char *jobs_node(const struct jobs *j, size_t i)
{
	return blob_node_name(j->c, i);
}

/* jobs_node_index - a configured node's index, -1 if it is not configured */
static int jobs_node_index(const struct jobs *j, const char *name, size_t len)
{
	for (size_t i = 0; i < j->n_nodes; i++) {
		const char *n = jobs_node(j, i);
		if (strlen(n) == len && memcmp(n, name, len) == 0)
			return (int)i;
	}
	return -1;
}

static bool jobs_node_up(const struct jobs *j, size_t i)
{
	return blob_node_up(j->c, jobs_node(j, i));
}

/* jobs_node_live - up, or down for less than the grace: still counts as a copy */
static bool jobs_node_live(const struct jobs *j, size_t i, int64_t now)
{
	return j->down_since[i] == 0 || now - j->down_since[i] < JOBS_NODE_DOWN_GRACE_MS;
}

/* jobs_parse_nodes - a text[] as PostgreSQL prints it ({a,b} / {"a","b"}) to the
 * indexes of the configured nodes it names, in order, each once; unknown or
 * malformed names are skipped. Returns how many; *mask_r gets them as bits. */
static size_t jobs_parse_nodes(const struct jobs *j, const char *s, uint16_t *out, size_t max,
			       uint64_t *mask_r)
{
	size_t n = 0;
	uint64_t mask = 0;
	size_t len = strlen(s);

	*mask_r = 0;
	if (len < 2 || s[0] != '{' || s[len - 1] != '}')
		return 0;
	const char *p = s + 1, *end = s + len - 1;
	while (p < end) {
		char name[BLOB_NODE_NAME_MAX + 1];
		size_t k = 0;
		bool quoted = *p == '"', overlong = false;
		if (quoted)
			p++;
		while (p < end && (quoted ? *p != '"' : *p != ',')) {
			if (quoted && *p == '\\' && p + 1 < end)
				p++;
			if (k < BLOB_NODE_NAME_MAX)
				name[k++] = *p;
			else
				overlong = true;
			p++;
		}
		if (quoted && p < end)
			p++; /* the closing quote */
		while (p < end && *p != ',')
			p++;
		if (p < end)
			p++; /* the comma */
		int idx = overlong ? -1 : jobs_node_index(j, name, k);
		if (idx >= 0 && !(mask & (1ull << idx)) && n < max) {
			mask |= 1ull << idx;
			out[n++] = (uint16_t)idx;
		}
	}
	*mask_r = mask;
	return n;
}

/* jobs_names_text - the nodes of mask as a text[] literal */
static const char *jobs_names_text(const struct jobs *j, uint64_t mask, char *buf, size_t size)
{
	size_t o = 0;
	buf[o++] = '{';
	for (size_t i = 0; i < j->n_nodes; i++) {
		if (!(mask & (1ull << i)))
			continue;
		int w = snprintf(buf + o, size - o, "%s\"%s\"", o > 1 ? "," : "", jobs_node(j, i));
		if (w < 0 || (size_t)w >= size - o)
			log_panic("node list does not fit", "size=%zu", size);
		o += (size_t)w;
	}
	buf[o++] = '}';
	buf[o] = '\0';
	return buf;
}

static int jobs_popcount(uint64_t m)
{
	return __builtin_popcountll(m);
}

/* ------------------------------------------------------------ placement hook (every loop) */

static void jobs_hook_done(const struct db_result *r, void *arg)
{
	char q[200];
	if (r->status != DB_OK) {
		log_info("blob placement not recorded", "status=%d error=%s", (int)r->status,
			 jobs_quote_msg(q, r->message));
		return;
	}
	if (PQntuples(r->res) == 1 && strcmp(PQgetvalue(r->res, 0, 0), "t") == 0)
		metric_inc(jobs_m.placement_recorded);
}

/* jobs_copy_hook - a copy nobody asked for (late put ack, read repair): record it */
static void jobs_copy_hook(const char *id, const char *node, void *arg)
{
	struct rt_loop *l = arg;
	const char *v[2] = { id, node };
	db_exec(l->db, "jobs_add_node", 2, v, NULL, NULL, 0, jobs_hook_done, NULL);
}

/* ------------------------------------------------------------ repair: tasks */

static void jobs_missing_update(struct jobs *j)
{
	metric_set(jobs_m.repair_missing, (double)(j->n_tasks + j->failed_pass));
}

/* task_free - unlink and free (never started ones too) */
static void task_free(struct jobs_task *t)
{
	struct jobs *j = t->j;
	if (j->tasks_pending == t)
		j->tasks_pending = t->next;
	if (t->prev != NULL)
		t->prev->next = t->next;
	else
		j->tasks_head = t->next;
	if (t->next != NULL)
		t->next->prev = t->prev;
	else
		j->tasks_tail = t->prev;
	if (t->started)
		j->n_running--;
	j->n_tasks--;
	blob_op_cancel(&t->op);
	db_request_cancel(&t->req);
	free(t);
	jobs_missing_update(j);
}

/* task_add - queue a copy of id to node target from one of src */
static void task_add(struct jobs *j, const char *id, uint16_t target, const uint16_t *src,
		     size_t n_src, const char *why)
{
	struct jobs_task *t = XNEW(struct jobs_task);
	t->j = j;
	memcpy(t->id, id, BLOB_ID_HEX_LEN + 1);
	t->target = target;
	t->why = why;
	for (size_t i = 0; i < n_src; i++)
		if (src[i] != target)
			t->src[t->n_src++] = src[i];
	t->prev = j->tasks_tail;
	if (j->tasks_tail != NULL)
		j->tasks_tail->next = t;
	else
		j->tasks_head = t;
	j->tasks_tail = t;
	if (j->tasks_pending == NULL)
		j->tasks_pending = t;
	j->n_tasks++;
	jobs_missing_update(j);
}

/* task_fail - no source could give it: the copy stays missing this pass */
static void task_fail(struct jobs_task *t, const char *why)
{
	char sid[17], q[200];
	struct jobs *j = t->j;
	j->failed_pass++;
	metric_inc(jobs_m.repair_failed);
	log_warn("blob repair failed", "id=%s to=%s reason=\"%s\" error=%s", jobs_short(t->id, sid),
		 jobs_node(j, t->target), t->why, jobs_quote_msg(q, why));
	task_free(t);
	jobs_kick(j);
}

static void task_try(struct jobs_task *t);

static void task_record_done(const struct db_result *r, void *arg)
{
	struct jobs_task *t = arg;
	struct jobs *j = t->j;
	char sid[17], q[200];
	t->req = NULL;
	if (r->status != DB_OK)
		log_warn("blob repair: placement not recorded", "id=%s node=%s error=%s",
			 jobs_short(t->id, sid), jobs_node(j, t->target), jobs_quote_msg(q, r->message));
	task_free(t);
	jobs_kick(j);
}

static void task_copy_done(const struct blob_result *res, void *arg)
{
	struct jobs_task *t = arg;
	struct jobs *j = t->j;
	char sid[17], q[200];
	uint16_t from = t->src[t->next_src - 1];

	t->op = NULL;
	if (res->status != RPC_OK) {
		log_info("blob repair copy failed", "id=%s from=%s to=%s status=%s error=%s",
			 jobs_short(t->id, sid), jobs_node(j, from), jobs_node(j, t->target),
			 rpc_status_name(res->status), jobs_quote_msg(q, res->message));
		task_try(t);
		return;
	}
	if (!res->exists)
		metric_inc(jobs_m.repair_copies);
	log_info("blob repaired", "id=%s from=%s to=%s size=%" PRIu64 " existed=%d reason=\"%s\"",
		 jobs_short(t->id, sid), jobs_node(j, from), jobs_node(j, t->target), res->size,
		 (int)res->exists, t->why);
	const char *v[2] = { t->id, jobs_node(j, t->target) };
	t->req = db_exec(j->db, "jobs_add_node", 2, v, NULL, NULL, 0, task_record_done, t);
}

/* task_try - copy from the next source, or give up */
static void task_try(struct jobs_task *t)
{
	struct jobs *j = t->j;
	while (t->next_src < t->n_src) {
		uint16_t from = t->src[t->next_src++];
		if (!jobs_node_up(j, from))
			continue;
		t->op = blob_copy(j->c, t->id, jobs_node(j, from), jobs_node(j, t->target),
				  task_copy_done, t);
		return;
	}
	task_fail(t, "no live copy could be read");
}

/* task_sources - live recorded holders first, then every other live node */
static size_t task_sources(const struct jobs *j, const char *id, const uint16_t *rec, size_t n_rec,
			   uint16_t *out)
{
	size_t n = 0;
	uint64_t seen = 0;
	for (size_t i = 0; i < n_rec; i++) {
		if (jobs_node_up(j, rec[i])) {
			out[n++] = rec[i];
			seen |= 1ull << rec[i];
		}
	}
	const char *names[BLOB_MAX_NODES];
	size_t k = blob_rank(j->c, id, true, names, BLOB_MAX_NODES);
	for (size_t i = 0; i < k; i++) {
		int idx = jobs_node_index(j, names[i], strlen(names[i]));
		if (idx >= 0 && !(seen & (1ull << idx))) {
			out[n++] = (uint16_t)idx;
			seen |= 1ull << idx;
		}
	}
	return n;
}

/* ------------------------------------------------------------ repair: placement scan */

/* repair_plan - a blob with fewer than R live recorded copies: copies to the next
 * live nodes in rendezvous order */
static void repair_plan(struct jobs *j, const char *id, const char *nodes_text, int64_t now)
{
	uint16_t rec[BLOB_MAX_NODES], src[BLOB_MAX_NODES];
	uint64_t rec_mask, live_mask = 0;
	size_t n_rec = jobs_parse_nodes(j, nodes_text, rec, BLOB_MAX_NODES, &rec_mask);
	for (size_t i = 0; i < n_rec; i++)
		if (jobs_node_live(j, rec[i], now))
			live_mask |= 1ull << rec[i];
	int need = (int)j->replicas - jobs_popcount(live_mask);
	if (need <= 0)
		return;
	size_t n_src = task_sources(j, id, rec, n_rec, src);
	const char *names[BLOB_MAX_NODES];
	size_t k = blob_rank(j->c, id, true, names, BLOB_MAX_NODES);
	for (size_t i = 0; i < k && need > 0; i++) {
		int idx = jobs_node_index(j, names[i], strlen(names[i]));
		if (idx < 0 || (live_mask & (1ull << idx)))
			continue;
		task_add(j, id, (uint16_t)idx, src, n_src, "under-replicated");
		need--;
	}
	if (need > 0) {
		char sid[17];
		j->failed_pass += (unsigned)need;
		jobs_missing_update(j);
		log_debug("blob under-replicated, no node to copy to", "id=%s missing=%d",
			  jobs_short(id, sid), need);
	}
}

static void scan_a_done(const struct db_result *r, void *arg)
{
	struct jobs *j = arg;
	char q[200];
	int64_t now = jobs_now_ms();
	j->scan_req = NULL;
	if (r->status != DB_OK) {
		log_info("blob repair scan failed", "error=%s", jobs_quote_msg(q, r->message));
		return;
	}
	bool have_last = false;
	size_t found = j->n_tasks;
	for (int i = 0; i < PQntuples(r->res); i++) {
		const char *id = PQgetvalue(r->res, i, 0);
		if (!blob_id_valid(id))
			continue;
		if (strcmp(PQgetvalue(r->res, i, 3), "t") == 0) {
			memcpy(j->a_cursor, id, BLOB_ID_HEX_LEN + 1);
			have_last = true;
		} else {
			repair_plan(j, id, PQgetvalue(r->res, i, 2), now);
		}
	}
	if (j->n_tasks > found)
		log_info("blob repair: under-replicated blobs found", "copies=%zu", j->n_tasks - found);
	if (!have_last) {
		log_debug("blob repair: placement pass done", "failed=%u", j->failed_pass);
		j->a_cursor[0] = '\0';
		j->a_in_pass = false;
	}
	jobs_kick(j);
}

/* scan_a_start - the next page of the placement scan; false when not due */
static bool scan_a_start(struct jobs *j, int64_t now)
{
	if (j->a_restart) {
		j->a_restart = false;
		j->a_in_pass = false;
		j->a_pass_start = now - JOBS_REPAIR_PASS_MS;
	}
	if (j->a_in_pass && now < j->a_next_page) {
		int64_t ms = j->a_next_page - now;
		struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
		event_add(j->kick_ev, &tv);
		return false;
	}
	if (!j->a_in_pass) {
		if (now - j->a_pass_start < JOBS_REPAIR_PASS_MS)
			return false;
		j->a_in_pass = true;
		j->a_pass_start = now;
		j->a_cursor[0] = '\0';
		j->failed_pass = 0;
		jobs_missing_update(j);
	}
	uint64_t live = 0;
	for (size_t i = 0; i < j->n_nodes; i++)
		if (jobs_node_live(j, i, now))
			live |= 1ull << i;
	char live_text[JOBS_NAMES_TEXT], lim[16], r[16];
	snprintf(lim, sizeof(lim), "%d", JOBS_REPAIR_PAGE);
	snprintf(r, sizeof(r), "%u", j->replicas);
	const char *v[5] = { j->rt->node_id, j->a_cursor, lim,
			     jobs_names_text(j, live, live_text, sizeof(live_text)), r };
	metric_inc(j->lease[JOB_REPAIR].m_steps);
	j->a_next_page = now + JOBS_REPAIR_PAGE_GAP_MS;
	j->scan_req = db_exec(j->db, "jobs_repair_scan", 5, v, NULL, NULL, 0, scan_a_done, j);
	return true;
}

/* ------------------------------------------------------------ repair: verification */

static int jobs_cmp_id(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

static void verify_reset(struct jobs *j)
{
	free(j->v_listed);
	j->v_listed = NULL;
	j->n_listed = 0;
}

static void verify_db_done(const struct db_result *r, void *arg)
{
	struct jobs *j = arg;
	char q[200];
	size_t node = j->v_node;
	j->scan_req = NULL;
	if (r->status != DB_OK) {
		log_info("blob verification query failed", "node=%s error=%s", jobs_node(j, node),
			 jobs_quote_msg(q, r->message));
		verify_reset(j);
		return;
	}
	int rows = PQntuples(r->res);
	size_t missing = 0;
	const char *last = NULL;
	for (int i = 0; i < rows; i++) {
		const char *id = PQgetvalue(r->res, i, 0);
		if (!blob_id_valid(id))
			continue;
		last = id;
		if (bsearch(id, j->v_listed, j->n_listed, sizeof(*j->v_listed), jobs_cmp_id) != NULL)
			continue;
		uint16_t rec[BLOB_MAX_NODES], src[BLOB_MAX_NODES];
		uint64_t mask;
		size_t n_rec = jobs_parse_nodes(j, PQgetvalue(r->res, i, 1), rec, BLOB_MAX_NODES, &mask);
		size_t n_src = task_sources(j, id, rec, n_rec, src);
		task_add(j, id, (uint16_t)node, src, n_src, "missing on its node");
		missing++;
	}
	if (missing > 0)
		log_info("blob verification: recorded copies missing", "node=%s missing=%zu",
			 jobs_node(j, node), missing);
	if (rows >= JOBS_VERIFY_PAGE && last != NULL) {
		memcpy(j->v_cursor, last, BLOB_ID_HEX_LEN + 1);
	} else if (j->v_to_end) {
		log_debug("blob verification: node pass done", "node=%s", jobs_node(j, node));
		j->v_cursor[0] = '\0';
		j->v_in_pass = false;
	} else {
		memcpy(j->v_cursor, j->v_upto, BLOB_ID_HEX_LEN + 1);
	}
	verify_reset(j);
	jobs_kick(j);
}

static void verify_list_done(enum rpc_status st, const char *message, const struct blob_info *blobs,
			     size_t n, bool more, void *arg)
{
	struct jobs *j = arg;
	char q[200];
	const char *node = jobs_node(j, j->v_node);
	j->list_op = NULL;
	if (st != RPC_OK) {
		log_info("blob verification: list failed", "node=%s status=%s error=%s", node,
			 rpc_status_name(st), jobs_quote_msg(q, message));
		j->v_in_pass = false;
		j->v_cursor[0] = '\0';
		return;
	}
	/* the node's answer is untrusted: valid ids, strictly ascending, after the cursor */
	verify_reset(j);
	j->v_listed = xcalloc(n ? n : 1, sizeof(*j->v_listed));
	const char *prev = j->v_cursor;
	for (size_t i = 0; i < n; i++) {
		if (blobs[i].id == NULL || !blob_id_valid(blobs[i].id) || strcmp(blobs[i].id, prev) <= 0) {
			log_warn("blob verification: bad List page", "node=%s index=%zu", node, i);
			verify_reset(j);
			j->v_in_pass = false;
			j->v_cursor[0] = '\0';
			return;
		}
		memcpy(j->v_listed[i], blobs[i].id, BLOB_ID_HEX_LEN + 1);
		prev = j->v_listed[i];
	}
	j->n_listed = n;
	j->v_to_end = !more || n == 0;
	if (!j->v_to_end)
		memcpy(j->v_upto, j->v_listed[n - 1], BLOB_ID_HEX_LEN + 1);
	char lim[16];
	snprintf(lim, sizeof(lim), "%d", JOBS_VERIFY_PAGE);
	const char *v[5] = { j->rt->node_id, node, j->v_cursor, j->v_to_end ? NULL : j->v_upto, lim };
	j->scan_req = db_exec(j->db, "jobs_verify_page", 5, v, NULL, NULL, 0, verify_db_done, j);
}

/* verify_start - the next page of a node's verification; false when none is due */
static bool verify_start(struct jobs *j, int64_t now)
{
	if (j->v_in_pass && !jobs_node_up(j, j->v_node)) {
		j->v_in_pass = false;
		j->v_cursor[0] = '\0';
	}
	bool first_waiting = false;
	for (size_t i = 0; i < j->n_nodes; i++)
		first_waiting |= (j->verify_first & (1ull << i)) && jobs_node_up(j, i);
	if (j->v_in_pass && !j->v_urgent && now < j->v_next_page) {
		if (!first_waiting) {
			int64_t ms = j->v_next_page - now;
			struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
			event_add(j->kick_ev, &tv);
			return false;
		}
		/* a node came back meanwhile: the scrub starts over later, it goes first */
		j->v_in_pass = false;
		j->v_pass_start[j->v_node] = now - JOBS_VERIFY_PASS_MS;
	}
	if (!j->v_in_pass) {
		size_t pick = SIZE_MAX;
		for (size_t i = 0; i < j->n_nodes && pick == SIZE_MAX; i++)
			if ((j->verify_first & (1ull << i)) && jobs_node_up(j, i))
				pick = i;
		for (size_t k = 1; k <= j->n_nodes && pick == SIZE_MAX; k++) {
			size_t i = (j->v_node + k) % j->n_nodes;
			if (jobs_node_up(j, i) && now - j->v_pass_start[i] >= JOBS_VERIFY_PASS_MS)
				pick = i;
		}
		if (pick == SIZE_MAX)
			return false;
		j->v_urgent = (j->verify_first & (1ull << pick)) != 0;
		j->verify_first &= ~(1ull << pick);
		j->v_node = pick;
		j->v_in_pass = true;
		j->v_pass_start[pick] = now;
		j->v_cursor[0] = '\0';
		log_debug("blob verification: node pass starts", "node=%s", jobs_node(j, pick));
	}
	metric_inc(j->lease[JOB_REPAIR].m_steps);
	j->v_next_page = now + JOBS_VERIFY_PAGE_GAP_MS;
	j->list_op = blob_node_list(j->c, jobs_node(j, j->v_node), j->v_cursor, JOBS_VERIFY_PAGE,
				    verify_list_done, j);
	return true;
}

/* ------------------------------------------------------------ repair: driver */

/* repair_stop - the lease is gone: drop the scans and every copy */
static void repair_stop(struct jobs *j)
{
	db_request_cancel(&j->scan_req);
	blob_op_cancel(&j->list_op);
	verify_reset(j);
	while (j->tasks_head != NULL)
		task_free(j->tasks_head);
	j->a_in_pass = false;
	j->a_cursor[0] = '\0';
	j->v_in_pass = false;
	j->v_cursor[0] = '\0';
}

/* repair_run - start waiting copies; when none is left, the next scan step */
static void repair_run(struct jobs *j, int64_t now)
{
	while (j->tasks_pending != NULL && j->n_running < JOBS_REPAIR_PARALLEL) {
		struct jobs_task *t = j->tasks_pending;
		j->tasks_pending = t->next;
		t->started = true;
		j->n_running++;
		task_try(t); /* may free t */
	}
	if (j->n_tasks > 0 || j->scan_req != NULL || j->list_op != NULL)
		return;
	for (int turn = 0; turn < 2; turn++) {
		bool verify = j->verify_turn;
		j->verify_turn = !verify;
		if (verify ? verify_start(j, now) : scan_a_start(j, now))
			return;
	}
}

/* ------------------------------------------------------------ GC */

static void gc_blob_free(struct jobs_gblob *g)
{
	struct jobs *j = g->j;
	if (g->prev != NULL)
		g->prev->next = g->next;
	else
		j->gc_head = g->next;
	if (g->next != NULL)
		g->next->prev = g->prev;
	else
		j->gc_tail = g->prev;
	j->gc_n--;
	if (g->started)
		j->gc_active--;
	for (size_t i = 0; i < j->n_nodes; i++)
		blob_op_cancel(&g->dels[i].op);
	db_request_cancel(&g->req);
	free(g->dels);
	free(g);
	if (j->gc_n == 0 && j->gc_deleted + j->gc_kept + j->gc_lost > 0) {
		log_info("blob gc", "deleted=%u kept=%u lost=%u", j->gc_deleted, j->gc_kept, j->gc_lost);
		j->gc_deleted = j->gc_kept = j->gc_lost = 0;
	}
}

static void gc_finish_done(const struct db_result *r, void *arg)
{
	struct jobs_gblob *g = arg;
	struct jobs *j = g->j;
	char sid[17], q[200];
	g->req = NULL;
	if (r->status != DB_OK || PQntuples(r->res) != 1) {
		log_warn("blob gc: finish failed", "id=%s error=%s", jobs_short(g->id, sid),
			 jobs_quote_msg(q, r->status == DB_OK ? "no result" : r->message));
	} else {
		const char *what = PQgetvalue(r->res, 0, 0);
		if (strcmp(what, "deleted") == 0) {
			j->gc_deleted++;
			metric_inc(jobs_m.gc_deleted);
			log_debug("blob deleted", "id=%s", g->id);
		} else if (strcmp(what, "kept") == 0) {
			char names[JOBS_NAMES_TEXT];
			j->gc_kept++;
			metric_inc(jobs_m.gc_kept);
			log_info("blob gc: copies left on nodes that are down", "id=%s nodes=%s",
				 jobs_short(g->id, sid), jobs_names_text(j, g->kept, names, sizeof(names)));
		} else {
			j->gc_lost++;
			log_info("blob gc: claim lost, blob in use again", "id=%s", jobs_short(g->id, sid));
		}
	}
	gc_blob_free(g);
	jobs_kick(j);
}

/* gc_blob_finish - every delete answered: remove the row (or keep what is left) */
static void gc_blob_finish(struct jobs_gblob *g)
{
	struct jobs *j = g->j;
	char kept[JOBS_NAMES_TEXT], retry[16];
	snprintf(retry, sizeof(retry), "%d", JOBS_GC_RETRY_MS);
	const char *v[4] = { g->id, g->claim, jobs_names_text(j, g->kept, kept, sizeof(kept)), retry };
	g->req = db_exec(j->db, "jobs_gc_finish", 4, v, NULL, NULL, 0, gc_finish_done, g);
}

static void gc_del_done(const struct blob_result *res, void *arg)
{
	struct jobs_gdel *d = arg;
	struct jobs_gblob *g = d->g;
	struct jobs *j = g->j;
	char sid[17], q[200];
	d->op = NULL;
	g->outstanding--;
	if (res->status != RPC_OK) {
		if (g->recorded & (1ull << d->node))
			g->kept |= 1ull << d->node;
		log_info("blob gc: delete failed", "id=%s node=%s status=%s error=%s",
			 jobs_short(g->id, sid), jobs_node(j, d->node), rpc_status_name(res->status),
			 jobs_quote_msg(q, res->message));
	} else {
		log_debug("blob gc: deleted on node", "id=%s node=%s existed=%d", g->id,
			  jobs_node(j, d->node), (int)res->exists);
	}
	if (g->outstanding == 0)
		gc_blob_finish(g);
}

/* gc_blob_start - delete a claimed blob on every live node */
static void gc_blob_start(struct jobs_gblob *g, int64_t now)
{
	struct jobs *j = g->j;
	char sid[17];
	g->started = true;
	j->gc_active++;
	if (now - g->claimed_ms > JOBS_GC_DELETE_WINDOW_MS) {
		log_info("blob gc: claim too old, left for a later pass", "id=%s", jobs_short(g->id, sid));
		gc_blob_free(g);
		return;
	}
	for (size_t i = 0; i < j->n_nodes; i++) {
		bool recorded = (g->recorded & (1ull << i)) != 0;
		if (!jobs_node_up(j, i)) {
			if (recorded)
				g->kept |= 1ull << i;
			continue;
		}
		g->dels[i].g = g;
		g->dels[i].node = (uint16_t)i;
		g->outstanding++;
	}
	if (g->outstanding == 0) {
		gc_blob_finish(g);
		return;
	}
	for (size_t i = 0; i < j->n_nodes; i++)
		if (g->dels[i].g != NULL)
			g->dels[i].op = blob_node_delete(j->c, jobs_node(j, i), g->id, gc_del_done, &g->dels[i]);
}

static void gc_claim_done(const struct db_result *r, void *arg)
{
	struct jobs *j = arg;
	char q[200];
	int64_t now = jobs_now_ms();
	j->gc_req = NULL;
	j->gc_next_ms = now + j->gc_interval_ms;
	if (r->status != DB_OK) {
		log_info("blob gc: claim failed", "error=%s", jobs_quote_msg(q, r->message));
		return;
	}
	int rows = PQntuples(r->res);
	for (int i = 0; i < rows; i++) {
		const char *id = PQgetvalue(r->res, i, 0), *claim = PQgetvalue(r->res, i, 2);
		if (!blob_id_valid(id) || strlen(claim) >= JOBS_CLAIM_MAX)
			continue;
		struct jobs_gblob *g = XNEW(struct jobs_gblob);
		uint16_t rec[BLOB_MAX_NODES];
		g->j = j;
		memcpy(g->id, id, BLOB_ID_HEX_LEN + 1);
		snprintf(g->claim, sizeof(g->claim), "%s", claim);
		jobs_parse_nodes(j, PQgetvalue(r->res, i, 1), rec, BLOB_MAX_NODES, &g->recorded);
		g->claimed_ms = now;
		g->dels = xcalloc(j->n_nodes, sizeof(*g->dels));
		g->prev = j->gc_tail;
		if (j->gc_tail != NULL)
			j->gc_tail->next = g;
		else
			j->gc_head = g;
		j->gc_tail = g;
		j->gc_n++;
	}
	if (rows >= JOBS_GC_BATCH)
		j->gc_next_ms = now; /* more are due: go on at once */
	jobs_kick(j);
}

static void gc_stop(struct jobs *j)
{
	db_request_cancel(&j->gc_req);
	while (j->gc_head != NULL)
		gc_blob_free(j->gc_head);
}

/* gc_run - delete what was claimed; when all is done and it is time, claim more */
static void gc_run(struct jobs *j, int64_t now)
{
	for (struct jobs_gblob *g = j->gc_head, *next; g != NULL && j->gc_active < JOBS_GC_PARALLEL;
	     g = next) {
		next = g->next;
		if (!g->started)
			gc_blob_start(g, now); /* may free g */
	}
	if (j->gc_req != NULL || j->gc_n > 0 || now < j->gc_next_ms)
		return;
	char grace[24], lim[16];
	snprintf(grace, sizeof(grace), "%" PRId64, j->grace_ms);
	snprintf(lim, sizeof(lim), "%d", JOBS_GC_BATCH);
	const char *v[3] = { j->rt->node_id, grace, lim };
	metric_inc(j->lease[JOB_GC].m_steps);
	j->gc_req = db_exec(j->db, "jobs_gc_claim", 3, v, NULL, NULL, 0, gc_claim_done, j);
}

/* ------------------------------------------------------------ housekeeping */

static void hk_done(const struct db_result *r, void *arg)
{
	struct jobs *j = arg;
	char q[200];
	j->hk_req = NULL;
	if (r->status != DB_OK || PQntuples(r->res) != 1) {
		log_info("housekeeping failed", "error=%s",
			 jobs_quote_msg(q, r->status == DB_OK ? "no result" : r->message));
		j->hk_next_ms = jobs_now_ms() + JOBS_LEASE_RENEW_MS;
		return;
	}
	long long n = strtoll(PQgetvalue(r->res, 0, 0), NULL, 10);
	if (n > 0) {
		metric_add(jobs_m.housekeep_rows, (double)n);
		log_info("housekeeping", "removed=%lld", n);
	}
}

static void hk_run(struct jobs *j, int64_t now)
{
	if (j->hk_req != NULL || now < j->hk_next_ms)
		return;
	j->hk_next_ms = now + JOBS_HOUSEKEEP_MS;
	const char *v[1] = { j->rt->node_id };
	metric_inc(j->lease[JOB_HOUSEKEEP].m_steps);
	j->hk_req = db_exec(j->db, "jobs_housekeep", 1, v, NULL, NULL, 0, hk_done, j);
}

/* pr_done - one pruning step answered: go on at once, or the pass is over */
static void pr_done(const struct db_result *r, void *arg)
{
	struct jobs *j = arg;
	char q[200];
	int64_t now = jobs_now_ms();
	j->pr_req = NULL;
	if (r->status != DB_OK) {
		log_info("expunged pruning failed", "error=%s", jobs_quote_msg(q, r->message));
		j->pr_next_ms = now + JOBS_LEASE_RENEW_MS;
		return;
	}
	if (PQntuples(r->res) != 1) {
		/* the database says the lease is not ours: the lease renewal will tell */
		j->pr_next_ms = now + JOBS_LEASE_RENEW_MS;
		return;
	}
	long long n = strtoll(PQgetvalue(r->res, 0, 1), NULL, 10);
	if (n > 0) {
		j->pr_pass_rows += n;
		metric_add(jobs_m.expunged_pruned, (double)n);
	}
	if (PQgetisnull(r->res, 0, 0)) {
		if (j->pr_pass_rows > 0)
			log_info("expunged rows pruned", "removed=%lld retention_ms=%" PRId64, j->pr_pass_rows,
				 j->expunged_keep_ms);
		j->pr_pass_rows = 0;
		snprintf(j->pr_cursor, sizeof(j->pr_cursor), "0");
		j->pr_next_ms = now + JOBS_PRUNE_PASS_MS;
		return;
	}
	snprintf(j->pr_cursor, sizeof(j->pr_cursor), "%s", PQgetvalue(r->res, 0, 0));
	j->pr_next_ms = now;
	jobs_kick(j);
}

/* pr_run - the next pruning step when one is due */
static void pr_run(struct jobs *j, int64_t now)
{
	if (j->pr_req != NULL || now < j->pr_next_ms)
		return;
	char keep[24], mbs[16], lim[16];
	snprintf(keep, sizeof(keep), "%" PRId64, j->expunged_keep_ms);
	snprintf(mbs, sizeof(mbs), "%d", JOBS_PRUNE_MAILBOXES);
	snprintf(lim, sizeof(lim), "%d", JOBS_PRUNE_BATCH);
	const char *v[5] = { j->rt->node_id, j->pr_cursor, keep, mbs, lim };
	metric_inc(j->lease[JOB_HOUSEKEEP].m_steps);
	j->pr_req = db_exec(j->db, "jobs_prune_expunged", 5, v, NULL, NULL, 0, pr_done, j);
}

/* ------------------------------------------------------------ leases */

/* lease_acquired - a new tenure: every job starts from the beginning, now */
static void lease_acquired(struct jobs *j, enum jobs_job k, int64_t now)
{
	switch (k) {
	case JOB_REPAIR:
		j->a_pass_start = now - JOBS_REPAIR_PASS_MS;
		for (size_t i = 0; i < j->n_nodes; i++)
			j->v_pass_start[i] = now - JOBS_VERIFY_PASS_MS;
		break;
	case JOB_GC:
		j->gc_next_ms = now;
		break;
	case JOB_HOUSEKEEP:
		j->hk_next_ms = now;
		j->pr_next_ms = now;
		j->pr_pass_rows = 0;
		snprintf(j->pr_cursor, sizeof(j->pr_cursor), "0");
		break;
	case JOB_COUNT:
		break;
	}
}

static void lease_done(const struct db_result *r, void *arg)
{
	struct jobs *j = arg;
	char q[200], hq[200];
	int64_t now = jobs_now_ms();
	j->lease_req = NULL;
	if (r->status != DB_OK) {
		if (j->lease_errors++ % 10 == 0)
			log_warn("job lease renewal failed", "status=%d error=%s", (int)r->status,
				 jobs_quote_msg(q, r->message));
		return;
	}
	j->lease_errors = 0;
	for (int i = 0; i < PQntuples(r->res); i++) {
		const char *job = PQgetvalue(r->res, i, 0), *holder = PQgetvalue(r->res, i, 1);
		bool held = strcmp(PQgetvalue(r->res, i, 2), "t") == 0;
		bool acquired = strcmp(PQgetvalue(r->res, i, 3), "t") == 0;
		int k = -1;
		for (int n = 0; n < JOB_COUNT; n++)
			if (strcmp(job, jobs_names[n]) == 0)
				k = n;
		if (k < 0)
			continue;
		struct jobs_lease *L = &j->lease[k];
		if (held) {
			L->until_ms = j->lease_sent_ms + JOBS_LEASE_MS - JOBS_LEASE_MARGIN_MS;
			if (!L->held || acquired) {
				log_info("job lease acquired", "job=%s holder=%s", jobs_names[k], j->rt->node_id);
				lease_acquired(j, (enum jobs_job)k, now);
			}
			L->held = true;
			metric_set(L->m_held, 1);
		} else {
			if (L->held)
				log_info("job lease lost", "job=%s holder=%s new_holder=%s", jobs_names[k],
					 j->rt->node_id, log_quote(hq, sizeof(hq), holder, strlen(holder)));
			L->held = false;
			metric_set(L->m_held, 0);
		}
	}
	jobs_kick(j);
}

/* lease_send - renew (or try to take) every lease, every JOBS_LEASE_RENEW_MS */
static void lease_send(struct jobs *j, int64_t now)
{
	if (j->lease_req != NULL || (j->lease_tried && now - j->lease_sent_ms < JOBS_LEASE_RENEW_MS))
		return;
	j->lease_tried = true;
	char ms[16];
	snprintf(ms, sizeof(ms), "%d", JOBS_LEASE_MS);
	const char *v[3] = { j->rt->node_id, JOBS_ARRAY, ms };
	j->lease_sent_ms = now;
	j->lease_req = db_exec(j->db, "jobs_leases", 3, v, NULL, NULL, 0, lease_done, j);
	db_request_set_timeout(j->lease_req, JOBS_LEASE_TIMEOUT_MS);
}

/* lease_check - a lease not renewed in time lapses here, before it can in the database */
static void lease_check(struct jobs *j, int64_t now)
{
	for (int k = 0; k < JOB_COUNT; k++) {
		struct jobs_lease *L = &j->lease[k];
		if (L->held && now >= L->until_ms) {
			log_warn("job lease lapsed: not renewed in time", "job=%s holder=%s", jobs_names[k],
				 j->rt->node_id);
			L->held = false;
			metric_set(L->m_held, 0);
		}
	}
}

/* ------------------------------------------------------------ scheduler */

/* nodes_watch - when each node went down; a node back up, or restarted with no
 * probe seeing it down, is verified first; a node no longer live starts a
 * placement pass */
static void nodes_watch(struct jobs *j, int64_t now)
{
	for (size_t i = 0; i < j->n_nodes; i++) {
		bool up = jobs_node_up(j, i);
		if (!up && j->down_since[i] == 0) {
			j->down_since[i] = now > 0 ? now : 1;
		} else if (up && j->down_since[i] != 0) {
			j->down_since[i] = 0;
			j->lost &= ~(1ull << i);
			j->verify_first |= 1ull << i;
			log_info("store node back: its copies will be verified", "node=%s", jobs_node(j, i));
		}
		unsigned restarts = blob_node_restarts(j->c, jobs_node(j, i));
		if (restarts != j->restarts[i]) {
			j->restarts[i] = restarts;
			j->verify_first |= 1ull << i;
			log_info("store node restarted: its copies will be verified", "node=%s", jobs_node(j, i));
		}
		if (!jobs_node_live(j, i, now) && !(j->lost & (1ull << i))) {
			j->lost |= 1ull << i;
			j->a_restart = true;
			log_info("store node lost: a placement pass copies what it held", "node=%s down_ms=%lld",
				 jobs_node(j, i), (long long)(now - j->down_since[i]));
		}
	}
}

/* jobs_run - every job that may work, works; the others stop */
static void jobs_run(struct jobs *j)
{
	int64_t now = jobs_now_ms();
	lease_send(j, now);
	lease_check(j, now);
	nodes_watch(j, now);
	if (jobs_held(j, JOB_REPAIR, now))
		repair_run(j, now);
	else
		repair_stop(j);
	if (jobs_held(j, JOB_GC, now))
		gc_run(j, now);
	else
		gc_stop(j);
	if (jobs_held(j, JOB_HOUSEKEEP, now)) {
		hk_run(j, now);
		pr_run(j, now);
	}
}

static void jobs_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	jobs_run(arg);
}

/* jobs_kick - run the scheduler soon, from the loop (not from inside a callback chain) */
static void jobs_kick(struct jobs *j)
{
	if (j->kick_ev != NULL)
		event_active(j->kick_ev, EV_TIMEOUT, 0);
}

/* ------------------------------------------------------------ module */

static void jobs_metrics_init(struct jobs *j)
{
	jobs_m.repair_copies = metric_counter("repair_copies_total", "blob copies made by the repair job");
	jobs_m.repair_failed = metric_counter("repair_failed_total",
					      "blob copies the repair job could not make");
	jobs_m.repair_missing = metric_gauge("repair_missing",
					     "blob copies known missing: queued, being made, or failed this pass");
	jobs_m.gc_deleted = metric_counter("blob_gc_deleted_total", "unreferenced blobs deleted by the GC");
	jobs_m.gc_kept = metric_counter("blob_gc_kept_total",
					"GC'd blobs left on a node that was down (retried later)");
	jobs_m.housekeep_rows = metric_counter("housekeep_rows_total", "rows removed by housekeeping");
	jobs_m.placement_recorded = metric_counter("blob_placement_recorded_total",
						   "late copies and read repairs recorded in blobs.nodes");
	jobs_m.expunged_pruned = metric_counter("expunged_pruned_total",
						"expunged rows (QRESYNC) deleted after the retention");
	for (int k = 0; k < JOB_COUNT; k++) {
		char name[96];
		snprintf(name, sizeof(name), "job_lease_held{job=\"%s\"}", jobs_names[k]);
		j->lease[k].m_held = metric_gauge(name, "1 while this router holds the job's lease");
		snprintf(name, sizeof(name), "job_steps_total{job=\"%s\"}", jobs_names[k]);
		j->lease[k].m_steps = metric_counter(name, "work steps this router ran for the job");
	}
}

static void jobs_loop_init(struct rt_loop *l)
{
	blob_cluster_set_copy_hook(l->blobs, jobs_copy_hook, l);
	if (!l->is_main)
		return;
	struct router *rt = l->rt;
	struct jobs *j = XNEW(struct jobs);
	l->mod[JOBS_SLOT] = j;
	j->rt = rt;
	j->l = l;
	j->c = l->blobs;
	j->db = l->db;
	j->n_nodes = blob_node_count(l->blobs);
	j->replicas = rt->blob_opts.replicas;
	j->grace_ms = config_duration_ms(rt->cfg, "blob_gc_grace");
	j->gc_interval_ms = MAIL_MIN(MAIL_MAX(j->grace_ms / 4, JOBS_GC_INTERVAL_MIN_MS),
				     JOBS_GC_INTERVAL_MAX_MS);
	j->expunged_keep_ms = config_duration_ms(rt->cfg, "expunged_retention");
	snprintf(j->pr_cursor, sizeof(j->pr_cursor), "0");
	jobs_metrics_init(j);
	j->tick_ev = event_new(l->base, -1, EV_PERSIST, jobs_tick_cb, j);
	j->kick_ev = event_new(l->base, -1, 0, jobs_tick_cb, j);
	struct timeval tick_tv = { JOBS_TICK_MS / 1000, (JOBS_TICK_MS % 1000) * 1000 };
	event_add(j->tick_ev, &tick_tv);
	jobs_kick(j); /* the first lease request at once */
	log_info("background jobs ready", "holder=%s gc_grace_ms=%" PRId64 " expunged_retention_ms=%" PRId64
		 " lease_ms=%d", rt->node_id, j->grace_ms, j->expunged_keep_ms, JOBS_LEASE_MS);
}

static void jobs_loop_fini(struct rt_loop *l)
{
	blob_cluster_set_copy_hook(l->blobs, NULL, NULL);
	struct jobs *j = l->mod[JOBS_SLOT];
	if (j == NULL)
		return;
	l->mod[JOBS_SLOT] = NULL;
	repair_stop(j);
	gc_stop(j);
	db_request_cancel(&j->lease_req);
	db_request_cancel(&j->hk_req);
	db_request_cancel(&j->pr_req);
	event_free(j->tick_ev);
	event_free(j->kick_ev);
	free(j);
}

static const struct db_stmt jobs_stmts[] = {
	{ "jobs_leases",
	  "SELECT lease_job, lease_holder, held, acquired FROM mail_job_leases($1, $2::text[], $3::integer)",
	  3 },
	{ "jobs_add_node", "SELECT mail_blob_add_node($1, $2)", 2 },
	{ "jobs_repair_scan",
	  "SELECT blob_id, size, nodes, last FROM mail_job_repair_scan($1, $2, $3::integer, $4::text[], "
	  "$5::integer)",
	  5 },
	{ "jobs_verify_page",
	  "SELECT blob_id, nodes FROM mail_job_verify_page($1, $2, $3, $4, $5::integer)", 5 },
	{ "jobs_gc_claim",
	  "SELECT blob_id, nodes, claim FROM mail_job_blob_gc_claim($1, $2::bigint, $3::integer)", 3 },
	{ "jobs_gc_finish", "SELECT mail_job_blob_gc_finish($1, $2, $3::text[], $4::integer)", 4 },
	{ "jobs_housekeep", "SELECT mail_job_housekeep($1)", 1 },
	{ "jobs_prune_expunged",
	  "SELECT last_mailbox, pruned FROM mail_job_prune_expunged($1, $2::bigint, $3::bigint, "
	  "$4::integer, $5::integer)", 5 },
};

const struct rt_module rt_mod_jobs = {
	.name = "jobs",
	.methods = NULL,
	.n_methods = 0,
	.stmts = jobs_stmts,
	.n_stmts = N_ELEMENTS(jobs_stmts),
	.slot = JOBS_SLOT,
	.loop_init = jobs_loop_init,
	.loop_fini = jobs_loop_fini,
};
