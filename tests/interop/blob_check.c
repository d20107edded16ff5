/* blob_check.c - drives a blob_cluster (router/blobs.h) against real mail-store
 * nodes for tests/router/test_blobs.py.
 *   blob_check --nodes=store1=127.0.0.1:P1,... [--replicas=R] [--quorum=W]
 *              [--probe-ms=N] [--stall-ms=N] [--get-buffer=N] [--max-inflight=N]
 *              [--call-timeout-ms=N]
 *              [--log-level=debug|info|warn|error]
 *   blob_check --parse=STORE_NODES...   (one result line each; exit 0 if all valid)
 * Reads one command per line on stdin and runs them one after another on one
 * long-lived cluster (so node health carries over while the test kills and
 * restarts nodes between commands):
 *   put FILE [n=K] [expect=STATUS] [id=HEX] [cancel-ms=N]
 *                            K concurrent puts of the file (cancelled after N ms)
 *   get ID [offset=] [length=] [hint=a,b] [sha=HEX] [bytes=N] [expect=STATUS]
 *          [kill-after=N pids=name:pid,...] [pause-every=N pause-ms=M]
 *          [cancel-after=N] [min-fallbacks=K]
 *   copy ID FROM TO [expect=STATUS] [existed=0|1]
 *   stat ID NODE [expect=] [exists=0|1] [size=N]
 *   delete ID NODE [expect=] [existed=0|1]
 *   list NODE [after=ID] [limit=N] [count=N]
 *   place ID | wait NODE up|down [ms=N] | wait-background [ms=N] | metrics | sleep MS
 * Prints one "ok <cmd> ..." or "FAIL <cmd> ..." line per command ("event ..."
 * lines in between for copies the cluster reports); at the end of input frees
 * everything and exits 0 only if every check passed. */
#include "lib/common.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "router/blobs.h"
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/evp.h>

#define MAX_ARGS 32
#define MAX_PUTS 64

static struct event_base *base;
static struct blob_cluster *cluster;
static struct evbuffer *inbuf;
static struct event *stdin_ev, *timer_ev;
static bool stdin_eof, busy;
static int checks, failures;
static unsigned cfg_w;

/* the command being run */
static struct cmd {
	char *line;
	char *pos[MAX_ARGS];
	size_t n_pos;
	char *key[MAX_ARGS], *val[MAX_ARGS];
	size_t n_kv;
	/* put */
	uint8_t *data;
	size_t len;
	char file_id[BLOB_ID_HEX_LEN + 1];
	struct blob_op *ops[MAX_PUTS];
	int n_ops, n_cb, n_ok, bad;
	char first_id[BLOB_ID_HEX_LEN + 1];
	char nodes_txt[512], place_txt[512];
	int existed;
	enum rpc_status st;
	char msg[300];
	/* get */
	struct blob_op *op;
	EVP_MD_CTX *md;
	uint64_t bytes, size, kill_after, pause_every, since_pause, cancel_after;
	int pause_ms, size_calls, data_after_done, data_while_paused, done_calls;
	bool paused, killed, cancelled, done, got_size;
	char killed_node[80], last_node[80];
	unsigned fallbacks;
	/* wait */
	int64_t deadline;
	int64_t t0;
} cmd;

static void next_command(void);
static void finish_all(void);

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* result - one result line for the current command */
static void ATTR_PRINTF(2, 3) result(bool ok, const char *fmt, ...)
{
	char buf[1500];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printf("%s %s %s\n", ok ? "ok" : "FAIL", cmd.pos[0] != NULL ? cmd.pos[0] : "?", buf);
	fflush(stdout);
	checks++;
	if (!ok)
		failures++;
}

static const char *opt(const char *key)
{
	for (size_t i = 0; i < cmd.n_kv; i++) {
		if (strcmp(cmd.key[i], key) == 0)
			return cmd.val[i];
	}
	return NULL;
}

