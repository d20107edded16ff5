/* bench_store.c - the blob store's Put throughput against the machine's raw
 * fsync rate, on the same filesystem.
 *
 *   bench_store [--store=PATH] [--dir=PARENT] [--seconds=N] [--mode=syncfs,batch,pool]
 *               [--addr=HOST:PORT]   (put load only, against a running mail-store)
 *
 * 1. fsync_raw: append 4 KiB to one file + fsync, for N seconds;
 *    fsync_cycle: create + write 4 KiB + fsync + rename + fsync(dir), the
 *    work of one durable blob done one at a time.
 * 2. For each sync mode: spawns mail-store (PATH, default the mail-store of
 *    the same build) on a fresh data dir under PARENT (default /tmp), and
 *    puts distinct random 4 KiB and 100 KiB blobs through our own gRPC client
 *    (proto/rpc.h) with 1, 16 and 64 concurrent clients (one connection
 *    each), N seconds per point. Prints one line per point:
 *    store_put size=4096 clients=64 mode=syncfs blobs_per_sec=... MiB_per_sec=... p50_ms=... p99_ms=...
 * Nothing is asserted; the target is blobs_per_sec at 64 clients above
 * fsync_cycle (group commit working). */
#include "bench_ports.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "store.pb-c.h"
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <event2/event.h>

#define BENCH_PUT_PATH "/mail.store.v1.BlobStore/Put"
#define BENCH_MAX_CLIENTS 64
#define BENCH_CHUNK (64 * 1024)
#define BENCH_PUT_TIMEOUT_MS 30000

static double now_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- raw fsync */

/* bench_fsync_raw - appends of 4 KiB, each followed by fsync */
static void bench_fsync_raw(const char *dir, double seconds)
{
	char *path = xasprintf("%s/fsync-raw", dir);
	uint8_t buf[4096];
	memset(buf, 'x', sizeof(buf));
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		fprintf(stderr, "open %s: %s\n", path, strerror(errno));
		exit(1);
	}
	long n = 0;
	double t0 = now_sec(), end = t0 + seconds, t;
	do {
		if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) || fsync(fd) < 0) {
			fprintf(stderr, "write/fsync: %s\n", strerror(errno));
			exit(1);
		}
		n++;
	} while ((t = now_sec()) < end);
	close(fd);
	unlink(path);
	free(path);
	printf("fsync_raw per_sec=%.0f (write 4 KiB + fsync, %ld in %.1f s)\n", (double)n / (t - t0), n, t - t0);
}

/* bench_fsync_cycle - the full durable-file protocol, one file at a time */
static void bench_fsync_cycle(const char *dir, double seconds)
{
	char *tdir = xasprintf("%s/cycle-tmp", dir), *ddir = xasprintf("%s/cycle-dst", dir);
	uint8_t buf[4096];
	memset(buf, 'y', sizeof(buf));
	mkdir(tdir, 0700);
	mkdir(ddir, 0700);
	int tfd = open(tdir, O_RDONLY | O_DIRECTORY);
	int dfd = open(ddir, O_RDONLY | O_DIRECTORY);
	long n = 0;
	double t0 = now_sec(), end = t0 + seconds, t;
	do {
		char name[32];
		snprintf(name, sizeof(name), "f%ld", n);
		int fd = openat(tfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) || fsync(fd) < 0 ||
		    close(fd) < 0 || renameat(tfd, name, dfd, name) < 0 || fsync(dfd) < 0) {
			fprintf(stderr, "cycle: %s\n", strerror(errno));
			exit(1);
		}
		n++;
	} while ((t = now_sec()) < end);
	for (long i = 0; i < n; i++) {
		char name[32];
		snprintf(name, sizeof(name), "f%ld", i);
		unlinkat(dfd, name, 0);
	}
	close(tfd);
	close(dfd);
	rmdir(tdir);
	rmdir(ddir);
	free(tdir);
	free(ddir);
	printf("fsync_cycle per_sec=%.0f (create + write 4 KiB + fsync + rename + fsync dir)\n",
	       (double)n / (t - t0));
}

/* ---------------------------------------------------------------- the daemon */

