/* service.c - the BlobStore handlers (proto/store.proto) on rpc_server.
 *
 * Every call gets a struct store_req (the call's data) that holds the
 * worker (so a drain waits for it) and whatever the method needs: a put in
 * progress, a reader. Writes go to the page cache on the loop thread; only
 * the durable part of a commit or delete runs on blobfs's sync threads, and
 * its result comes back on this worker's blob_cq.
 *
 * Ownership: the service owns each store_req. When the runtime cancels a
 * call (on_cancel) the req forgets the call pointer at once; if a blobfs job
 * still holds the req (req->pending), the job's callback frees it later and
 * drops the result quietly, otherwise it is freed in on_cancel. A callback
 * never touches a call that is gone. */
#include "lib/common.h"
#include "store/service.h"
#include "store/blobfs.h"
#include "lib/daemon.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/xalloc.h"
#include "proto/rpc.h"
#include "store.pb-c.h"
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

enum store_method { STORE_PUT, STORE_GET, STORE_STAT, STORE_DELETE, STORE_LIST, STORE_N_METHODS };
static const char *const store_method_names[STORE_N_METHODS] = {
	"put", "get", "stat", "delete", "list"
};

struct store_metrics {
	struct metric *requests[STORE_N_METHODS];
	struct metric *seconds[STORE_N_METHODS];
	struct metric *put_bytes, *get_bytes, *corrupt;
	struct metric *batch_size, *batch_seconds;
};

struct store_worker {
	struct blob_cq *cq;
};

struct store_service {
	struct blobfs *fs;
	struct daemon *daemon;
	uint64_t max_blob_size;
	size_t max_puts;
	_Atomic size_t open_puts;
	int n_workers;
	struct store_worker *workers;
	char instance[17];           /* StatResponse.instance: new at every start */
};

struct store_req {
	enum store_method method;
	struct store_service *svc;
	struct rpc_call *call;       /* NULL once the runtime cancelled it */
	struct daemon_worker *w;     /* held while this req lives */
	struct blob_cq *cq;
	double t0;
	bool got_request;            /* the (first) request message arrived */
	bool pending;                /* a blobfs job will call back with this req */
	/* put */
	struct blob_put *put;
	bool counted;                /* counted in open_puts */
	char expected[BLOB_ID_LEN + 1];
	/* get */
	struct blob_reader *reader;
	bool sent_first;
};

/* the method table carries no user pointer: one service per process */
static struct store_service *store_svc;
static struct store_metrics store_m;
static pthread_once_t store_metrics_once = PTHREAD_ONCE_INIT;

static double mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* store_metrics_register - every store_* metric except the disk gauges */
static void store_metrics_register(void)
{
	static const double batch_buckets[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024 };
	for (int i = 0; i < STORE_N_METHODS; i++) {
		char name[96];
		snprintf(name, sizeof(name), "store_requests_total{method=\"%s\"}", store_method_names[i]);
		store_m.requests[i] = metric_counter(name, "BlobStore requests by method");
		snprintf(name, sizeof(name), "store_request_seconds{method=\"%s\"}", store_method_names[i]);
		store_m.seconds[i] = metric_histogram(name, "BlobStore request duration", NULL, 0);
	}
	store_m.put_bytes = metric_counter("store_put_bytes_total", "content bytes received by Put");
	store_m.get_bytes = metric_counter("store_get_bytes_total", "content bytes sent by Get");
	store_m.corrupt = metric_counter("store_corrupt_total",
					 "blobs that failed a checksum (quarantined)");
	store_m.batch_size = metric_histogram("store_fsync_batch_size",
					      "commits and deletes made durable together",
					      batch_buckets, N_ELEMENTS(batch_buckets));
	store_m.batch_seconds = metric_histogram("store_fsync_batch_seconds",
						 "time to make one batch durable", NULL, 0);
}

void store_service_on_batch(void *arg, size_t n, double seconds)
{
	pthread_once(&store_metrics_once, store_metrics_register);
	metric_observe(store_m.batch_size, (double)n);
	metric_observe(store_m.batch_seconds, seconds);
}