static uint64_t arg_u64(const char *key, uint64_t def)
{
	const char *v = opt(key);
	return v != NULL ? strtoull(v, NULL, 10) : def;
}

/* expect_status - the status the command expects (default OK) */
static const char *expect_status(void)
{
	const char *v = opt("expect");
	return v != NULL ? v : "OK";
}

static void cmd_done(void)
{
	if (cmd.md != NULL)
		EVP_MD_CTX_free(cmd.md);
	free(cmd.data);
	free(cmd.line);
	memset(&cmd, 0, sizeof(cmd));
	busy = false;
	next_command();
}

/* ------------------------------------------------------------ timers */

static void (*timer_fn)(void);

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	void (*fn)(void) = timer_fn;
	timer_fn = NULL;
	if (fn != NULL)
		fn();
}

static void timer_in(int ms, void (*fn)(void))
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	timer_fn = fn;
	evtimer_add(timer_ev, &tv);
}

/* ------------------------------------------------------------ put */

static void join_names(char *out, size_t size, const char *const *names, size_t n)
{
	size_t o = 0;
	out[0] = '\0';
	for (size_t i = 0; i < n && o + 1 < size; i++)
		o += (size_t)snprintf(out + o, size - o, "%s%s", i ? "," : "", names[i]);
}

static void put_cb(const struct blob_put_result *res, void *arg)
{
	int i = (int)(intptr_t)arg;
	if (cmd.ops[i] == NULL) {
		cmd.bad++; /* a second callback, or one after cancel */
		return;
	}
	cmd.ops[i] = NULL;
	cmd.n_cb++;
	if (res->status == RPC_OK) {
		cmd.n_ok++;
		/* the acknowledging nodes: at least W, all different */
		if (res->n_nodes < cfg_w)
			cmd.bad++;
		for (size_t a = 0; a < res->n_nodes; a++)
			for (size_t b = a + 1; b < res->n_nodes; b++)
				if (strcmp(res->nodes[a], res->nodes[b]) == 0)
					cmd.bad++;
		if (strcmp(res->id, cmd.file_id) != 0)
			cmd.bad++;
		if (cmd.first_id[0] == '\0') {
			snprintf(cmd.first_id, sizeof(cmd.first_id), "%s", res->id);
			join_names(cmd.nodes_txt, sizeof(cmd.nodes_txt), res->nodes, res->n_nodes);
			cmd.existed = res->existed;
		}
	} else {
		if (res->n_nodes >= cfg_w)
			cmd.bad++; /* that many copies would have been a success */
		cmd.st = res->status;
		snprintf(cmd.msg, sizeof(cmd.msg), "%s", res->message);
	}
	if (cmd.n_cb == cmd.n_ops && opt("cancel-ms") == NULL) {
		const char *want = expect_status();
		bool ok = cmd.bad == 0;
		if (strcmp(want, "OK") == 0)
			ok = ok && cmd.n_ok == cmd.n_ops;
		else
			ok = ok && cmd.n_ok == 0 && strcmp(rpc_status_name(cmd.st), want) == 0;
		if (cmd.n_ok > 0)
			result(ok, "status=OK id=%s size=%zu nodes=%s existed=%d place=%s n=%d bad=%d",
			       cmd.first_id, cmd.len, cmd.nodes_txt, cmd.existed, cmd.place_txt,
			       cmd.n_ok, cmd.bad);
		else
			result(ok, "status=%s n=%d bad=%d err=\"%s\"", rpc_status_name(cmd.st),
			       cmd.n_cb, cmd.bad, cmd.msg);
		cmd_done();
	}
}

static void put_cancelled_check(void)
{
	result(cmd.n_cb == 0 && cmd.bad == 0, "cancelled=%d callbacks=%d bad=%d", cmd.n_ops, cmd.n_cb,
	       cmd.bad);
	cmd_done();
}

/* put_cancel - cancel every put still running; none may call back afterwards */
static void put_cancel(void)
{
	for (int i = 0; i < cmd.n_ops; i++)
		blob_op_cancel(&cmd.ops[i]);
	timer_in(300, put_cancelled_check);
}