/* spawn_store - mail-store on a free port; its log goes to logfile */
static pid_t spawn_store(const char *exe, const char *data_dir, const char *mode, int port,
			 const char *logfile)
{
	char *a_listen = xasprintf("--listen=127.0.0.1:%d", port);
	char *a_dir = xasprintf("--data-dir=%s", data_dir);
	char *a_mode = xasprintf("--sync-mode=%s", mode);
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(1);
	}
	if (pid == 0) {
		int fd = open(logfile, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(exe, exe, a_listen, a_dir, a_mode, "--metrics-listen=", "--min-free=0",
		      (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", exe, strerror(errno));
		_exit(127);
	}
	free(a_listen);
	free(a_dir);
	free(a_mode);
	for (int i = 0; i < 500 && !port_open(port); i++) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			fprintf(stderr, "mail-store exited early; see %s\n", logfile);
			exit(1);
		}
		usleep(10000);
	}
	return pid;
}

static void stop_store(pid_t pid)
{
	int st;
	kill(pid, SIGTERM);
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fprintf(stderr, "mail-store exit status %d\n", st);
}

/* ---------------------------------------------------------------- put load */

struct bench;

struct bclient {
	struct bench *b;
	int index;
	struct rpc_client *rpc;
	uint8_t *data;
	uint64_t seq;
	double started;
	bool got_reply;
	bool busy;
};

struct bench {
	struct event_base *base;
	size_t size;
	int nclients;
	double end;
	int busy;
	long done, errors;
	double *lat;
	size_t n_lat, cap_lat;
	struct bclient clients[BENCH_MAX_CLIENTS];
};

static void put_start(struct bclient *c);

/* put_on_message - the PutResponse must name a 64-char id of the right size */
static void put_on_message(struct rpc_ccall *call, const uint8_t *msg, size_t len, void *arg)
{
	struct bclient *c = arg;
	Mail__Store__V1__PutResponse *r = mail__store__v1__put_response__unpack(NULL, len, msg);
	if (r != NULL) {
		c->got_reply = strlen(r->id) == 64 && r->size == c->b->size;
		mail__store__v1__put_response__free_unpacked(r, NULL);
	}
}

/* put_on_done - record the latency, start the next put until time is up */
static void put_on_done(struct rpc_ccall *call, enum rpc_status st, const char *message, void *arg)
{
	struct bclient *c = arg;
	struct bench *b = c->b;
	double t = now_sec();
	c->busy = false;
	b->busy--;
	if (st == RPC_OK && c->got_reply) {
		b->done++;
		if (b->n_lat == b->cap_lat) {
			b->cap_lat = b->cap_lat ? b->cap_lat * 2 : 4096;
			b->lat = xrealloc(b->lat, b->cap_lat * sizeof(*b->lat));
		}
		b->lat[b->n_lat++] = t - c->started;
	} else {
		if (b->errors++ < 5)
			fprintf(stderr, "put failed: %s %s\n", rpc_status_name(st), message);
	}
	if (t < b->end)
		put_start(c);
	else if (b->busy == 0)
		event_base_loopbreak(b->base);
}

static const struct rpc_ccall_cbs put_cbs = { put_on_message, put_on_done, NULL };