static double gauge_disk_free(void *arg)
{
	uint64_t v = 0;
	(void)blobfs_space(arg, &v, NULL);
	return (double)v;
}

static double gauge_disk_total(void *arg)
{
	uint64_t v = 0;
	(void)blobfs_space(arg, NULL, &v);
	return (double)v;
}

static double gauge_blobs(void *arg)
{
	return (double)blobfs_blob_count(arg);
}

/* blob_status - a blobfs result as a gRPC status */
static enum rpc_status blob_status(enum blob_result r, const char **msg_r)
{
	switch (r) {
	case BLOB_OK:
	case BLOB_PENDING:
		*msg_r = "";
		return RPC_OK;
	case BLOB_NOT_FOUND:
		*msg_r = "no such blob";
		return RPC_NOT_FOUND;
	case BLOB_MISMATCH:
		*msg_r = "content does not match expected_id";
		return RPC_INVALID_ARGUMENT;
	case BLOB_NO_SPACE:
		*msg_r = "disk nearly full";
		return RPC_RESOURCE_EXHAUSTED;
	case BLOB_CORRUPT:
		*msg_r = "stored blob is corrupt";
		return RPC_DATA_LOSS;
	case BLOB_RANGE:
		*msg_r = "offset beyond the end of the blob";
		return RPC_OUT_OF_RANGE;
	case BLOB_IO:
		break;
	}
	*msg_r = "I/O error on the store node";
	return RPC_INTERNAL;
}

/* ------------------------------------------------------------- requests */

static struct store_req *req_new(struct rpc_call *call, enum store_method method)
{
	struct store_service *svc = store_svc;
	struct store_req *req = XNEW(struct store_req);
	int widx = rpc_call_worker(call);
	req->method = method;
	req->svc = svc;
	req->call = call;
	req->t0 = mono_now();
	req->w = daemon_worker_get(svc->daemon, widx);
	if (req->w == NULL || widx >= svc->n_workers)
		log_panic("call on an unknown worker", "worker=%d", widx);
	req->cq = svc->workers[widx].cq;
	daemon_worker_hold(req->w);
	metric_inc(store_m.requests[method]);
	rpc_call_set_data(call, req);
	return req;
}

/* req_free - the request is over: its duration, its resources, the worker hold */
static void req_free(struct store_req *req)
{
	metric_observe(store_m.seconds[req->method], mono_now() - req->t0);
	blob_put_abort(&req->put);
	blob_reader_free(&req->reader);
	if (req->counted)
		atomic_fetch_sub(&req->svc->open_puts, 1);
	daemon_worker_release(req->w);
	free(req);
}

/* req_finish - end the call with a status and free the req */
static void req_finish(struct store_req *req, enum rpc_status st, const char *msg)
{
	if (req->call != NULL) {
		if (st != RPC_OK)
			log_debug("store request failed", "call=%" PRIu64 " method=%s status=%s msg=\"%s\"",
				  rpc_call_id(req->call), store_method_names[req->method],
				  rpc_status_name(st), msg ? msg : "");
		rpc_call_set_data(req->call, NULL);
		rpc_call_finish(req->call, st, msg);
		req->call = NULL;
	}
	req_free(req);
}

static void req_finish_blob(struct store_req *req, enum blob_result r)
{
	const char *msg;
	enum rpc_status st = blob_status(r, &msg);
	if (r == BLOB_CORRUPT)
		metric_inc(store_m.corrupt);
	req_finish(req, st, msg);
}

/* req_get - this call's req, NULL if it already finished */
static struct store_req *req_get(struct rpc_call *call)
{
	return rpc_call_data(call);
}

/* on_cancel for every method */
static void store_on_cancel(struct rpc_call *call)
{
	struct store_req *req = req_get(call);
	if (req == NULL)
		return;
	rpc_call_set_data(call, NULL);
	req->call = NULL;
	if (req->pending)
		return; /* the blobfs callback frees it */
	req_free(req);
}