static void run_put(void)
{
	const char *names[BLOB_MAX_NODES];
	FILE *f = cmd.n_pos > 1 ? fopen(cmd.pos[1], "rb") : NULL;
	if (f == NULL) {
		result(false, "cannot open %s", cmd.n_pos > 1 ? cmd.pos[1] : "(no file)");
		cmd_done();
		return;
	}
	fseek(f, 0, SEEK_END);
	long sz = ftell(f);
	fseek(f, 0, SEEK_SET);
	cmd.len = (size_t)sz;
	cmd.data = xmalloc(cmd.len + 1);
	if (fread(cmd.data, 1, cmd.len, f) != cmd.len) {
		fclose(f);
		result(false, "short read of %s", cmd.pos[1]);
		cmd_done();
		return;
	}
	fclose(f);
	blob_id_of(cmd.data, cmd.len, cmd.file_id);
	size_t np = blob_place(cluster, cmd.file_id, names, BLOB_MAX_NODES);
	join_names(cmd.place_txt, sizeof(cmd.place_txt), names, np);
	cmd.n_ops = (int)MAIL_MIN(arg_u64("n", 1), (uint64_t)MAX_PUTS);
	const char *id = opt("id");
	for (int i = 0; i < cmd.n_ops; i++)
		cmd.ops[i] = blob_put(cluster, cmd.data, cmd.len, id, put_cb, (void *)(intptr_t)i);
	if (opt("cancel-ms") != NULL)
		timer_in((int)arg_u64("cancel-ms", 0), put_cancel);
}

/* ------------------------------------------------------------ get */

static void get_finish(void)
{
	uint8_t md[32];
	char hex[65];
	unsigned mdlen = 0;
	EVP_DigestFinal_ex(cmd.md, md, &mdlen);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	const char *want_sha = opt("sha");
	bool ok = strcmp(rpc_status_name(cmd.st), expect_status()) == 0;
	ok = ok && cmd.done_calls == 1 && cmd.data_after_done == 0 && cmd.data_while_paused == 0;
	ok = ok && cmd.size_calls <= 1;
	if (cmd.st == RPC_OK) {
		if (want_sha != NULL)
			ok = ok && strcmp(want_sha, hex) == 0;
		if (opt("bytes") != NULL)
			ok = ok && cmd.bytes == arg_u64("bytes", 0);
		ok = ok && cmd.fallbacks >= arg_u64("min-fallbacks", 0);
		if (opt("kill-after") != NULL)
			ok = ok && cmd.killed && strcmp(cmd.killed_node, cmd.last_node) != 0;
	}
	result(ok, "status=%s bytes=%" PRIu64 " sha=%s size=%" PRIu64 " fallbacks=%u last=%s killed=%s "
	       "err=\"%s\"", rpc_status_name(cmd.st), cmd.bytes, hex, cmd.size, cmd.fallbacks,
	       cmd.last_node[0] ? cmd.last_node : "-", cmd.killed ? cmd.killed_node : "-", cmd.msg);
	cmd_done();
}

/* kill_serving - SIGKILL the node streaming right now (pids=name:pid,...) */
static void kill_serving(void)
{
	const char *node = blob_get_node(cmd.op);
	const char *pids = opt("pids");
	if (node == NULL || pids == NULL)
		return;
	size_t nl = strlen(node);
	for (const char *p = pids; p != NULL && *p != '\0';) {
		const char *comma = strchr(p, ',');
		if (strncmp(p, node, nl) == 0 && p[nl] == ':') {
			pid_t pid = (pid_t)strtol(p + nl + 1, NULL, 10);
			if (pid > 0 && kill(pid, SIGKILL) == 0) {
				cmd.killed = true;
				snprintf(cmd.killed_node, sizeof(cmd.killed_node), "%s", node);
				printf("event killed node=%s pid=%d at=%" PRIu64 "\n", node, (int)pid, cmd.bytes);
				fflush(stdout);
			}
			return;
		}
		p = comma != NULL ? comma + 1 : NULL;
	}
}

