/* bench_router.c - the router's delivery and metadata throughput, beside the
 * blob store's own Put throughput measured in the same run on the same disk.
 *
 *   bench_router [--build-dir=DIR] [--dir=PARENT] [--seconds=N] [--pg-bin=DIR] [--keep]
 *                [--repeat=N]   (N rounds of the delivery and Put points, then medians
 *                                of the rates and of the per-round ratios: this VM's
 *                                disk moves single runs by a third and more)
 *                [--router-arg=--db-pool-size=16 ...]   (experiments with router settings)
 *                [--store-arg=--sync-mode=batch ...]    (and with the stores' settings)
 *                [--streams=1,16,64]   (the concurrencies measured)
 *                [--deliver-only]      (the Deliver points alone: for profiling)
 *
 * Starts a private cluster of release binaries from DIR (default: the build this
 * program belongs to): PostgreSQL 15 with fsync ON (initdb/pg_ctl as the postgres
 * user when run as root, Unix socket only, in a temp dir under PARENT, default
 * /tmp), two mail-store nodes and one mail-router (R = W = 2). Then, with our own
 * gRPC client (proto/rpc.h), one connection per stream, at each concurrency
 * (1, 16 and 64), back to back, N seconds each:
 *  1. Deliver of distinct 10 KiB messages, stream k delivering to account k (a
 *     real MX spreads over recipients; one account's deliveries serialize on its
 *     row by design);
 *  2. store Put of distinct 10 KiB blobs straight to store node 1 (the issue's
 *     ratio: deliver_vs_store_put);
 *  3. the same on both nodes at once (store_put_two_nodes): the store side of
 *     the deliveries' W = 2 writes when the two nodes share this machine
 *     (deliver_vs_two_node_put). Every delivery is a Put on both nodes, so that
 *     rate over node 1's alone is the highest the issue's ratio can be on this
 *     machine, whatever the router and the database cost
 *     (deliver_vs_store_put_ceiling).
 * After the first round: 1,000 messages delivered into one account (16 streams:
 * the single-account rate is printed too), then FetchMeta of all 1,000
 * messages' envelopes in one call, sequentially for N seconds.
 * Each delivery point also prints the WAL a delivery writes (router_deliver_wal:
 * bytes, full-page images and records per delivery, checkpoints meanwhile).
 * Each delivery and Put point prints where the machine's CPU went (cpu lines:
 * how busy it was, and CPU ms per operation taken by PostgreSQL, the router,
 * the stores, this client and the rest, from /proc). When the deliveries kept
 * the cores busy (>= 90%), deliver_vs_store_put_cpu_ceiling is the rate they
 * would reach if the router, PostgreSQL and the kernel's other work took no
 * CPU at all, over the Put rate: a second ceiling on the ratio. And
 * deliver_cpu_budget is the CPU a delivery may take at the target rate with
 * every core busy, what its two Puts take at least (twice the stores' CPU per
 * Put at the Put point), and what is left for PostgreSQL, the router and the
 * rest, beside what they took per delivery.
 * The database starts with 20,000 older blob rows and delivery tokens and fresh
 * statistics, as a server in service has. pg_stat_statements (when installed)
 * is loaded, and the statements that took the server's time during each
 * delivery point are printed (pg_statement lines).
 * Prints key=value lines; the issue's target is deliveries/s at each concurrency
 * not below half the store's Put/s at the same concurrency (ratio= lines).
 * Nothing is asserted. Logs and data are removed at the end unless --keep. */
#include "bench_ports.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "router.pb-c.h"
#include "store.pb-c.h"
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <event2/event.h>

#define BR_MAX_STREAMS 64
#define BR_MAX_REPEAT 9
#define BR_MAX_POINTS 8                 /* concurrencies in --streams */
#define BR_MSG_SIZE (10 * 1024)
#define BR_META_MESSAGES 1000
#define BR_CALL_TIMEOUT_MS 60000
#define BR_PATH_DELIVER "/mail.router.v1.Router/Deliver"
#define BR_PATH_FETCHMETA "/mail.router.v1.Router/FetchMeta"
#define BR_PATH_PUT "/mail.store.v1.BlobStore/Put"
#define BR_DOMAIN "bench.test"

static double now_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- processes */

static bool as_root;
static char *router_extra[16];   /* --router-arg=... passed on to mail-router */
static int n_router_extra;
static char *store_extra[16];    /* --store-arg=... passed on to both mail-store nodes */
static int n_store_extra;
static const char *pg_bin = "/usr/lib/postgresql/15/bin";

/* spawn - run argv with stdin from /dev/null and stdout+stderr to logfile (or a
 * pipe when out_fd is given); as the postgres user when asked and we are root */