/* valid_id_arg - a request id field: exactly 64 lowercase hex chars */
static bool valid_id_arg(const char *s)
{
	return s != NULL && blob_id_valid(s, strnlen(s, BLOB_ID_LEN + 1));
}

/* unary methods end in on_message; a half-close with no message is an error */
static void store_on_half_close_unary(struct rpc_call *call)
{
	struct store_req *req = req_get(call);
	if (req != NULL && !req->got_request)
		req_finish(req, RPC_INVALID_ARGUMENT, "missing request message");
}

/* second_message - unary and server-streaming calls take one request */
static bool second_message(struct store_req *req)
{
	if (!req->got_request) {
		req->got_request = true;
		return false;
	}
	if (!req->pending)
		req_finish(req, RPC_INVALID_ARGUMENT, "one request message expected");
	return true;
}

/* ------------------------------------------------------------------ Put */

static void put_on_start(struct rpc_call *call)
{
	req_new(call, STORE_PUT);
}

/* put_begin - the first message (or none at all): limits, then a temp file */
static bool put_begin(struct store_req *req, const char *expected_id, uint64_t size_hint)
{
	struct store_service *svc = req->svc;
	if (expected_id != NULL && expected_id[0] != '\0') {
		if (!valid_id_arg(expected_id)) {
			req_finish(req, RPC_INVALID_ARGUMENT, "expected_id is not 64 lowercase hex chars");
			return false;
		}
		memcpy(req->expected, expected_id, BLOB_ID_LEN + 1);
	}
	if (size_hint > svc->max_blob_size) {
		req_finish(req, RPC_RESOURCE_EXHAUSTED, "blob larger than max_blob_size");
		return false;
	}
	req->counted = true;
	if (atomic_fetch_add(&svc->open_puts, 1) >= svc->max_puts) {
		log_info("put refused: too many puts in progress", "max_puts=%zu", svc->max_puts);
		req_finish(req, RPC_RESOURCE_EXHAUSTED, "too many puts in progress");
		return false;
	}
	enum blob_result r = blob_put_begin(svc->fs, size_hint, &req->put);
	if (r != BLOB_OK) {
		req_finish_blob(req, r);
		return false;
	}
	req->got_request = true;
	return true;
}

/* put_on_message - one chunk: checked against the limits, appended to the temp file */
static void put_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct store_req *req = req_get(call);
	if (req == NULL || req->pending)
		return;
	Mail__Store__V1__PutRequest *pr = mail__store__v1__put_request__unpack(NULL, len, msg);
	if (pr == NULL) {
		req_finish(req, RPC_INVALID_ARGUMENT, "malformed PutRequest");
		return;
	}
	if (!req->got_request && !put_begin(req, pr->expected_id, pr->size_hint))
		goto out;
	if (pr->data.len > RPC_CHUNK_SIZE) {
		req_finish(req, RPC_INVALID_ARGUMENT, "chunk larger than 64 KiB");
		goto out;
	}
	if (pr->data.len > req->svc->max_blob_size - blob_put_size(req->put)) {
		req_finish(req, RPC_RESOURCE_EXHAUSTED, "blob larger than max_blob_size");
		goto out;
	}
	enum blob_result r = blob_put_write(req->put, pr->data.data, pr->data.len);
	if (r != BLOB_OK) {
		req_finish_blob(req, r);
		goto out;
	}
	metric_add(store_m.put_bytes, (double)pr->data.len);
out:
	mail__store__v1__put_request__free_unpacked(pr, NULL);
}

/* put_done - a commit is durable (or failed); runs on the worker's loop */
static void put_done(const struct blob_done *done, void *arg)
{
	struct store_req *req = arg;
	req->pending = false;
	if (req->call == NULL) {
		log_debug("put committed after its call went away", "id=%s result=%s", done->id,
			  blob_result_name(done->result));
		req_free(req);
		return;
	}
	if (done->result != BLOB_OK) {
		req_finish_blob(req, done->result);
		return;
	}
	Mail__Store__V1__PutResponse resp = MAIL__STORE__V1__PUT_RESPONSE__INIT;
	resp.id = (char *)done->id;
	resp.size = done->size;
	resp.existed = done->existed;
	rpc_call_send_pb(req->call, &resp.base);
	log_debug("put done", "call=%" PRIu64 " id=%s size=%" PRIu64 " existed=%d",
		  rpc_call_id(req->call), done->id, done->size, (int)done->existed);
	req_finish(req, RPC_OK, NULL);
}