static void get_resume_timer(void)
{
	cmd.paused = false;
	blob_get_resume(cmd.op);
}

static void get_after_cancel(void)
{
	/* nothing may have arrived since the cancel */
	cmd.done_calls = 1;
	cmd.st = RPC_CANCELLED;
	get_finish();
}

static void get_on_size(uint64_t size, void *arg)
{
	cmd.size_calls++;
	cmd.size = size;
	cmd.got_size = true;
}

static void get_on_data(const uint8_t *data, size_t len, void *arg)
{
	if (cmd.done || cmd.cancelled)
		cmd.data_after_done++;
	if (cmd.paused)
		cmd.data_while_paused++;
	if (!cmd.got_size)
		cmd.data_after_done++; /* on_size comes first */
	EVP_DigestUpdate(cmd.md, data, len);
	cmd.bytes += len;
	const char *node = blob_get_node(cmd.op);
	if (node != NULL)
		snprintf(cmd.last_node, sizeof(cmd.last_node), "%s", node);
	if (cmd.kill_after > 0 && !cmd.killed && cmd.bytes >= cmd.kill_after)
		kill_serving();
	if (cmd.cancel_after > 0 && !cmd.cancelled && cmd.bytes >= cmd.cancel_after) {
		cmd.cancelled = true;
		cmd.fallbacks = blob_get_fallbacks(cmd.op);
		blob_op_cancel(&cmd.op);
		timer_in(300, get_after_cancel);
		return;
	}
	if (cmd.pause_every > 0) {
		cmd.since_pause += len;
		if (cmd.since_pause >= cmd.pause_every) {
			cmd.since_pause = 0;
			cmd.paused = true;
			blob_get_pause(cmd.op);
			timer_in(cmd.pause_ms, get_resume_timer);
		}
	}
}

static void get_on_done(enum rpc_status st, const char *message, void *arg)
{
	cmd.done_calls++;
	if (cmd.done || cmd.cancelled) {
		cmd.data_after_done++;
		return;
	}
	cmd.done = true;
	cmd.st = st;
	snprintf(cmd.msg, sizeof(cmd.msg), "%s", message);
	cmd.fallbacks = blob_get_fallbacks(cmd.op);
	cmd.op = NULL;
	if (timer_fn != NULL) {
		evtimer_del(timer_ev);
		timer_fn = NULL;
	}
	/* give a stray late callback a moment to show itself */
	timer_in(50, get_finish);
}

static void run_get(void)
{
	static const struct blob_get_cbs cbs = {
		.on_size = get_on_size, .on_data = get_on_data, .on_done = get_on_done,
	};
	const char *hint[BLOB_MAX_NODES + 1];
	char hintbuf[512];
	size_t nh = 0;
	const char *h = opt("hint");

	cmd.md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(cmd.md, EVP_sha256(), NULL);
	if (h != NULL) {
		snprintf(hintbuf, sizeof(hintbuf), "%s", h);
		for (char *save = NULL, *t = strtok_r(hintbuf, ",", &save); t != NULL && nh < BLOB_MAX_NODES;
		     t = strtok_r(NULL, ",", &save))
			hint[nh++] = t;
		hint[nh] = NULL;
	}
	cmd.kill_after = arg_u64("kill-after", 0);
	cmd.pause_every = arg_u64("pause-every", 0);
	cmd.pause_ms = (int)arg_u64("pause-ms", 10);
	cmd.cancel_after = arg_u64("cancel-after", 0);
	cmd.op = blob_get(cluster, cmd.n_pos > 1 ? cmd.pos[1] : "", h != NULL ? hint : NULL,
			  arg_u64("offset", 0), arg_u64("length", 0), &cbs, NULL);
}

/* ------------------------------------------------------------ copy, stat, delete, list */