static pid_t spawn(char *const *argv, const char *logfile, bool as_postgres, int *out_fd)
{
	int pfd[2] = { -1, -1 };
	if (out_fd != NULL && pipe(pfd) < 0) {
		perror("pipe");
		exit(1);
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(1);
	}
	if (pid == 0) {
		int in = open("/dev/null", O_RDONLY);
		if (in >= 0)
			dup2(in, 0);
		if (out_fd != NULL) {
			dup2(pfd[1], 1);
			int log = open(logfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
			if (log >= 0)
				dup2(log, 2);
		} else {
			int log = open(logfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
			if (log >= 0) {
				dup2(log, 1);
				dup2(log, 2);
			}
		}
		if (as_postgres && as_root) {
			struct passwd *pw = getpwnam("postgres");
			if (pw == NULL || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
				fprintf(stderr, "cannot become postgres\n");
				_exit(126);
			}
		}
		execv(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	if (out_fd != NULL) {
		close(pfd[1]);
		*out_fd = pfd[0];
	}
	return pid;
}

static int wait_status(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* run - a command to completion; exits the benchmark when it fails */
static void run(char *const *argv, const char *logfile, bool as_postgres)
{
	int rc = wait_status(spawn(argv, logfile, as_postgres, NULL));
	if (rc != 0) {
		fprintf(stderr, "%s failed (%d); see %s\n", argv[0], rc, logfile);
		exit(1);
	}
}

struct cluster {
	char dir[256];
	char pg_data[PATH_MAX], pg_sock[PATH_MAX], pg_log[PATH_MAX];
	int pg_port;
	char conninfo[PATH_MAX + 100];
	pid_t stores[2];
	int store_ports[2];
	pid_t router;
	int router_port, metrics_port;
	char router_addr[64], store_addr[64];
};

/* psql_rc - one SQL command; its unaligned output (at most size-1 bytes) in out;
 * returns psql's exit status */
static int psql_rc(struct cluster *cl, const char *sql, char *out, size_t size)
{
	char *exe = xasprintf("%s/psql", pg_bin), *port = xasprintf("%d", cl->pg_port);
	char *logf = xasprintf("%s/psql.log", cl->dir);
	char *argv[] = { exe, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", cl->pg_sock, "-p", port,
			 "-U", "postgres", "-d", "mail", "-c", (char *)sql, NULL };
	int fd;
	pid_t pid = spawn(argv, logf, false, &fd);
	size_t n = 0;
	ssize_t r;
	char sink[4096];
	for (;;) {
		bool room = out != NULL && n + 1 < size;
		r = read(fd, room ? out + n : sink, room ? size - 1 - n : sizeof(sink));
		if (r <= 0)
			break;
		if (room)
			n += (size_t)r;
	}
	close(fd);
	if (out != NULL)
		out[n] = '\0';
	int rc = wait_status(pid);
	free(exe);
	free(port);
	free(logf);
	return rc;
}

/* psql - the same, and the benchmark ends when it fails */
static void psql(struct cluster *cl, const char *sql, char *out, size_t size)
{
	if (psql_rc(cl, sql, out, size) != 0) {
		fprintf(stderr, "psql failed: %s (see %s/psql.log)\n", sql, cl->dir);
		exit(1);
	}
}

/* pg_top - the statements that took the server's time (pg_stat_statements, nested
 * statements of the SQL functions included) since the last reset */
static void pg_top(struct cluster *cl, const char *phase)
{
	char *out = xmalloc(64 * 1024);
	if (psql_rc(cl, "SELECT calls || ' ' || round(mean_exec_time::numeric, 3) || ' ' || "
		    "round((total_exec_time / 1000)::numeric, 2) || ' ' || "
		    "left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_statements "
		    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'mail') "
		    "ORDER BY total_exec_time DESC LIMIT 20", out, 64 * 1024) == 0) {
		for (char *line = out, *next; line != NULL && *line != '\0'; line = next) {
			next = strchr(line, '\n');
			if (next != NULL)
				*next++ = '\0';
			long calls;
			double mean, total;
			int off = 0;
			if (sscanf(line, "%ld %lf %lf %n", &calls, &mean, &total, &off) == 3 && off > 0)
				printf("pg_statement phase=%s calls=%ld mean_ms=%.3f total_s=%.2f query=\"%s\"\n",
				       phase, calls, mean, total, line + off);
		}
	}
	free(out);
	psql_rc(cl, "SELECT pg_stat_statements_reset()", NULL, 0);
}

static void append_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "a");
	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
		fprintf(stderr, "cannot write %s\n", path);
		exit(1);
	}
}

static void chown_postgres(const char *path)
{
	struct passwd *pw = as_root ? getpwnam("postgres") : NULL;
	if (pw != NULL && chown(path, pw->pw_uid, pw->pw_gid) < 0) {
		perror("chown");
		exit(1);
	}
}

/* pg_start - initdb and start a private PostgreSQL with fsync on */
static void pg_start(struct cluster *cl)
{
	snprintf(cl->pg_data, sizeof(cl->pg_data), "%s/pg", cl->dir);
	snprintf(cl->pg_sock, sizeof(cl->pg_sock), "%s/sock", cl->dir);
	snprintf(cl->pg_log, sizeof(cl->pg_log), "%s/postgres.log", cl->dir); /* written by postgres */
	char *out = xasprintf("%s/pg_ctl.out", cl->dir);                       /* by us */
	cl->pg_port = 20000 + (int)(getpid() % 20000);
	mkdir(cl->pg_sock, 0700);
	chown_postgres(cl->pg_sock);
	char *initdb = xasprintf("%s/initdb", pg_bin), *pg_ctl = xasprintf("%s/pg_ctl", pg_bin);
	char *a1[] = { initdb, "-D", cl->pg_data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
		       "--locale=C.UTF-8", NULL };
	run(a1, out, true);
	char *conf = xasprintf("%s/postgresql.conf", cl->pg_data);
	char *lines = xasprintf("\n# bench_router\nlisten_addresses = ''\nunix_socket_directories = '%s'\n"
				"port = %d\nfsync = on\nfull_page_writes = on\nsynchronous_commit = on\n"
				"shared_buffers = 128MB\nmax_connections = 100\nlog_min_messages = warning\n"
				"shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n",
				cl->pg_sock, cl->pg_port);
	append_file(conf, lines);
	char *a2[] = { pg_ctl, "-D", cl->pg_data, "-l", cl->pg_log, "-w", "-t", "60", "start", NULL };
	run(a2, out, true);
	{
		char *exe = xasprintf("%s/psql", pg_bin), *port = xasprintf("%d", cl->pg_port);
		char *a3[] = { exe, "-X", "-q", "-h", cl->pg_sock, "-p", port, "-U", "postgres", "-d", "postgres",
			       "-c", "CREATE DATABASE mail", NULL };
		run(a3, out, false);
		free(exe);
		free(port);
	}
	snprintf(cl->conninfo, sizeof(cl->conninfo), "host=%s port=%d dbname=mail user=postgres",
		 cl->pg_sock, cl->pg_port);
	free(initdb);
	free(pg_ctl);
	free(out);
	free(conf);
	free(lines);
}

static void pg_stop(struct cluster *cl)
{
	char *pg_ctl = xasprintf("%s/pg_ctl", pg_bin);
	char *out = xasprintf("%s/pg_ctl.out", cl->dir);
	char *argv[] = { pg_ctl, "-D", cl->pg_data, "-m", "fast", "-w", "-t", "60", "stop", NULL };
	wait_status(spawn(argv, out, true, NULL));
	free(pg_ctl);
	free(out);
}

static void wait_port(int port, pid_t pid, const char *what, const char *logfile)
{
	for (int i = 0; i < 3000; i++) {
		int st;
		if (port_open(port))
			return;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			fprintf(stderr, "%s exited early; see %s\n", what, logfile);
			exit(1);
		}
		usleep(10000);
	}
	fprintf(stderr, "%s never listened; see %s\n", what, logfile);
	exit(1);
}

static void stop_daemon(pid_t pid, const char *what)
{
	kill(pid, SIGTERM);
	int rc = wait_status(pid);
	if (rc != 0)
		fprintf(stderr, "%s exit status %d\n", what, rc);
}