/* put_start - one Put of distinct content: the first bytes carry client and sequence */
static void put_start(struct bclient *c)
{
	struct bench *b = c->b;
	c->seq++;
	memcpy(c->data, &c->index, sizeof(c->index));
	memcpy(c->data + sizeof(c->index), &c->seq, sizeof(c->seq));
	c->started = now_sec();
	c->got_reply = false;
	c->busy = true;
	b->busy++;
	struct rpc_ccall *call = rpc_client_call(c->rpc, BENCH_PUT_PATH, BENCH_PUT_TIMEOUT_MS,
						 &put_cbs, c);
	for (size_t off = 0; off < b->size; off += BENCH_CHUNK) {
		Mail__Store__V1__PutRequest req = MAIL__STORE__V1__PUT_REQUEST__INIT;
		if (off == 0)
			req.size_hint = b->size;
		req.data.data = c->data + off;
		req.data.len = MAIL_MIN((size_t)BENCH_CHUNK, b->size - off);
		rpc_ccall_send_pb(call, &req.base);
	}
	rpc_ccall_close_send(call);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* bench_put - one point: size x clients for `seconds` */
static void bench_put(const char *addr, const char *mode, size_t size, int nclients, double seconds)
{
	struct bench b = { .size = size, .nclients = nclients };
	b.base = event_base_new();
	uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	for (int i = 0; i < nclients; i++) {
		struct bclient *c = &b.clients[i];
		c->b = &b;
		c->index = i;
		c->rpc = rpc_client_new(b.base, addr, NULL);
		c->data = xmalloc(size);
		for (size_t j = 0; j < size; j++) { /* xorshift: random, cheap, distinct per client */
			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			c->data[j] = (uint8_t)(seed >> 24);
		}
	}
	double t0 = now_sec();
	b.end = t0 + seconds;
	for (int i = 0; i < nclients; i++)
		put_start(&b.clients[i]);
	event_base_dispatch(b.base);
	double elapsed = now_sec() - t0;
	qsort(b.lat, b.n_lat, sizeof(double), cmp_double);
	double p50 = b.n_lat ? b.lat[b.n_lat / 2] : 0;
	double p99 = b.n_lat ? b.lat[MAIL_MIN(b.n_lat - 1, b.n_lat * 99 / 100)] : 0;
	double rate = (double)b.done / elapsed;
	printf("store_put size=%zu clients=%d mode=%s blobs_per_sec=%.0f MiB_per_sec=%.1f "
	       "p50_ms=%.2f p99_ms=%.2f errors=%ld\n",
	       size, nclients, mode, rate, rate * (double)size / (1024.0 * 1024.0), p50 * 1e3,
	       p99 * 1e3, b.errors);
	fflush(stdout);
	for (int i = 0; i < nclients; i++) {
		rpc_client_free(&b.clients[i].rpc);
		free(b.clients[i].data);
	}
	free(b.lat);
	event_base_free(b.base);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* default_store - the mail-store of the build this benchmark belongs to */
static void default_store(char *buf, size_t size)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0) {
		snprintf(buf, size, "mail-store");
		return;
	}
	self[n] = '\0';
	snprintf(buf, size, "%s/../store/mail-store", dirname(self));
}

int main(int argc, char **argv)
{
	char store[PATH_MAX];
	const char *parent = "/tmp";
	const char *modes = "syncfs,batch,pool";
	const char *ext_addr = NULL;
	double seconds = 3;
	default_store(store, sizeof(store));
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--store=", 8) == 0)
			snprintf(store, sizeof(store), "%s", argv[i] + 8);
		else if (strncmp(argv[i], "--dir=", 6) == 0)
			parent = argv[i] + 6;
		else if (strncmp(argv[i], "--seconds=", 10) == 0)
			seconds = atof(argv[i] + 10);
		else if (strncmp(argv[i], "--mode=", 7) == 0)
			modes = argv[i] + 7;
		else if (strncmp(argv[i], "--addr=", 7) == 0)
			ext_addr = argv[i] + 7;
		else {
			fprintf(stderr, "usage: %s [--store=PATH] [--dir=PARENT] [--seconds=N] "
				"[--mode=syncfs,batch,pool] [--addr=HOST:PORT]\n", argv[0]);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	log_init("bench_store", LOG_LEVEL_WARN);
	static const size_t sizes[] = { 4096, 100 * 1024 };
	static const int clients[] = { 1, 16, 64 };
	if (ext_addr != NULL) {
		for (size_t s = 0; s < N_ELEMENTS(sizes); s++)
			for (size_t c = 0; c < N_ELEMENTS(clients); c++)
				bench_put(ext_addr, "external", sizes[s], clients[c], seconds);
		return 0;
	}
	char root[PATH_MAX];
	snprintf(root, sizeof(root), "%s/bench-store-XXXXXX", parent);
	if (mkdtemp(root) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	printf("# data under %s, %.0f s per point, mail-store %s\n", root, seconds, store);
	bench_fsync_raw(root, seconds);
	bench_fsync_cycle(root, seconds);

	char *mlist = xstrdup(modes), *save = NULL;
	for (char *mode = strtok_r(mlist, ",", &save); mode != NULL; mode = strtok_r(NULL, ",", &save)) {
		char *dir = xasprintf("%s/data-%s", root, mode);
		char *logf = xasprintf("%s/store-%s.log", root, mode);
		char addr[64];
		int port = free_port();
		snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
		pid_t pid = spawn_store(store, dir, mode, port, logf);
		for (size_t s = 0; s < N_ELEMENTS(sizes); s++)
			for (size_t c = 0; c < N_ELEMENTS(clients); c++)
				bench_put(addr, mode, sizes[s], clients[c], seconds);
		stop_store(pid);
		free(dir);
		free(logf);
	}
	free(mlist);
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