static void result_cb(const struct blob_result *res, void *arg)
{
	const char *what = cmd.pos[0];
	bool ok = strcmp(rpc_status_name(res->status), expect_status()) == 0;
	if (cmd.op == NULL)
		ok = false; /* a second callback */
	cmd.op = NULL;
	const char *ex = strcmp(what, "stat") == 0 ? opt("exists") : opt("existed");
	if (ex != NULL && res->status == RPC_OK)
		ok = ok && (int)res->exists == atoi(ex);
	if (opt("size") != NULL && res->status == RPC_OK)
		ok = ok && res->size == arg_u64("size", 0);
	result(ok, "status=%s %s=%d size=%" PRIu64 " err=\"%s\"", rpc_status_name(res->status),
	       strcmp(what, "stat") == 0 ? "exists" : "existed", (int)res->exists, res->size,
	       res->message);
	cmd_done();
}

static void list_cb(enum rpc_status st, const char *message, const struct blob_info *blobs,
		    size_t n, bool more, void *arg)
{
	char ids[1200];
	size_t o = 0;
	ids[0] = '\0';
	for (size_t i = 0; i < n && o + 70 < sizeof(ids); i++)
		o += (size_t)snprintf(ids + o, sizeof(ids) - o, "%s%s", i ? "," : "", blobs[i].id);
	bool ok = strcmp(rpc_status_name(st), expect_status()) == 0;
	if (opt("count") != NULL)
		ok = ok && n == arg_u64("count", 0);
	for (size_t i = 1; i < n; i++)
		ok = ok && strcmp(blobs[i - 1].id, blobs[i].id) < 0;
	cmd.op = NULL;
	result(ok, "status=%s n=%zu more=%d ids=%s err=\"%s\"", rpc_status_name(st), n, (int)more,
	       n <= 16 ? ids : "...", message);
	cmd_done();
}

/* ------------------------------------------------------------ wait, place, metrics */

static void wait_poll(void)
{
	const char *want = cmd.pos[2];
	bool up = blob_node_up(cluster, cmd.pos[1]);
	if (up == (strcmp(want, "up") == 0)) {
		char gname[160];
		snprintf(gname, sizeof(gname), "blob_node_up{node=\"%s\"}", cmd.pos[1]);
		result(true, "node=%s state=%s elapsed_ms=%" PRId64 " gauge=%.0f", cmd.pos[1], want,
		       now_ms() - cmd.t0, metric_value(metric_gauge(gname, "")));
		cmd_done();
	} else if (now_ms() >= cmd.deadline) {
		result(false, "node=%s still %s after %" PRId64 " ms", cmd.pos[1], up ? "up" : "down",
		       now_ms() - cmd.t0);
		cmd_done();
	} else {
		timer_in(20, wait_poll);
	}
}

static void wait_bg_poll(void)
{
	size_t n = blob_cluster_background(cluster);
	if (n == 0) {
		result(true, "background=0 elapsed_ms=%" PRId64, now_ms() - cmd.t0);
		cmd_done();
	} else if (now_ms() >= cmd.deadline) {
		result(false, "background=%zu after %" PRId64 " ms", n, now_ms() - cmd.t0);
		cmd_done();
	} else {
		timer_in(20, wait_bg_poll);
	}
}

static void sleep_done(void)
{
	result(true, "slept");
	cmd_done();
}

static double counter(const char *name)
{
	return metric_value(metric_counter(name, ""));
}

static void copy_hook(const char *id, const char *node, void *arg)
{
	printf("event copy id=%s node=%s\n", id, node);
	fflush(stdout);
}