/* cluster_start - PostgreSQL, two store nodes, the router */
static void cluster_start(struct cluster *cl, const char *build)
{
	pg_start(cl);
	for (int i = 0; i < 2; i++) {
		cl->store_ports[i] = free_port();
		char *exe = xasprintf("%s/store/mail-store", build);
		char *listen = xasprintf("--listen=127.0.0.1:%d", cl->store_ports[i]);
		char *data = xasprintf("--data-dir=%s/store%d", cl->dir, i + 1);
		char *logf = xasprintf("%s/store%d.log", cl->dir, i + 1);
		char *argv[32] = { exe, listen, data, "--metrics-listen=", "--min-free=0", "--log-level=warn" };
		for (int k = 0; k < n_store_extra; k++)
			argv[6 + k] = store_extra[k];
		cl->stores[i] = spawn(argv, logf, false, NULL);
		wait_port(cl->store_ports[i], cl->stores[i], "mail-store", logf);
		free(exe);
		free(listen);
		free(data);
		free(logf);
	}
	snprintf(cl->store_addr, sizeof(cl->store_addr), "127.0.0.1:%d", cl->store_ports[0]);
	cl->router_port = free_port();
	snprintf(cl->router_addr, sizeof(cl->router_addr), "127.0.0.1:%d", cl->router_port);
	char *exe = xasprintf("%s/router/mail-router", build);
	char *listen = xasprintf("--listen=%s", cl->router_addr);
	cl->metrics_port = free_port();
	char *metrics = xasprintf("--metrics-listen=127.0.0.1:%d", cl->metrics_port);
	char *db = xasprintf("--db=%s", cl->conninfo);
	char *nodes = xasprintf("--store-nodes=store1=127.0.0.1:%d,store2=127.0.0.1:%d", cl->store_ports[0],
				cl->store_ports[1]);
	char *logf = xasprintf("%s/router.log", cl->dir);
	char *argv[32] = { exe, listen, metrics, "--admin-listen=", db, nodes, "--replicas=2", "--write-quorum=2",
			   "--node-id=bench", "--log-level=warn" };
	for (int i = 0; i < n_router_extra; i++)
		argv[10 + i] = router_extra[i];
	cl->router = spawn(argv, logf, false, NULL);
	wait_port(cl->router_port, cl->router, "mail-router", logf);
	free(exe);
	free(listen);
	free(metrics);
	free(db);
	free(nodes);
	free(logf);
}

static void cluster_stop(struct cluster *cl)
{
	stop_daemon(cl->router, "mail-router");
	for (int i = 0; i < 2; i++)
		stop_daemon(cl->stores[i], "mail-store");
	pg_stop(cl);
}

/* router_stats - from the router's /metrics: db_query_seconds, and the
 * deliver_stage_seconds of each stage a delivery goes through */
static const char *const br_stages[] = { "receive", "parse", "prepare", "put", "commit" };
#define BR_N_STAGES 5
struct router_stats {
	double db_sum, db_count;
	double stage_sum[BR_N_STAGES], stage_count[BR_N_STAGES];
};

/* stats_line - add a "name{labels} value" line to st when it is one we keep */
static void stats_line(struct router_stats *st, const char *line, double v)
{
	if (strncmp(line, "db_query_seconds_sum", 20) == 0)
		st->db_sum += v;
	else if (strncmp(line, "db_query_seconds_count", 22) == 0)
		st->db_count += v;
	for (int i = 0; i < BR_N_STAGES; i++) {
		char key[96];
		snprintf(key, sizeof(key), "deliver_stage_seconds_sum{stage=\"%s\"}", br_stages[i]);
		if (strncmp(line, key, strlen(key)) == 0)
			st->stage_sum[i] += v;
		snprintf(key, sizeof(key), "deliver_stage_seconds_count{stage=\"%s\"}", br_stages[i]);
		if (strncmp(line, key, strlen(key)) == 0)
			st->stage_count[i] += v;
	}
}

/* router_stats - scrape; zeros when the scrape fails */
static void router_stats(const struct cluster *cl, struct router_stats *st)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)cl->metrics_port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	char *buf = xmalloc(1 << 20);
	size_t n = 0;
	ssize_t r;
	memset(st, 0, sizeof(*st));
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (s >= 0)
			close(s);
		free(buf);
		return;
	}
	static const char req[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
	if (write(s, req, sizeof(req) - 1) == (ssize_t)sizeof(req) - 1)
		while (n + 1 < (1 << 20) && (r = read(s, buf + n, (1 << 20) - 1 - n)) > 0)
			n += (size_t)r;
	close(s);
	buf[n] = '\0';
	for (char *line = buf, *next; line != NULL && *line != '\0'; line = next) {
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		const char *sp = strrchr(line, ' ');
		if (sp != NULL)
			stats_line(st, line, atof(sp + 1));
	}
	free(buf);
}

/* ---------------------------------------------------------------- CPU */

/* Where the machine's CPU went during a point, in clock ticks: the whole
 * machine (/proc/stat: busy = user, nice, system, irq, softirq; all adds idle,
 * iowait and steal), and the processes of the cluster (/proc/PID/stat utime +
 * stime): PostgreSQL (the postmaster and its children), the router, the two
 * stores, and this program (the load generator). "other" is the rest of the
 * busy time: kernel threads (writeback, block I/O, loopback softirqs) mostly. */
enum { CPU_PG, CPU_ROUTER, CPU_STORE1, CPU_STORE2, CPU_CLIENT, CPU_N };
struct cpu_snap {
	double busy, all;
	double proc[CPU_N];
};

/* proc_ticks - utime + stime of one process (all its threads); 0 when gone.
 * *ppid_r gets its parent. */
static double proc_ticks(pid_t pid, pid_t *ppid_r)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* after the command name "(...)": state ppid pgrp session tty tpgid flags
	 * minflt cminflt majflt cmajflt utime stime */
	const char *p = strrchr(buf, ')');
	int ppid;
	unsigned long long ut, st;
	if (p == NULL || sscanf(p + 1, " %*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ppid, &ut, &st) != 3)
		return 0;
	if (ppid_r != NULL)
		*ppid_r = ppid;
	return (double)(ut + st);
}

static pid_t postmaster_pid(const struct cluster *cl)
{
	char path[PATH_MAX + 20];
	snprintf(path, sizeof(path), "%s/postmaster.pid", cl->pg_data);
	FILE *f = fopen(path, "r");
	int pid = 0;
	if (f != NULL) {
		if (fscanf(f, "%d", &pid) != 1)
			pid = 0;
		fclose(f);
	}
	return (pid_t)pid;
}

static void cpu_snap(const struct cluster *cl, struct cpu_snap *s)
{
	memset(s, 0, sizeof(*s));
	FILE *f = fopen("/proc/stat", "r");
	unsigned long long v[8] = { 0 };
	if (f != NULL) {
		if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
			   &v[6], &v[7]) != 8)
			memset(v, 0, sizeof(v));
		fclose(f);
	}
	s->busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6]);
	s->all = s->busy + (double)(v[3] + v[4] + v[7]);
	pid_t pm = postmaster_pid(cl);
	if (pm > 0) {
		s->proc[CPU_PG] = proc_ticks(pm, NULL);
		DIR *d = opendir("/proc");
		struct dirent *e;
		while (d != NULL && (e = readdir(d)) != NULL) {
			pid_t pid = (pid_t)atoi(e->d_name), ppid = 0;
			if (pid <= 0)
				continue;
			double t = proc_ticks(pid, &ppid);
			if (ppid == pm)
				s->proc[CPU_PG] += t;
		}
		if (d != NULL)
			closedir(d);
	}
	s->proc[CPU_ROUTER] = proc_ticks(cl->router, NULL);
	s->proc[CPU_STORE1] = proc_ticks(cl->stores[0], NULL);
	s->proc[CPU_STORE2] = proc_ticks(cl->stores[1], NULL);
	s->proc[CPU_CLIENT] = proc_ticks(getpid(), NULL);
}