/* put_on_half_close - the last chunk arrived: verify and queue the commit */
static void put_on_half_close(struct rpc_call *call)
{
	struct store_req *req = req_get(call);
	if (req == NULL || req->pending)
		return;
	if (!req->got_request && !put_begin(req, NULL, 0))
		return;
	struct blob_put *put = req->put;
	req->put = NULL; /* consumed by the commit either way */
	enum blob_result r = blob_put_commit(put, req->expected, req->cq, put_done, req);
	if (r == BLOB_PENDING)
		req->pending = true;
	else
		req_finish_blob(req, r);
}

/* ------------------------------------------------------------------ Get */

static void get_on_start(struct rpc_call *call)
{
	req_new(call, STORE_GET);
}

/* get_pump - send verified chunks until the call's queue is full or the range ends */
static void get_pump(struct store_req *req)
{
	uint64_t size = blob_reader_size(req->reader);
	while (rpc_call_queued(req->call) < RPC_CALL_HIGH_WATER) {
		const uint8_t *data;
		size_t len;
		enum blob_result r = blob_reader_next(req->reader, &data, &len);
		if (r != BLOB_OK) {
			req_finish_blob(req, r);
			return;
		}
		if (len == 0 && req->sent_first) {
			req_finish(req, RPC_OK, NULL);
			return;
		}
		Mail__Store__V1__GetResponse resp = MAIL__STORE__V1__GET_RESPONSE__INIT;
		if (!req->sent_first)
			resp.size = size;
		resp.data.data = (uint8_t *)data;
		resp.data.len = len;
		req->sent_first = true;
		if (rpc_call_send_pb(req->call, &resp.base) < 0) {
			req_finish(req, RPC_INTERNAL, "cannot queue response");
			return;
		}
		metric_add(store_m.get_bytes, (double)len);
		if (len == 0) { /* an empty range: the size alone */
			req_finish(req, RPC_OK, NULL);
			return;
		}
	}
}

/* get_on_message - open a verified reader of the range and start streaming */
static void get_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct store_req *req = req_get(call);
	if (req == NULL || second_message(req))
		return;
	Mail__Store__V1__GetRequest *gr = mail__store__v1__get_request__unpack(NULL, len, msg);
	if (gr == NULL) {
		req_finish(req, RPC_INVALID_ARGUMENT, "malformed GetRequest");
		return;
	}
	if (!valid_id_arg(gr->id)) {
		req_finish(req, RPC_INVALID_ARGUMENT, "id is not 64 lowercase hex chars");
	} else {
		enum blob_result r = blob_reader_open(req->svc->fs, gr->id, gr->offset, gr->length,
						      &req->reader);
		if (r != BLOB_OK)
			req_finish_blob(req, r);
		else
			get_pump(req);
	}
	mail__store__v1__get_request__free_unpacked(gr, NULL);
}

/* get_on_writable - the client took enough of the queue: stream on */
static void get_on_writable(struct rpc_call *call)
{
	struct store_req *req = req_get(call);
	if (req != NULL && req->reader != NULL)
		get_pump(req);
}

/* ----------------------------------------------------------------- Stat */

static void stat_on_start(struct rpc_call *call)
{
	req_new(call, STORE_STAT);
}

