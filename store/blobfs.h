/* blobfs.h - the blob node's file layer: immutable, content-addressed blobs on
 * local disk. No RPC in here; store/service.c maps these calls onto gRPC.
 *
 * Layout under the data dir:
 *   blobs/ab/cd/<id>   committed blobs (id = lowercase hex SHA-256 of the content)
 *   tmp/               puts in progress (removed at startup: a crash leaves only these)
 *   quarantine/<id>    blobs that failed a checksum, kept for a repair job
 *   lock               flock'd while a process owns the dir
 *
 * Stored file = content | CRC32 (little endian) of every block | footer
 *   footer = "MSBLOB01" | u64 content size | u32 block size | u32 CRC32 of the
 *            CRC array followed by the footer's first 20 bytes
 * so a range read verifies only the blocks it touches, and a whole read also
 * checks the SHA-256 against the id.
 *
 * Threads: the blobfs object is shared by every worker. Put/Get/Stat/List
 * run on the caller's thread (page-cache I/O); the durable part of a commit
 * or a delete (fsync, rename, directory fsync) runs on sync threads that
 * batch concurrent requests (group commit), and the result comes back on the
 * caller's event loop through a blob_cq. */
#ifndef MAIL_STORE_BLOBFS_H
#define MAIL_STORE_BLOBFS_H
#include "lib/common.h"
#include <event2/event.h>

#define BLOB_ID_LEN 64                 /* hex chars of a SHA-256 */
#define BLOB_BLOCK_SIZE (64u * 1024)   /* one CRC32 per block */
#define BLOB_FOOTER_SIZE 24
#define BLOB_SYNC_BATCH_MAX 1024       /* upper bound of sync_batch_max */
#define BLOB_SYNC_THREADS_MAX 64

enum blob_result {
	BLOB_OK = 0,
	BLOB_PENDING,   /* queued on a sync thread; the callback follows */
	BLOB_NOT_FOUND,
	BLOB_MISMATCH,  /* content does not hash to the expected id; nothing stored */
	BLOB_NO_SPACE,  /* free space under min_free (or ENOSPC) */
	BLOB_CORRUPT,   /* stored bytes fail a checksum; the file was quarantined */
	BLOB_RANGE,     /* offset beyond the end */
	BLOB_IO,        /* any other I/O error (logged with errno) */
};
const char *blob_result_name(enum blob_result r);

/* How commits are made durable (see blobfs.c for the measurements):
 *   SYNCFS: one thread takes every pending commit; one syncfs() makes this
 *           batch's data and the previous batch's renames durable, then this
 *           batch is renamed and waits for the next syncfs (pipelined).
 *   BATCH:  sync threads take every pending commit, kick writeback for all,
 *           fdatasync each, rename all, fsync each distinct directory once.
 *   POOL:   sync threads each commit one blob on its own (fdatasync, rename,
 *           directory fsync); the journal coalesces concurrent commits. */
enum blob_sync_mode { BLOB_SYNC_SYNCFS, BLOB_SYNC_BATCH, BLOB_SYNC_POOL };
/* blob_sync_mode_parse - "syncfs|batch|pool"; 0 / -1 */
int blob_sync_mode_parse(const char *s, enum blob_sync_mode *mode_r);
const char *blob_sync_mode_name(enum blob_sync_mode mode);

struct blobfs_opts {
	const char *dir;              /* data dir; created if missing */
	uint64_t min_free;            /* refuse puts below this many free bytes */
	enum blob_sync_mode sync_mode;
	int sync_threads;             /* BATCH/POOL; SYNCFS always uses one */
	size_t sync_batch_max;        /* most commits per batch; 0 = BLOB_SYNC_BATCH_MAX */
	/* on_batch (optional): called on a sync thread after each batch with
	 * its size and its duration, for metrics; must be thread-safe */
	void (*on_batch)(void *arg, size_t n, double seconds);
	void *arg;
};

struct blobfs;
struct blob_cq;
struct blob_put;
struct blob_reader;

/* blobfs_open - creates the layout, takes the dir lock, removes stale temp
 * files, counts blobs and starts the sync threads. 0 / -1 with *error_r
 * (thread-local, valid until the next call) */
int blobfs_open(const struct blobfs_opts *opts, struct blobfs **fs_r, const char **error_r);
/* blobfs_free - finishes every queued commit, stops the threads; every
 * blob_cq must have been freed before */
void blobfs_free(struct blobfs **fsp);