/* CPU milliseconds per operation between two snapshots, by part */
struct cpu_use {
	double busy_pct;       /* of all the machine's CPU time */
	double total, proc[CPU_N], other;
};

static struct cpu_use cpu_use(const struct cpu_snap *a, const struct cpu_snap *b, long ops)
{
	struct cpu_use u = { 0 };
	double ms = 1000.0 / (double)sysconf(_SC_CLK_TCK), n = ops > 0 ? (double)ops : 1, sum = 0;
	u.busy_pct = b->all > a->all ? 100 * (b->busy - a->busy) / (b->all - a->all) : 0;
	u.total = (b->busy - a->busy) * ms / n;
	for (int k = 0; k < CPU_N; k++) {
		u.proc[k] = (b->proc[k] - a->proc[k]) * ms / n;
		sum += u.proc[k];
	}
	u.other = u.total > sum ? u.total - sum : 0;
	return u;
}

static void cpu_print(const char *point, int streams, const struct cpu_use *u)
{
	printf("cpu point=%s streams=%d busy_pct=%.0f ms_per_op=%.3f postgres=%.3f router=%.3f stores=%.3f "
	       "client=%.3f other=%.3f\n", point, streams, u->busy_pct, u->total, u->proc[CPU_PG],
	       u->proc[CPU_ROUTER], u->proc[CPU_STORE1] + u->proc[CPU_STORE2], u->proc[CPU_CLIENT], u->other);
}

/* ---------------------------------------------------------------- load */

enum br_kind { BR_DELIVER, BR_FETCHMETA, BR_PUT };

struct bench;

struct bclient {
	struct bench *b;
	int index;
	struct rpc_client *rpc;
	uint8_t *data;
	uint64_t seq;
	double started;
	bool got_reply;
	char rcpt[64];
};

struct bench {
	struct event_base *base;
	enum br_kind kind;
	int nclients;
	double end;
	long limit;             /* stop after this many (0 = time only) */
	long started_n;
	int busy;
	long done, errors;
	double *lat;
	size_t n_lat, cap_lat;
	/* FetchMeta */
	uint64_t account_id, mailbox_id;
	size_t meta_bytes;
	struct bclient clients[BR_MAX_STREAMS];
};

static void call_start(struct bclient *c);

/* fill_message - a distinct 10 KiB message: a header of the same length every
 * time (fixed-width numbers) over the client's random body */
static void fill_message(struct bclient *c)
{
	char hdr[512];
	int n = snprintf(hdr, sizeof(hdr),
			 "From: Bench Sender <sender@remote.example>\r\nTo: <%s>\r\n"
			 "Subject: bench message %03d/%012llu\r\nMessage-ID: <%03d.%012llu.%010d@remote.example>\r\n"
			 "Date: Tue, 2 Jan 2024 10:11:12 +0000\r\nMIME-Version: 1.0\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n\r\n",
			 c->rcpt, c->index, (unsigned long long)c->seq, c->index, (unsigned long long)c->seq,
			 (int)getpid());
	if (n <= 0 || (size_t)n >= sizeof(hdr) || (size_t)n >= BR_MSG_SIZE / 2) {
		fprintf(stderr, "header does not fit\n");
		exit(1);
	}
	memcpy(c->data, hdr, (size_t)n);
}

static void call_record(struct bclient *c, enum rpc_status st, const char *message)
{
	struct bench *b = c->b;
	double t = now_sec();
	b->busy--;
	if (st == RPC_OK && c->got_reply) {
		b->done++;
		if (b->n_lat == b->cap_lat) {
			b->cap_lat = b->cap_lat ? b->cap_lat * 2 : 4096;
			b->lat = xrealloc(b->lat, b->cap_lat * sizeof(*b->lat));
		}
		b->lat[b->n_lat++] = t - c->started;
	} else if (b->errors++ < 5) {
		fprintf(stderr, "call failed: %s %s\n", rpc_status_name(st), message);
	}
	if (t < b->end && (b->limit == 0 || b->started_n < b->limit))
		call_start(c);
	else if (b->busy == 0)
		event_base_loopbreak(b->base);
}

static void deliver_on_message(struct rpc_ccall *call, const uint8_t *msg, size_t len, void *arg)
{
	struct bclient *c = arg;
	Mail__Router__V1__DeliverReply *r = mail__router__v1__deliver_reply__unpack(NULL, len, msg);
	if (r != NULL) {
		c->got_reply = r->code == MAIL__ROUTER__V1__CODE__CODE_OK && r->n_results == 1 &&
			       r->results[0]->code == MAIL__ROUTER__V1__CODE__CODE_OK;
		if (!c->got_reply && c->b->errors < 5)
			fprintf(stderr, "deliver refused: code=%d\n", (int)r->code);
		mail__router__v1__deliver_reply__free_unpacked(r, NULL);
	}
}

static void meta_on_message(struct rpc_ccall *call, const uint8_t *msg, size_t len, void *arg)
{
	struct bclient *c = arg;
	Mail__Router__V1__FetchMetaReply *r = mail__router__v1__fetch_meta_reply__unpack(NULL, len, msg);
	if (r != NULL) {
		bool ok = r->code == MAIL__ROUTER__V1__CODE__CODE_OK && r->n_messages == BR_META_MESSAGES;
		for (size_t i = 0; ok && i < r->n_messages; i++)
			ok = r->messages[i]->envelope.len > 0;
		c->got_reply = ok;
		c->b->meta_bytes = len;
		if (!ok && c->b->errors < 5)
			fprintf(stderr, "fetchmeta: code=%d messages=%zu\n", (int)r->code, r->n_messages);
		mail__router__v1__fetch_meta_reply__free_unpacked(r, NULL);
	}
}

static void put_on_message(struct rpc_ccall *call, const uint8_t *msg, size_t len, void *arg)
{
	struct bclient *c = arg;
	Mail__Store__V1__PutResponse *r = mail__store__v1__put_response__unpack(NULL, len, msg);
	if (r != NULL) {
		c->got_reply = strlen(r->id) == 64 && r->size == BR_MSG_SIZE;
		mail__store__v1__put_response__free_unpacked(r, NULL);
	}
}

static void on_done(struct rpc_ccall *call, enum rpc_status st, const char *message, void *arg)
{
	call_record(arg, st, message);
}

static const struct rpc_ccall_cbs deliver_cbs = { deliver_on_message, on_done, NULL };
static const struct rpc_ccall_cbs meta_cbs = { meta_on_message, on_done, NULL };
static const struct rpc_ccall_cbs put_cbs = { put_on_message, on_done, NULL };