/* stat_on_message - exists and content size (not found is exists=false, not an error) */
static void stat_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct store_req *req = req_get(call);
	if (req == NULL || second_message(req))
		return;
	Mail__Store__V1__StatRequest *sr = mail__store__v1__stat_request__unpack(NULL, len, msg);
	if (sr == NULL) {
		req_finish(req, RPC_INVALID_ARGUMENT, "malformed StatRequest");
		return;
	}
	if (!valid_id_arg(sr->id)) {
		req_finish(req, RPC_INVALID_ARGUMENT, "id is not 64 lowercase hex chars");
	} else {
		Mail__Store__V1__StatResponse resp = MAIL__STORE__V1__STAT_RESPONSE__INIT;
		uint64_t size = 0;
		enum blob_result r = blob_stat(req->svc->fs, sr->id, &size);
		if (r == BLOB_OK || r == BLOB_NOT_FOUND) {
			resp.exists = r == BLOB_OK;
			resp.size = size;
			resp.instance = req->svc->instance;
			rpc_call_send_pb(call, &resp.base);
			req_finish(req, RPC_OK, NULL);
		} else {
			req_finish_blob(req, r);
		}
	}
	mail__store__v1__stat_request__free_unpacked(sr, NULL);
}

/* --------------------------------------------------------------- Delete */

static void delete_on_start(struct rpc_call *call)
{
	req_new(call, STORE_DELETE);
}

/* delete_done - the unlink is durable; runs on the worker's loop */
static void delete_done(const struct blob_done *done, void *arg)
{
	struct store_req *req = arg;
	req->pending = false;
	if (req->call == NULL || done->result != BLOB_OK) {
		if (req->call != NULL)
			req_finish_blob(req, done->result);
		else
			req_free(req);
		return;
	}
	Mail__Store__V1__DeleteResponse resp = MAIL__STORE__V1__DELETE_RESPONSE__INIT;
	resp.existed = done->existed;
	rpc_call_send_pb(req->call, &resp.base);
	log_debug("delete done", "call=%" PRIu64 " id=%s existed=%d", rpc_call_id(req->call),
		  done->id, (int)done->existed);
	req_finish(req, RPC_OK, NULL);
}

/* delete_on_message - unlink now, answer once the directory is synced */
static void delete_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct store_req *req = req_get(call);
	if (req == NULL || second_message(req))
		return;
	Mail__Store__V1__DeleteRequest *dr = mail__store__v1__delete_request__unpack(NULL, len, msg);
	if (dr == NULL) {
		req_finish(req, RPC_INVALID_ARGUMENT, "malformed DeleteRequest");
		return;
	}
	if (!valid_id_arg(dr->id)) {
		req_finish(req, RPC_INVALID_ARGUMENT, "id is not 64 lowercase hex chars");
	} else {
		enum blob_result r = blob_delete(req->svc->fs, dr->id, req->cq, delete_done, req);
		if (r == BLOB_PENDING)
			req->pending = true;
		else
			req_finish_blob(req, r);
	}
	mail__store__v1__delete_request__free_unpacked(dr, NULL);
}

/* ----------------------------------------------------------------- List */

static void list_on_start(struct rpc_call *call)
{
	req_new(call, STORE_LIST);
}

/* list_on_message - one page of ids after `after`, ascending */
static void list_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct store_req *req = req_get(call);
	if (req == NULL || second_message(req))
		return;
	Mail__Store__V1__ListRequest *lr = mail__store__v1__list_request__unpack(NULL, len, msg);
	if (lr == NULL) {
		req_finish(req, RPC_INVALID_ARGUMENT, "malformed ListRequest");
		return;
	}
	if (lr->after[0] != '\0' && !valid_id_arg(lr->after)) {
		req_finish(req, RPC_INVALID_ARGUMENT, "after is not \"\" or 64 lowercase hex chars");
		mail__store__v1__list_request__free_unpacked(lr, NULL);
		return;
	}
	size_t limit = lr->limit == 0 ? STORE_DEFAULT_LIST_LIMIT
				      : MAIL_MIN((size_t)lr->limit, (size_t)STORE_MAX_LIST_LIMIT);
	struct blob_info *infos = xmalloc(limit * sizeof(*infos));
	size_t n = 0;
	bool more = false;
	enum blob_result r = blob_list(req->svc->fs, lr->after, limit, infos, &n, &more);
	if (r != BLOB_OK) {
		req_finish_blob(req, r);
	} else {
		Mail__Store__V1__BlobInfo *items = xcalloc(n ? n : 1, sizeof(*items));
		Mail__Store__V1__BlobInfo **ptrs = xcalloc(n ? n : 1, sizeof(*ptrs));
		for (size_t i = 0; i < n; i++) {
			Mail__Store__V1__BlobInfo init = MAIL__STORE__V1__BLOB_INFO__INIT;
			items[i] = init;
			items[i].id = infos[i].id;
			items[i].size = infos[i].size;
			ptrs[i] = &items[i];
		}
		Mail__Store__V1__ListResponse resp = MAIL__STORE__V1__LIST_RESPONSE__INIT;
		resp.n_blobs = n;
		resp.blobs = ptrs;
		resp.more = more;
		rpc_call_send_pb(call, &resp.base);
		req_finish(req, RPC_OK, NULL);
		free(items);
		free(ptrs);
	}
	free(infos);
	mail__store__v1__list_request__free_unpacked(lr, NULL);
}