/* blob_id_valid - exactly 64 lowercase hex chars (pure) */
bool blob_id_valid(const char *s, size_t len);
/* blob_file_size - stored file size for a content size (pure) */
uint64_t blob_file_size(uint64_t content_size, uint32_t block_size);
/* blob_content_size - inverse of blob_file_size; 0 / -1 if no size fits (pure) */
int blob_content_size(uint64_t file_size, uint32_t block_size, uint64_t *content_r);

/* capacity and counts, any thread */
int blobfs_space(struct blobfs *fs, uint64_t *free_r, uint64_t *total_r);
int64_t blobfs_blob_count(const struct blobfs *fs);
uint64_t blobfs_corrupt_count(const struct blobfs *fs);
uint64_t blobfs_min_free(const struct blobfs *fs);
/* blobfs_ready - data dir writable and above min_free; *why_r when not */
bool blobfs_ready(struct blobfs *fs, const char **why_r);

/* ------------------------------------------------------------ completions */

struct blob_done {
	enum blob_result result;
	char id[BLOB_ID_LEN + 1];
	uint64_t size;
	bool existed;  /* put: it was already stored; delete: there was one */
};
/* runs on the blob_cq's loop thread */
typedef void blob_done_cb(const struct blob_done *done, void *arg);

/* blob_cq_new - results of async commits/deletes come back on base's thread */
struct blob_cq *blob_cq_new(struct event_base *base);
/* blob_cq_free - waits for this queue's jobs still on a sync thread, runs
 * every pending callback (on the calling thread, which must be base's), frees */
void blob_cq_free(struct blob_cq **cqp);
size_t blob_cq_inflight(struct blob_cq *cq);

/* ------------------------------------------------------------------- put */

/* blob_put_begin - checks free space against size_hint, opens a temp file */
enum blob_result blob_put_begin(struct blobfs *fs, uint64_t size_hint, struct blob_put **put_r);
/* blob_put_write - appends to the temp file (page cache) while hashing */
enum blob_result blob_put_write(struct blob_put *put, const void *data, size_t len);
uint64_t blob_put_size(const struct blob_put *put);
/* blob_put_commit - consumes put. Checks expected_id (NULL or "" = none) and
 * free space, writes the trailer and queues the durable part: BLOB_PENDING,
 * and cb(done, arg) later runs on cq's loop; any other value is a final
 * result (no callback; the temp file is gone). */
enum blob_result blob_put_commit(struct blob_put *put, const char *expected_id,
				 struct blob_cq *cq, blob_done_cb *cb, void *arg);
/* blob_put_commit_sync - the same, waiting for the sync thread (tests, tools) */
enum blob_result blob_put_commit_sync(struct blob_put *put, const char *expected_id,
				      struct blob_done *done_r);
/* blob_put_abort - drops the temp file; *putp = NULL */
void blob_put_abort(struct blob_put **putp);

/* ---------------------------------------------------------------- delete */

/* blob_delete - unlinks now; the directory fsync is queued: BLOB_PENDING and
 * cb later (done->existed tells), or a final error */
enum blob_result blob_delete(struct blobfs *fs, const char *id, struct blob_cq *cq,
			     blob_done_cb *cb, void *arg);
enum blob_result blob_delete_sync(struct blobfs *fs, const char *id, bool *existed_r);

/* ------------------------------------------------------------------ read */

/* blob_stat - content size from the footer; BLOB_NOT_FOUND, BLOB_CORRUPT */
enum blob_result blob_stat(struct blobfs *fs, const char *id, uint64_t *size_r);

/* blob_reader_open - a verified reader of [offset, offset+length) (length 0
 * = to the end, clamped to the end); BLOB_RANGE when offset > size */
enum blob_result blob_reader_open(struct blobfs *fs, const char *id, uint64_t offset,
				  uint64_t length, struct blob_reader **reader_r);
uint64_t blob_reader_size(const struct blob_reader *r);
/* blob_reader_next - the next piece of the range (at most one block), every
 * byte of it checked before it is returned. *len_r == 0: the range is done
 * (a whole-blob read has then also matched its SHA-256; it is checked before
 * the last piece is returned). BLOB_CORRUPT: quarantined, stop. The data
 * stays valid until the next call. */
enum blob_result blob_reader_next(struct blob_reader *r, const uint8_t **data_r, size_t *len_r);
void blob_reader_free(struct blob_reader **rp);

/* ------------------------------------------------------------------ list */

struct blob_info {
	char id[BLOB_ID_LEN + 1];
	uint64_t size;
};
/* blob_list - up to `limit` ids > after ("" = from the start) in ascending
 * order into out[]; *more_r when more follow. Work is bounded by the page
 * size plus the shard directories walked. */
enum blob_result blob_list(struct blobfs *fs, const char *after, size_t limit,
			   struct blob_info *out, size_t *n_r, bool *more_r);
#endif