/* call_start - the client's next call of the benchmark's kind */
static void call_start(struct bclient *c)
{
	struct bench *b = c->b;
	c->seq++;
	c->started = now_sec();
	c->got_reply = false;
	b->busy++;
	b->started_n++;
	if (b->kind == BR_FETCHMETA) {
		Mail__Router__V1__FetchMetaRequest req = MAIL__ROUTER__V1__FETCH_META_REQUEST__INIT;
		Mail__Router__V1__Session ses = MAIL__ROUTER__V1__SESSION__INIT;
		Mail__Router__V1__UidSet set = MAIL__ROUTER__V1__UID_SET__INIT;
		Mail__Router__V1__UidRange range = MAIL__ROUTER__V1__UID_RANGE__INIT;
		Mail__Router__V1__UidRange *ranges[1] = { &range };
		ses.account_id = b->account_id;
		range.first = 1;
		range.last = BR_META_MESSAGES;
		set.n_ranges = 1;
		set.ranges = ranges;
		req.session = &ses;
		req.mailbox_id = b->mailbox_id;
		req.uids = &set;
		req.envelope = true;
		rpc_client_unary_pb(c->rpc, BR_PATH_FETCHMETA, BR_CALL_TIMEOUT_MS, &req.base, &meta_cbs, c);
		return;
	}
	fill_message(c);
	if (b->kind == BR_PUT) {
		struct rpc_ccall *call = rpc_client_call(c->rpc, BR_PATH_PUT, BR_CALL_TIMEOUT_MS, &put_cbs, c);
		Mail__Store__V1__PutRequest req = MAIL__STORE__V1__PUT_REQUEST__INIT;
		req.size_hint = BR_MSG_SIZE;
		req.data.data = c->data;
		req.data.len = BR_MSG_SIZE;
		rpc_ccall_send_pb(call, &req.base);
		rpc_ccall_close_send(call);
		return;
	}
	Mail__Router__V1__DeliverRequest req = MAIL__ROUTER__V1__DELIVER_REQUEST__INIT;
	Mail__Router__V1__Envelope env = MAIL__ROUTER__V1__ENVELOPE__INIT;
	Mail__Router__V1__Recipient rcpt = MAIL__ROUTER__V1__RECIPIENT__INIT;
	Mail__Router__V1__Recipient *rcpts[1] = { &rcpt };
	Mail__Router__V1__Session ses = MAIL__ROUTER__V1__SESSION__INIT;
	ses.client_ip = "192.0.2.1";
	ses.session_id = "bench";
	rcpt.address = c->rcpt;
	env.mail_from = "sender@remote.example";
	env.n_recipients = 1;
	env.recipients = rcpts;
	env.session = &ses;
	req.envelope = &env;
	req.data.data = c->data;
	req.data.len = BR_MSG_SIZE;
	struct rpc_ccall *call = rpc_client_call(c->rpc, BR_PATH_DELIVER, BR_CALL_TIMEOUT_MS, &deliver_cbs, c);
	rpc_ccall_send_pb(call, &req.base);
	rpc_ccall_close_send(call);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

struct result {
	double rate, p50_ms, p99_ms, mean_ms;
	long done, errors;
	size_t reply_bytes;
};

/* bench_run - one point: nclients calls of a kind in flight for `seconds`
 * (or until limit calls were started); deliveries go to rcpt, or client k's to
 * bench<k>@bench.test when rcpt is NULL */
static struct result bench_run(const char *addr, enum br_kind kind, int nclients, double seconds, long limit,
			       const char *rcpt, uint64_t account_id, uint64_t mailbox_id)
{
	static _Atomic uint64_t salt;   /* two runs may go at once (store_put_two_nodes) */
	uint64_t seed = ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32)) +
			atomic_fetch_add(&salt, 0x9e3779b97f4a7c15ull);
	struct bench *b = XNEW(struct bench);
	b->kind = kind;
	b->nclients = nclients;
	b->limit = limit;
	b->account_id = account_id;
	b->mailbox_id = mailbox_id;
	b->base = event_base_new();
	for (int i = 0; i < nclients; i++) {
		struct bclient *c = &b->clients[i];
		c->b = b;
		c->index = i;
		c->rpc = rpc_client_new(b->base, addr, NULL);
		c->data = xmalloc(BR_MSG_SIZE);
		if (rcpt == NULL)
			snprintf(c->rcpt, sizeof(c->rcpt), "bench%d@" BR_DOMAIN, i);
		else
			snprintf(c->rcpt, sizeof(c->rcpt), "%s", rcpt);
		for (size_t j = 0; j < BR_MSG_SIZE; j++) { /* xorshift: printable random text */
			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			c->data[j] = (uint8_t)('a' + (seed >> 24) % 26);
		}
		for (size_t j = 76; j + 2 < BR_MSG_SIZE; j += 78) {
			c->data[j] = '\r';
			c->data[j + 1] = '\n';
		}
		c->data[BR_MSG_SIZE - 2] = '\r';
		c->data[BR_MSG_SIZE - 1] = '\n';
	}
	double t0 = now_sec();
	b->end = t0 + seconds;
	for (int i = 0; i < nclients && (limit == 0 || b->started_n < limit); i++)
		call_start(&b->clients[i]);
	event_base_dispatch(b->base);
	double elapsed = now_sec() - t0;
	struct result res = { .done = b->done, .errors = b->errors, .reply_bytes = b->meta_bytes };
	qsort(b->lat, b->n_lat, sizeof(double), cmp_double);
	double sum = 0;
	for (size_t i = 0; i < b->n_lat; i++)
		sum += b->lat[i];
	res.rate = (double)b->done / elapsed;
	res.p50_ms = b->n_lat ? b->lat[b->n_lat / 2] * 1e3 : 0;
	res.p99_ms = b->n_lat ? b->lat[MAIL_MIN(b->n_lat - 1, b->n_lat * 99 / 100)] * 1e3 : 0;
	res.mean_ms = b->n_lat ? sum / (double)b->n_lat * 1e3 : 0;
	for (int i = 0; i < nclients; i++) {
		rpc_client_free(&b->clients[i].rpc);
		free(b->clients[i].data);
	}
	free(b->lat);
	event_base_free(b->base);
	free(b);
	return res;
}

/* ---------------------------------------------------------------- main */

/* parse_streams - "1,16,64": up to BR_MAX_POINTS concurrencies of 1..BR_MAX_STREAMS */
static bool parse_streams(const char *s, int *out, int *n)
{
	int k = 0;
	while (*s != '\0' && k < BR_MAX_POINTS) {
		char *end;
		long v = strtol(s, &end, 10);
		if (end == s || v < 1 || v > BR_MAX_STREAMS || (*end != ',' && *end != '\0'))
			return false;
		out[k++] = (int)v;
		s = *end == ',' ? end + 1 : end;
	}
	if (k == 0 || *s != '\0')
		return false;
	*n = k;
	return true;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void default_build(char *buf, size_t size)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0) {
		snprintf(buf, size, ".");
		return;
	}
	self[n] = '\0';
	snprintf(buf, size, "%s/..", dirname(self));
}