/* ---------------------------------------------------------------- setup */

static const struct rpc_method store_methods[] = {
	{ "/mail.store.v1.BlobStore/Put", put_on_start, put_on_message, put_on_half_close,
	  store_on_cancel, NULL },
	{ "/mail.store.v1.BlobStore/Get", get_on_start, get_on_message, store_on_half_close_unary,
	  store_on_cancel, get_on_writable },
	{ "/mail.store.v1.BlobStore/Stat", stat_on_start, stat_on_message, store_on_half_close_unary,
	  store_on_cancel, NULL },
	{ "/mail.store.v1.BlobStore/Delete", delete_on_start, delete_on_message,
	  store_on_half_close_unary, store_on_cancel, NULL },
	{ "/mail.store.v1.BlobStore/List", list_on_start, list_on_message, store_on_half_close_unary,
	  store_on_cancel, NULL },
};

const struct rpc_method *store_service_methods(size_t *n_r)
{
	*n_r = N_ELEMENTS(store_methods);
	return store_methods;
}

struct store_service *store_service_new(const struct store_service_opts *opts)
{
	if (store_svc != NULL)
		log_panic("store_service_new called twice", "max_puts=%zu", opts->max_puts);
	pthread_once(&store_metrics_once, store_metrics_register);
	struct store_service *svc = XNEW(struct store_service);
	svc->fs = opts->fs;
	svc->daemon = opts->daemon;
	svc->max_blob_size = opts->max_blob_size;
	svc->max_puts = opts->max_puts;
	svc->n_workers = daemon_worker_count(opts->daemon);
	svc->workers = xcalloc((size_t)svc->n_workers, sizeof(*svc->workers));
	uint8_t rnd[8];
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		log_panic("getrandom failed", "err=\"%s\"", strerror(errno));
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(svc->instance + 2 * i, 3, "%02x", rnd[i]);
	log_info("store instance", "instance=%s", svc->instance);
	metric_gauge_fn("store_disk_free_bytes", "free bytes on the data dir's filesystem",
			gauge_disk_free, opts->fs);
	metric_gauge_fn("store_disk_total_bytes", "size of the data dir's filesystem",
			gauge_disk_total, opts->fs);
	metric_gauge_fn("store_blobs", "blobs stored (approximate)", gauge_blobs, opts->fs);
	store_svc = svc;
	return svc;
}

void store_service_free(struct store_service **svcp)
{
	struct store_service *svc = *svcp;
	if (svc == NULL)
		return;
	*svcp = NULL;
	for (int i = 0; i < svc->n_workers; i++)
		if (svc->workers[i].cq != NULL)
			log_panic("store_service_free before worker stop", "worker=%d", i);
	free(svc->workers);
	free(svc);
	store_svc = NULL;
}

void store_service_worker_start(struct store_service *svc, struct daemon_worker *w)
{
	svc->workers[w->index].cq = blob_cq_new(w->base);
}

void store_service_worker_stop(struct store_service *svc, struct daemon_worker *w)
{
	size_t n = blob_cq_inflight(svc->workers[w->index].cq);
	if (n > 0)
		log_info("waiting for commits in flight", "worker=%d count=%zu", w->index, n);
	blob_cq_free(&svc->workers[w->index].cq);
}
