/* service.h - mail.store.v1.BlobStore on the gRPC runtime: request
 * validation, streaming with back-pressure, metrics. The file work is
 * blobfs's; this module only maps it onto calls. One service per process. */
#ifndef MAIL_STORE_SERVICE_H
#define MAIL_STORE_SERVICE_H
#include "lib/common.h"

struct blobfs;
struct daemon;
struct daemon_worker;
struct rpc_method;

#define STORE_DEFAULT_LIST_LIMIT 1000
#define STORE_MAX_LIST_LIMIT 10000

struct store_service_opts {
	struct blobfs *fs;
	struct daemon *daemon;     /* worker holds keep a drain waiting for calls */
	uint64_t max_blob_size;    /* larger puts: RESOURCE_EXHAUSTED */
	size_t max_puts;           /* puts in progress at once (open temp files) */
};

/* store_service_new - registers the store_* metrics */
struct store_service *store_service_new(const struct store_service_opts *opts);
void store_service_free(struct store_service **svcp);
/* store_service_methods - the BlobStore method table for rpc_server_new */
const struct rpc_method *store_service_methods(size_t *n_r);
/* store_service_on_batch - blobfs_opts.on_batch: batch size and duration
 * metrics (any thread; usable before store_service_new) */
void store_service_on_batch(void *arg, size_t n, double seconds);
/* on each worker's thread: its completion queue for commits and deletes */
void store_service_worker_start(struct store_service *svc, struct daemon_worker *w);
/* store_service_worker_stop - after the worker's calls were cancelled:
 * waits for its commits still on a sync thread and frees their state */
void store_service_worker_stop(struct store_service *svc, struct daemon_worker *w);
#endif