/* provision - the accounts: bench0..63 for the streams, meta for FetchMeta */
static void provision(struct cluster *cl, uint64_t *meta_account, uint64_t *meta_mailbox)
{
	char out[256];
	psql(cl, "INSERT INTO domains (name) VALUES ('" BR_DOMAIN "')", NULL, 0);
	psql(cl, "INSERT INTO accounts (domain_id, address, password_hash) "
		 "SELECT d.id, 'bench' || g || '@" BR_DOMAIN "', '{SHA512-CRYPT}$6$x$unused' "
		 "FROM domains d, generate_series(0, 63) AS g WHERE d.name = '" BR_DOMAIN "'", NULL, 0);
	psql(cl, "INSERT INTO accounts (domain_id, address, password_hash) "
		 "SELECT id, 'meta@" BR_DOMAIN "', '{SHA512-CRYPT}$6$x$unused' FROM domains "
		 "WHERE name = '" BR_DOMAIN "'", NULL, 0);
	psql(cl, "SELECT a.id || ' ' || mb.id FROM accounts a JOIN mailboxes mb ON mb.account_id = a.id "
		 "AND mb.name = 'INBOX' WHERE a.address = 'meta@" BR_DOMAIN "'", out, sizeof(out));
	unsigned long long a = 0, m = 0;
	if (sscanf(out, "%llu %llu", &a, &m) != 2) {
		fprintf(stderr, "cannot read the meta account: %s\n", out);
		exit(1);
	}
	*meta_account = a;
	*meta_mailbox = m;
	/* a history: 20,000 older blob rows and delivery tokens, and statistics, as a
	 * server that has been running has - otherwise the plans cached in the first
	 * second (tables of a few rows: sequential scans) are what every later delivery
	 * runs, until autovacuum's ANALYZE. The blobs are unreferenced, on no node,
	 * with a grace period in the future: the GC leaves them alone (the repair
	 * job's placement scan reads them, as it reads a real server's). */
	psql(cl, "INSERT INTO blobs (id, size, refcount, nodes, unreferenced_since) "
		 "SELECT encode(sha256(('history ' || g)::bytea), 'hex'), 10240, 0, '{}', now() + interval '30 days' "
		 "FROM generate_series(1, 20000) AS g", NULL, 0);
	psql(cl, "INSERT INTO delivery_tokens (token, result) SELECT 'd:history' || g, '[]' "
		 "FROM generate_series(1, 20000) AS g", NULL, 0);
	psql(cl, "ANALYZE", NULL, 0);
	if (psql_rc(cl, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements", NULL, 0) != 0)
		printf("# pg_stat_statements not available: no per-statement figures\n");
}

/* a Put run on one node, in its own thread (store_put_two_nodes) */
struct put_run {
	const char *addr;
	int nclients;
	double seconds;
	struct result r;
};

static void *put_run_thread(void *arg)
{
	struct put_run *p = arg;
	p->r = bench_run(p->addr, BR_PUT, p->nclients, p->seconds, 0, NULL, 0, 0);
	return NULL;
}

/* median - of v[0..n) (sorts v) */
static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* the server's WAL since it started: what a delivery costs the log and the disk */
struct wal_stats {
	double bytes, fpi, records, checkpoints;
};

static void wal_stats(struct cluster *cl, struct wal_stats *w)
{
	char out[256] = "";
	memset(w, 0, sizeof(*w));
	if (psql_rc(cl, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') || ' ' || w.wal_fpi || ' ' || "
		    "w.wal_records || ' ' || (b.checkpoints_timed + b.checkpoints_req) "
		    "FROM pg_stat_wal w, pg_stat_bgwriter b", out, sizeof(out)) == 0)
		sscanf(out, "%lf %lf %lf %lf", &w->bytes, &w->fpi, &w->records, &w->checkpoints);
}

/* deliver_point - Deliver at one concurrency: the rate, the WAL and stage
 * figures, and the statements that took the server's time */
static double deliver_point(struct cluster *cl, int streams, double seconds, struct cpu_use *cpu)
{
	struct router_stats a, b;
	struct wal_stats wa, wb;
	struct cpu_snap ca, cb;
	psql_rc(cl, "SELECT pg_stat_statements_reset()", NULL, 0);
	router_stats(cl, &a);
	wal_stats(cl, &wa);
	cpu_snap(cl, &ca);
	struct result r = bench_run(cl->router_addr, BR_DELIVER, streams, seconds, 0, NULL, 0, 0);
	cpu_snap(cl, &cb);
	router_stats(cl, &b);
	wal_stats(cl, &wb);
	*cpu = cpu_use(&ca, &cb, r.done);
	double s0 = a.db_sum, c0 = a.db_count, s1 = b.db_sum, c1 = b.db_count;
	printf("router_deliver size=%d streams=%d deliveries_per_sec=%.0f p50_ms=%.2f p99_ms=%.2f "
	       "errors=%ld db_requests_per_delivery=%.1f db_request_mean_ms=%.2f\n", BR_MSG_SIZE,
	       streams, r.rate, r.p50_ms, r.p99_ms, r.errors, r.done ? (c1 - c0) / (double)r.done : 0,
	       c1 > c0 ? (s1 - s0) / (c1 - c0) * 1e3 : 0);
	double nd = r.done > 0 ? (double)r.done : 1;
	printf("router_deliver_wal streams=%d wal_bytes_per_delivery=%.0f fpi_per_delivery=%.2f "
	       "records_per_delivery=%.1f checkpoints=%.0f\n", streams, (wb.bytes - wa.bytes) / nd,
	       (wb.fpi - wa.fpi) / nd, (wb.records - wa.records) / nd, wb.checkpoints - wa.checkpoints);
	printf("router_deliver_stages streams=%d", streams);
	for (int k = 0; k < BR_N_STAGES; k++) {
		double n = b.stage_count[k] - a.stage_count[k];
		printf(" %s_ms=%.2f", br_stages[k], n > 0 ? (b.stage_sum[k] - a.stage_sum[k]) / n * 1e3 : 0);
	}
	printf("\n");
	cpu_print("deliver", streams, cpu);
	char phase[32];
	snprintf(phase, sizeof(phase), "deliver_%d", streams);
	pg_top(cl, phase);   /* where the server's time went at this load */
	fflush(stdout);
	return r.rate;
}

/* fetchmeta_point - 1,000 messages in one mailbox, then FetchMeta of their envelopes */
static void fetchmeta_point(struct cluster *cl, uint64_t meta_account, uint64_t meta_mailbox, double seconds)
{
	struct result f = bench_run(cl->router_addr, BR_DELIVER, 16, 600, BR_META_MESSAGES,
				    "meta@" BR_DOMAIN, 0, 0);
	printf("router_deliver_one_account size=%d streams=16 deliveries_per_sec=%.0f p50_ms=%.2f "
	       "p99_ms=%.2f errors=%ld\n", BR_MSG_SIZE, f.rate, f.p50_ms, f.p99_ms, f.errors);
	if (f.done == BR_META_MESSAGES) {
		struct result m = bench_run(cl->router_addr, BR_FETCHMETA, 1, seconds, 0, NULL, meta_account,
					    meta_mailbox);
		printf("router_fetchmeta messages=%d envelope=1 calls_per_sec=%.1f ms_per_call=%.2f p50_ms=%.2f "
		       "p99_ms=%.2f reply_bytes=%zu errors=%ld\n", BR_META_MESSAGES, m.rate, m.mean_ms, m.p50_ms,
		       m.p99_ms, m.reply_bytes, m.errors);
	} else {
		printf("router_fetchmeta skipped: only %ld of %d messages delivered\n", f.done, BR_META_MESSAGES);
	}
	fflush(stdout);
}

/* put_point - the store's own Put throughput, same disk, same concurrency, on
 * node 1 alone (the issue's ratio) */
static double put_point(struct cluster *cl, int streams, double seconds, struct cpu_use *cpu)
{
	struct cpu_snap ca, cb;
	cpu_snap(cl, &ca);
	struct result r = bench_run(cl->store_addr, BR_PUT, streams, seconds, 0, NULL, 0, 0);
	cpu_snap(cl, &cb);
	*cpu = cpu_use(&ca, &cb, r.done);
	printf("store_put size=%d clients=%d puts_per_sec=%.0f p50_ms=%.2f p99_ms=%.2f errors=%ld\n",
	       BR_MSG_SIZE, streams, r.rate, r.p50_ms, r.p99_ms, r.errors);
	cpu_print("store_put", streams, cpu);
	fflush(stdout);
	return r.rate;
}

/* put2_point - both nodes taking Puts at once: what the W = 2 copies of the
 * deliveries cost the stores when the two nodes share this machine's disk and
 * cores; the rate per node */
static double put2_point(struct cluster *cl, int streams, double seconds)
{
	struct put_run pr[2];
	pthread_t th[2];
	char addr2[64];
	snprintf(addr2, sizeof(addr2), "127.0.0.1:%d", cl->store_ports[1]);
	for (int k = 0; k < 2; k++) {
		memset(&pr[k], 0, sizeof(pr[k]));
		pr[k].addr = k == 0 ? cl->store_addr : addr2;
		pr[k].nclients = streams;
		pr[k].seconds = seconds;
		if (pthread_create(&th[k], NULL, put_run_thread, &pr[k]) != 0) {
			perror("pthread_create");
			exit(1);
		}
	}
	for (int k = 0; k < 2; k++)
		pthread_join(th[k], NULL);
	double per_node = (pr[0].r.rate + pr[1].r.rate) / 2;
	printf("store_put_two_nodes size=%d clients_per_node=%d puts_per_sec_per_node=%.0f "
	       "p50_ms=%.2f/%.2f p99_ms=%.2f/%.2f errors=%ld\n", BR_MSG_SIZE, streams, per_node,
	       pr[0].r.p50_ms, pr[1].r.p50_ms, pr[0].r.p99_ms, pr[1].r.p99_ms, pr[0].r.errors + pr[1].r.errors);
	fflush(stdout);
	return per_node;
}

/* one concurrency of one round: the three rates, measured back to back */
struct point {
	double deliver, put, put2;
	struct cpu_use deliver_cpu, put_cpu;
};

static double ratio(double a, double b)
{
	return b > 0 ? a / b : 0.0;
}

/* point_ratios - the round's ratios at one concurrency. Each delivery is one
 * Put on each node, so even a router and a database that cost nothing deliver
 * no faster than both nodes take Puts at once: put2/put is the highest the
 * issue's ratio can be on this machine (the ceiling). */
static void point_ratios(int streams, const struct point *p)
{
	printf("deliver_vs_store_put streams=%d ratio=%.2f target=0.50 %s\n", streams, ratio(p->deliver, p->put),
	       ratio(p->deliver, p->put) >= 0.5 ? "met" : "missed");
	printf("deliver_vs_two_node_put streams=%d ratio=%.2f\n", streams, ratio(p->deliver, p->put2));
	printf("deliver_vs_store_put_ceiling streams=%d ceiling=%.2f (two_node_put_per_node/store_put)\n",
	       streams, ratio(p->put2, p->put));
	/* when the deliveries kept every core busy, the rate is the CPU over the CPU
	 * a delivery takes; if the router, PostgreSQL and the kernel's other work
	 * took none, a delivery would still take the two stores' and the client's */
	const struct cpu_use *u = &p->deliver_cpu;
	double floor_ms = u->proc[CPU_STORE1] + u->proc[CPU_STORE2] + u->proc[CPU_CLIENT];
	double cpu_max = floor_ms > 0 ? p->deliver * u->total / floor_ms : 0;
	if (u->busy_pct >= 90)
		printf("deliver_vs_store_put_cpu_ceiling streams=%d busy_pct=%.0f deliveries_per_sec_max=%.0f "
		       "ratio_max=%.2f (stores+client cpu per delivery %.3f ms of %.3f)\n", streams, u->busy_pct,
		       cpu_max, ratio(cpu_max, p->put), floor_ms, u->total);
	else
		printf("deliver_vs_store_put_cpu_ceiling streams=%d busy_pct=%.0f (not cpu-bound: no ceiling)\n",
		       streams, u->busy_pct);
	/* the CPU budget of the target: at half the Put rate, with every core busy,
	 * a delivery may take cores * 1000 / rate ms; its two Puts take at least
	 * twice what one Put took the stores at the Put point, its client what it
	 * took here; PostgreSQL, the router and the rest get what is left */
	const struct cpu_use *pu = &p->put_cpu;
	double target = p->put / 2, cores = (double)sysconf(_SC_NPROCESSORS_ONLN);
	if (target > 0 && cores > 0) {
		double per = cores * 1000 / target;
		double puts = 2 * (pu->proc[CPU_STORE1] + pu->proc[CPU_STORE2]);
		double left = per - puts - u->proc[CPU_CLIENT];
		double used = u->proc[CPU_PG] + u->proc[CPU_ROUTER] + u->other;
		printf("deliver_cpu_budget streams=%d target_per_sec=%.0f cpu_ms_per_delivery=%.3f two_puts_ms=%.3f "
		       "left_for_postgres_router_other_ms=%.3f they_took_ms=%.3f (postgres=%.3f router=%.3f "
		       "other=%.3f)\n", streams, target, per, puts, left, used, u->proc[CPU_PG], u->proc[CPU_ROUTER],
		       u->other);
	}
	fflush(stdout);
}

/* cpu_median - per part, the median over the rounds of the CPU a delivery and
 * a Put took at concurrency index i */
static void cpu_median(int streams, struct point pt[][BR_MAX_POINTS], int repeat, int i)
{
	for (int kind = 0; kind < 2; kind++) {
		double v[CPU_N + 3][BR_MAX_REPEAT];
		for (int rep = 0; rep < repeat; rep++) {
			const struct cpu_use *u = kind == 0 ? &pt[rep][i].deliver_cpu : &pt[rep][i].put_cpu;
			for (int k = 0; k < CPU_N; k++)
				v[k][rep] = u->proc[k];
			v[CPU_N][rep] = u->other;
			v[CPU_N + 1][rep] = u->total;
			v[CPU_N + 2][rep] = u->busy_pct;
		}
		double m[CPU_N + 3];
		for (int k = 0; k < CPU_N + 3; k++)
			m[k] = median(v[k], repeat);
		printf("median_cpu point=%s streams=%d busy_pct=%.0f ms_per_op=%.3f postgres=%.3f router=%.3f "
		       "stores=%.3f client=%.3f other=%.3f\n", kind == 0 ? "deliver" : "store_put", streams,
		       m[CPU_N + 2], m[CPU_N + 1], m[CPU_PG], m[CPU_ROUTER], m[CPU_STORE1] + m[CPU_STORE2],
		       m[CPU_CLIENT], m[CPU_N]);
	}
}

int main(int argc, char **argv)
{
	char build[PATH_MAX];
	const char *parent = "/tmp";
	double seconds = 5;
	bool keep = false, deliver_only = false;
	int repeat = 1;
	int streams[BR_MAX_POINTS] = { 1, 16, 64 }, np = 3;
	default_build(build, sizeof(build));
	if (getenv("MAIL_PG_BIN") != NULL)
		pg_bin = getenv("MAIL_PG_BIN");
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--build-dir=", 12) == 0)
			snprintf(build, sizeof(build), "%s", argv[i] + 12);
		else if (strncmp(argv[i], "--dir=", 6) == 0 && strlen(argv[i]) < 6 + 150)
			parent = argv[i] + 6;
		else if (strncmp(argv[i], "--seconds=", 10) == 0)
			seconds = atof(argv[i] + 10);
		else if (strncmp(argv[i], "--pg-bin=", 9) == 0)
			pg_bin = argv[i] + 9;
		else if (strcmp(argv[i], "--keep") == 0)
			keep = true;
		else if (strncmp(argv[i], "--repeat=", 9) == 0 && atoi(argv[i] + 9) >= 1 &&
			 atoi(argv[i] + 9) <= BR_MAX_REPEAT)
			repeat = atoi(argv[i] + 9);
		else if (strncmp(argv[i], "--router-arg=", 13) == 0 && n_router_extra < 16)
			router_extra[n_router_extra++] = argv[i] + 13;
		else if (strncmp(argv[i], "--store-arg=", 12) == 0 && n_store_extra < 16)
			store_extra[n_store_extra++] = argv[i] + 12;
		else if (strcmp(argv[i], "--deliver-only") == 0)
			deliver_only = true;
		else if (strncmp(argv[i], "--streams=", 10) == 0 && parse_streams(argv[i] + 10, streams, &np))
			;
		else {
			fprintf(stderr, "usage: %s [--build-dir=DIR] [--dir=PARENT] [--seconds=N] [--pg-bin=DIR] "
				"[--keep] [--repeat=N] [--streams=N,...] [--deliver-only] "
				"[--router-arg=--key=value ...] [--store-arg=--key=value ...]\n", argv[0]);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	log_init("bench_router", LOG_LEVEL_WARN);
	as_root = geteuid() == 0;

	struct cluster *cl = XNEW(struct cluster);
	snprintf(cl->dir, sizeof(cl->dir), "%s/br-XXXXXX", parent);
	if (mkdtemp(cl->dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	chmod(cl->dir, 0755);
	chown_postgres(cl->dir);
	printf("# cluster under %s: PostgreSQL (fsync on), 2 store nodes, 1 router (R=W=2), %s; %.0f s per point\n",
	       cl->dir, build, seconds);
	fflush(stdout);
	cluster_start(cl, build);
	uint64_t meta_account, meta_mailbox;
	provision(cl, &meta_account, &meta_mailbox);

	/* the router is ready when a delivery goes through */
	struct result w = { 0 };
	for (int i = 0; i < 300 && w.done == 0; i++) {
		w = bench_run(cl->router_addr, BR_DELIVER, 1, 30, 1, NULL, 0, 0);
		if (w.done == 0)
			usleep(100000);
	}
	if (w.done == 0) {
		fprintf(stderr, "the router never delivered; see %s/router.log\n", cl->dir);
		cluster_stop(cl);
		return 1;
	}

	/* each concurrency's Deliver and Put figures are taken back to back, so that
	 * a ratio compares runs a few seconds apart (this VM's disk drifts by a third
	 * and more from one minute to the next) */
	struct point pt[BR_MAX_REPEAT][BR_MAX_POINTS];
	for (int rep = 0; rep < repeat; rep++) {
		if (repeat > 1)
			printf("# round %d of %d\n", rep + 1, repeat);
		for (int i = 0; i < np; i++) {
			pt[rep][i].deliver = deliver_point(cl, streams[i], seconds, &pt[rep][i].deliver_cpu);
			if (deliver_only)
				continue;
			pt[rep][i].put = put_point(cl, streams[i], seconds, &pt[rep][i].put_cpu);
			pt[rep][i].put2 = put2_point(cl, streams[i], seconds);
			point_ratios(streams[i], &pt[rep][i]);
		}
		if (rep == 0 && !deliver_only)
			fetchmeta_point(cl, meta_account, meta_mailbox, seconds);
	}
	if (repeat > 1 && !deliver_only)
		for (int i = 0; i < np; i++) {
			double d[BR_MAX_REPEAT], r1[BR_MAX_REPEAT], r2[BR_MAX_REPEAT], c[BR_MAX_REPEAT];
			for (int rep = 0; rep < repeat; rep++) {
				d[rep] = pt[rep][i].deliver;
				r1[rep] = ratio(pt[rep][i].deliver, pt[rep][i].put);
				r2[rep] = ratio(pt[rep][i].deliver, pt[rep][i].put2);
				c[rep] = ratio(pt[rep][i].put2, pt[rep][i].put);
			}
			double dm = median(d, repeat), r1m = median(r1, repeat), r2m = median(r2, repeat);
			double cm = median(c, repeat);
			printf("median rounds=%d streams=%d deliveries_per_sec=%.0f (%.0f..%.0f) ratio=%.2f (%.2f..%.2f) "
			       "target=0.50 %s ratio_two_node=%.2f (%.2f..%.2f) ceiling=%.2f (%.2f..%.2f)\n", repeat,
			       streams[i], dm, d[0], d[repeat - 1], r1m, r1[0], r1[repeat - 1],
			       r1m >= 0.5 ? "met" : "missed", r2m, r2[0], r2[repeat - 1], cm, c[0], c[repeat - 1]);
			cpu_median(streams[i], pt, repeat, i);
		}

	cluster_stop(cl);
	if (!keep)
		nftw(cl->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	else
		printf("# kept %s\n", cl->dir);
	free(cl);
	return 0;
}