/* run_line - parse and start one command */
static void run_line(char *line)
{
	memset(&cmd, 0, sizeof(cmd));
	cmd.line = line;
	for (char *save = NULL, *t = strtok_r(line, " \t", &save); t != NULL;
	     t = strtok_r(NULL, " \t", &save)) {
		char *eq = strchr(t, '=');
		if (eq != NULL && cmd.n_kv < MAX_ARGS) {
			*eq = '\0';
			cmd.key[cmd.n_kv] = t;
			cmd.val[cmd.n_kv++] = eq + 1;
		} else if (cmd.n_pos < MAX_ARGS) {
			cmd.pos[cmd.n_pos++] = t;
		}
	}
	if (cmd.n_pos == 0) {
		free(line);
		memset(&cmd, 0, sizeof(cmd));
		return;
	}
	busy = true;
	cmd.t0 = now_ms();
	const char *c0 = cmd.pos[0];
	if (strcmp(c0, "put") == 0) {
		run_put();
	} else if (strcmp(c0, "get") == 0) {
		run_get();
	} else if (strcmp(c0, "copy") == 0 && cmd.n_pos == 4) {
		cmd.op = blob_copy(cluster, cmd.pos[1], cmd.pos[2], cmd.pos[3], result_cb, NULL);
	} else if (strcmp(c0, "stat") == 0 && cmd.n_pos == 3) {
		cmd.op = blob_node_stat(cluster, cmd.pos[2], cmd.pos[1], result_cb, NULL);
	} else if (strcmp(c0, "delete") == 0 && cmd.n_pos == 3) {
		cmd.op = blob_node_delete(cluster, cmd.pos[2], cmd.pos[1], result_cb, NULL);
	} else if (strcmp(c0, "list") == 0 && cmd.n_pos == 2) {
		cmd.op = blob_node_list(cluster, cmd.pos[1], opt("after"), (unsigned)arg_u64("limit", 0),
					list_cb, NULL);
	} else if (strcmp(c0, "place") == 0 && cmd.n_pos == 2) {
		const char *live[BLOB_MAX_NODES], *ideal[BLOB_MAX_NODES], *rank[BLOB_MAX_NODES];
		char a[512], b[512], r[512];
		join_names(a, sizeof(a), live, blob_place(cluster, cmd.pos[1], live, BLOB_MAX_NODES));
		join_names(b, sizeof(b), ideal, blob_place_ideal(cluster, cmd.pos[1], ideal, BLOB_MAX_NODES));
		join_names(r, sizeof(r), rank, blob_rank(cluster, cmd.pos[1], false, rank, BLOB_MAX_NODES));
		result(true, "live=%s ideal=%s rank=%s", a, b, r);
		cmd_done();
	} else if (strcmp(c0, "wait") == 0 && cmd.n_pos == 3) {
		cmd.deadline = cmd.t0 + (int64_t)arg_u64("ms", 5000);
		wait_poll();
	} else if (strcmp(c0, "wait-background") == 0) {
		cmd.deadline = cmd.t0 + (int64_t)arg_u64("ms", 5000);
		wait_bg_poll();
	} else if (strcmp(c0, "sleep") == 0 && cmd.n_pos == 2) {
		timer_in(atoi(cmd.pos[1]), sleep_done);
	} else if (strcmp(c0, "metrics") == 0) {
		result(true, "put=%.0f put_failed=%.0f get=%.0f get_failed=%.0f fallback=%.0f repair=%.0f "
		       "repair_failed=%.0f", counter("blob_put_total"), counter("blob_put_failed_total"),
		       counter("blob_get_total"), counter("blob_get_failed_total"),
		       counter("blob_get_fallback_total"), counter("blob_repair_total"),
		       counter("blob_repair_failed_total"));
		cmd_done();
	} else {
		result(false, "unknown command or wrong arguments");
		cmd_done();
	}
}

/* next_command - run the next buffered line, or end after the last one */
static void next_command(void)
{
	while (!busy) {
		size_t n;
		char *line = evbuffer_readln(inbuf, &n, EVBUFFER_EOL_LF);
		if (line == NULL) {
			if (stdin_eof)
				finish_all();
			return;
		}
		run_line(line);
	}
}

static void stdin_cb(evutil_socket_t fd, short what, void *arg)
{
	int r = evbuffer_read(inbuf, fd, 4096);
	if (r <= 0) {
		stdin_eof = true;
		event_del(stdin_ev);
		if (evbuffer_get_length(inbuf) > 0)
			evbuffer_add(inbuf, "\n", 1); /* a last line without newline */
	}
	next_command();
}

static void finish_all(void)
{
	if (busy || cluster == NULL)
		return;
	blob_cluster_free(&cluster);
	event_base_loopexit(base, NULL);
}

int main(int argc, char **argv)
{
	struct blob_cluster_opts o;
	const char *nodes_s = NULL, *error = NULL;
	struct blob_node_cfg *nodes = NULL;
	size_t n = 0;

	signal(SIGPIPE, SIG_IGN);
	log_init("blob_check", LOG_LEVEL_INFO);
	memset(&o, 0, sizeof(o));
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strncmp(a, "--nodes=", 8) == 0)
			nodes_s = a + 8;
		else if (strncmp(a, "--replicas=", 11) == 0)
			o.replicas = (unsigned)atoi(a + 11);
		else if (strncmp(a, "--quorum=", 9) == 0)
			o.write_quorum = (unsigned)atoi(a + 9);
		else if (strncmp(a, "--probe-ms=", 11) == 0)
			o.probe_interval_ms = o.probe_timeout_ms = atoi(a + 11);
		else if (strncmp(a, "--stall-ms=", 11) == 0)
			o.stall_timeout_ms = atoi(a + 11);
		else if (strncmp(a, "--get-buffer=", 13) == 0)
			o.get_buffer = (size_t)atol(a + 13);
		else if (strncmp(a, "--call-timeout-ms=", 18) == 0)
			o.call_timeout_ms = atoi(a + 18);
		else if (strncmp(a, "--max-inflight=", 15) == 0)
			o.max_inflight = (unsigned)atoi(a + 15);
		else if (strncmp(a, "--log-level=", 12) == 0) {
			enum log_level lv;
			if (log_level_parse(a + 12, &lv) == 0)
				log_set_level(lv);
		}
		else if (strncmp(a, "--parse=", 8) == 0) {
			/* one line per --parse: "ok n=N name=addr..." or "error ..." */
			for (; i < argc && strncmp(argv[i], "--parse=", 8) == 0; i++) {
				if (blob_nodes_parse(argv[i] + 8, &nodes, &n, &error) < 0) {
					printf("error %s\n", error);
					failures++;
					continue;
				}
				printf("ok n=%zu", n);
				for (size_t k = 0; k < n; k++)
					printf(" %s=%s", nodes[k].name, nodes[k].addr);
				printf("\n");
				blob_nodes_free(&nodes, n);
			}
			return failures == 0 ? 0 : 1;
		} else {
			fprintf(stderr, "unknown argument %s\n", a);
			return 2;
		}
	}
	if (blob_nodes_parse(nodes_s, &nodes, &n, &error) < 0) {
		printf("FAIL config: %s\n", error);
		return 2;
	}
	base = event_base_new();
	if (blob_cluster_new(base, nodes, n, &o, &cluster, &error) < 0) {
		printf("FAIL config: %s\n", error);
		blob_nodes_free(&nodes, n);
		event_base_free(base);
		return 2;
	}
	blob_nodes_free(&nodes, n);
	cfg_w = o.write_quorum ? o.write_quorum : o.replicas ? o.replicas : 2;
	blob_cluster_set_copy_hook(cluster, copy_hook, NULL);
	inbuf = evbuffer_new();
	timer_ev = evtimer_new(base, timer_cb, NULL);
	stdin_ev = event_new(base, 0, EV_READ | EV_PERSIST, stdin_cb, NULL);
	event_add(stdin_ev, NULL);
	printf("ready nodes=%zu\n", n);
	fflush(stdout);
	event_base_dispatch(base);
	event_free(stdin_ev);
	event_free(timer_ev);
	evbuffer_free(inbuf);
	event_base_free(base);
	printf("done checks=%d failures=%d\n", checks, failures);
	return failures == 0 ? 0 : 1;
}
