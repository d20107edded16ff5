/* test_blobfs.c - the blob store's file layer against a temp dir, no RPC:
 * round trips around block boundaries, idempotent puts, expected-id
 * mismatch, range reads, corruption detected and quarantined (a flipped
 * byte, and a block rewritten with a matching CRC that only SHA-256
 * catches), stale temp files removed, list paging, deletes, async commits
 * through a blob_cq in every sync mode, the free-space refusal. */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <unistd.h>
#include <cmocka.h>
#include "lib/common.h"
#include "lib/xalloc.h"
#include "store/blobfs.h"
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <zlib.h>

struct fixture {
	char dir[64];
	struct blobfs *fs;
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void rm_tree(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static struct blobfs *open_fs(const char *dir, enum blob_sync_mode mode, uint64_t min_free)
{
	struct blobfs_opts o = { .dir = dir, .min_free = min_free, .sync_mode = mode,
				 .sync_threads = 4 };
	struct blobfs *fs;
	const char *err = NULL;
	if (blobfs_open(&o, &fs, &err) < 0)
		fail_msg("blobfs_open: %s", err);
	return fs;
}

static int setup(void **state)
{
	struct fixture *f = XNEW(struct fixture);
	snprintf(f->dir, sizeof(f->dir), "/tmp/blobfsXXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	f->fs = open_fs(f->dir, BLOB_SYNC_SYNCFS, 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	blobfs_free(&f->fs);
	rm_tree(f->dir);
	free(f);
	return 0;
}

/* pattern - deterministic bytes that differ per seed */
static uint8_t *pattern(size_t len, unsigned seed)
{
	uint8_t *p = xmalloc(len + 1);
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (uint8_t)x;
	}
	return p;
}

static void sha256_hex(const void *data, size_t len, char out[65])
{
	uint8_t d[32];
	unsigned n;
	EVP_Digest(data, len, d, &n, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* put_bytes - a put written in uneven pieces, committed synchronously */
static enum blob_result put_bytes(struct blobfs *fs, const void *data, size_t len,
				  const char *expected, struct blob_done *done)
{
	struct blob_put *p;
	assert_int_equal(blob_put_begin(fs, len, &p), BLOB_OK);
	const uint8_t *d = data;
	size_t off = 0, piece = 1;
	while (off < len) {
		size_t n = MAIL_MIN(piece, len - off);
		assert_int_equal(blob_put_write(p, d + off, n), BLOB_OK);
		off += n;
		piece = piece * 3 + 7; /* 1, 10, 37, ... crosses block ends at odd places */
		if (piece > 65536)
			piece = 65536;
	}
	assert_int_equal(blob_put_size(p), len);
	return blob_put_commit_sync(p, expected, done);
}

/* read_range - everything a reader returns for [off, off+len) */
static enum blob_result read_range(struct blobfs *fs, const char *id, uint64_t off, uint64_t len,
				   uint8_t **out, size_t *out_len)
{
	struct blob_reader *r;
	*out = NULL;
	*out_len = 0;
	enum blob_result res = blob_reader_open(fs, id, off, len, &r);
	if (res != BLOB_OK)
		return res;
	size_t cap = 1024, n = 0;
	uint8_t *buf = xmalloc(cap);
	for (;;) {
		const uint8_t *d;
		size_t dl;
		res = blob_reader_next(r, &d, &dl);
		if (res != BLOB_OK || dl == 0)
			break;
		assert_true(dl <= BLOB_BLOCK_SIZE);
		while (n + dl > cap)
			buf = xrealloc(buf, cap *= 2);
		memcpy(buf + n, d, dl);
		n += dl;
	}
	blob_reader_free(&r);
	*out = buf;
	*out_len = n;
	return res;
}

static size_t count_files(const char *dir, const char *sub)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	DIR *d = opendir(path);
	if (d == NULL)
		return 0;
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

static void blob_path(const struct fixture *f, const char *id, char *buf, size_t size)
{
	snprintf(buf, size, "%s/blobs/%.2s/%.2s/%s", f->dir, id, id + 2, id);
}

static void test_pure(void **state)
{
	assert_true(blob_id_valid("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 64));
	assert_false(blob_id_valid("E3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 64));
	assert_false(blob_id_valid("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85", 63));
	assert_false(blob_id_valid("g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 64));
	assert_false(blob_id_valid("../../etc/passwd", 16));
	assert_int_equal(blob_file_size(0, 65536), BLOB_FOOTER_SIZE);
	assert_int_equal(blob_file_size(1, 65536), 1 + 4 + BLOB_FOOTER_SIZE);
	assert_int_equal(blob_file_size(65536, 65536), 65536 + 4 + BLOB_FOOTER_SIZE);
	assert_int_equal(blob_file_size(65537, 65536), 65537 + 8 + BLOB_FOOTER_SIZE);
	for (uint64_t s = 0; s < 300000; s += (s < 70000 ? 1 : 997)) {
		uint64_t back;
		assert_int_equal(blob_content_size(blob_file_size(s, 65536), 65536, &back), 0);
		assert_int_equal(back, s);
	}
	uint64_t x;
	assert_int_equal(blob_content_size(BLOB_FOOTER_SIZE + 3, 65536, &x), -1); /* 3 bytes, no crc */
	assert_int_equal(blob_content_size(BLOB_FOOTER_SIZE + 4, 65536, &x), -1);
	assert_int_equal(blob_content_size(10, 65536, &x), -1);
	enum blob_sync_mode m;
	assert_int_equal(blob_sync_mode_parse("pool", &m), 0);
	assert_int_equal(m, BLOB_SYNC_POOL);
	assert_int_equal(blob_sync_mode_parse("fast", &m), -1);
}

static void test_round_trip(void **state)
{
	struct fixture *f = *state;
	static const size_t sizes[] = { 0, 1, 65535, 65536, 65537, 3 * 65536 + 100 };
	for (size_t i = 0; i < N_ELEMENTS(sizes); i++) {
		uint8_t *data = pattern(sizes[i], (unsigned)i);
		char want[65];
		struct blob_done done;
		sha256_hex(data, sizes[i], want);
		assert_int_equal(put_bytes(f->fs, data, sizes[i], NULL, &done), BLOB_OK);
		assert_string_equal(done.id, want);
		if (sizes[i] == 0) /* SHA-256 of nothing */
			assert_string_equal(done.id, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
		assert_int_equal(done.size, sizes[i]);
		assert_false(done.existed);
		uint64_t sz = 99;
		assert_int_equal(blob_stat(f->fs, want, &sz), BLOB_OK);
		assert_int_equal(sz, sizes[i]);
		uint8_t *back;
		size_t blen;
		assert_int_equal(read_range(f->fs, want, 0, 0, &back, &blen), BLOB_OK);
		assert_int_equal(blen, sizes[i]);
		assert_memory_equal(back, data, sizes[i]);
		free(back);
		free(data);
	}
	assert_int_equal(blobfs_blob_count(f->fs), (int64_t)N_ELEMENTS(sizes));
	assert_int_equal(count_files(f->dir, "tmp"), 0);
	uint64_t sz;
	assert_int_equal(blob_stat(f->fs, "0000000000000000000000000000000000000000000000000000000000000000", &sz),
			 BLOB_NOT_FOUND);
}

static void test_idempotent(void **state)
{
	struct fixture *f = *state;
	uint8_t *data = pattern(100000, 7);
	struct blob_done a, b;
	assert_int_equal(put_bytes(f->fs, data, 100000, NULL, &a), BLOB_OK);
	assert_false(a.existed);
	assert_int_equal(put_bytes(f->fs, data, 100000, a.id, &b), BLOB_OK);
	assert_true(b.existed);
	assert_string_equal(a.id, b.id);
	assert_int_equal(blobfs_blob_count(f->fs), 1);
	char leaf[128];
	snprintf(leaf, sizeof(leaf), "blobs/%.2s/%.2s", a.id, a.id + 2);
	assert_int_equal(count_files(f->dir, leaf), 1);
	assert_int_equal(count_files(f->dir, "tmp"), 0);
	free(data);
}

static void test_mismatch(void **state)
{
	struct fixture *f = *state;
	uint8_t *data = pattern(5000, 3);
	struct blob_done d;
	const char *wrong = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	assert_int_equal(put_bytes(f->fs, data, 5000, wrong, &d), BLOB_MISMATCH);
	assert_int_equal(count_files(f->dir, "blobs"), 0);
	assert_int_equal(count_files(f->dir, "tmp"), 0);
	assert_int_equal(blobfs_blob_count(f->fs), 0);
	/* an abandoned put leaves nothing either */
	struct blob_put *p;
	assert_int_equal(blob_put_begin(f->fs, 10, &p), BLOB_OK);
	assert_int_equal(blob_put_write(p, "abc", 3), BLOB_OK);
	assert_int_equal(count_files(f->dir, "tmp"), 1);
	blob_put_abort(&p);
	assert_null(p);
	assert_int_equal(count_files(f->dir, "tmp"), 0);
	free(data);
}

static void test_ranges(void **state)
{
	struct fixture *f = *state;
	const size_t size = 3 * 65536 + 100;
	uint8_t *data = pattern(size, 11);
	struct blob_done d;
	assert_int_equal(put_bytes(f->fs, data, size, NULL, &d), BLOB_OK);
	static const struct { uint64_t off, len, want; } cases[] = {
		{ 0, 1, 1 },
		{ 65535, 2, 2 },             /* straddles the first block end */
		{ 65536, 65536, 65536 },     /* exactly block 1 */
		{ 65536 * 2 - 1, 65538, 65538 },
		{ 131071, 0, 3 * 65536 + 100 - 131071 }, /* to the end */
		{ 3 * 65536, 100, 100 },     /* the short last block */
		{ 3 * 65536 + 50, 1000, 50 },/* clamped at the end */
		{ 3 * 65536 + 100, 0, 0 },   /* at the end: empty */
	};
	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		uint8_t *back;
		size_t n;
		assert_int_equal(read_range(f->fs, d.id, cases[i].off, cases[i].len, &back, &n), BLOB_OK);
		assert_int_equal(n, cases[i].want);
		assert_memory_equal(back, data + cases[i].off, n);
		free(back);
	}
	struct blob_reader *r;
	assert_int_equal(blob_reader_open(f->fs, d.id, size + 1, 0, &r), BLOB_RANGE);
	assert_null(r);
	free(data);
}

/* flip_byte - xor one byte of a stored file */
static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint8_t b;
	assert_int_equal(pread(fd, &b, 1, off), 1);
	b ^= 0x20;
	assert_int_equal(pwrite(fd, &b, 1, off), 1);
	close(fd);
}

static void test_corrupt_flip(void **state)
{
	struct fixture *f = *state;
	const size_t size = 200000;
	uint8_t *data = pattern(size, 5);
	struct blob_done d;
	assert_int_equal(put_bytes(f->fs, data, size, NULL, &d), BLOB_OK);
	char path[256], qpath[256];
	blob_path(f, d.id, path, sizeof(path));
	flip_byte(path, 70000); /* block 1 */
	uint8_t *back;
	size_t n;
	/* a range inside an intact block is still served */
	assert_int_equal(read_range(f->fs, d.id, 10, 100, &back, &n), BLOB_OK);
	assert_int_equal(n, 100);
	assert_memory_equal(back, data + 10, 100);
	free(back);
	/* a range touching the bad block returns none of its bytes */
	struct blob_reader *r;
	const uint8_t *p;
	size_t pl;
	assert_int_equal(blob_reader_open(f->fs, d.id, 65536 + 10, 10, &r), BLOB_OK);
	assert_int_equal(blob_reader_next(r, &p, &pl), BLOB_CORRUPT);
	assert_int_equal(pl, 0);
	blob_reader_free(&r);
	assert_int_equal(blobfs_corrupt_count(f->fs), 1);
	assert_int_equal(access(path, F_OK), -1);
	snprintf(qpath, sizeof(qpath), "%s/quarantine/%s", f->dir, d.id);
	assert_int_equal(access(qpath, F_OK), 0);
	uint64_t sz;
	assert_int_equal(blob_stat(f->fs, d.id, &sz), BLOB_NOT_FOUND);
	assert_int_equal(blobfs_blob_count(f->fs), 0);
	/* a repair re-put restores it */
	struct blob_done again;
	assert_int_equal(put_bytes(f->fs, data, size, d.id, &again), BLOB_OK);
	assert_false(again.existed);
	assert_int_equal(read_range(f->fs, d.id, 0, 0, &back, &n), BLOB_OK);
	assert_int_equal(n, size);
	free(back);

	/* a damaged footer is caught at open */
	flip_byte(path, (off_t)blob_file_size(size, BLOB_BLOCK_SIZE) - 20);
	assert_int_equal(blob_reader_open(f->fs, d.id, 0, 0, &r), BLOB_CORRUPT);
	assert_int_equal(blobfs_corrupt_count(f->fs), 2);
	free(data);
}

/* rewrite_block - change a byte and fix the block CRC and the trailer CRC,
 * as a bug writing wrong data with right checksums would: only SHA-256 sees it */
static void rewrite_block(const char *path, size_t size, size_t off)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	size_t blk = off / BLOB_BLOCK_SIZE, nb = (size + BLOB_BLOCK_SIZE - 1) / BLOB_BLOCK_SIZE;
	size_t bstart = blk * BLOB_BLOCK_SIZE, blen = MAIL_MIN(size - bstart, (size_t)BLOB_BLOCK_SIZE);
	uint8_t *b = xmalloc(blen);
	assert_int_equal(pread(fd, b, blen, (off_t)bstart), (ssize_t)blen);
	b[off - bstart] ^= 1;
	assert_int_equal(pwrite(fd, b, blen, (off_t)bstart), (ssize_t)blen);
	size_t tlen = nb * 4 + BLOB_FOOTER_SIZE;
	uint8_t *t = xmalloc(tlen);
	assert_int_equal(pread(fd, t, tlen, (off_t)size), (ssize_t)tlen);
	uint32_t c = (uint32_t)crc32(0, b, (uInt)blen);
	for (int i = 0; i < 4; i++)
		t[blk * 4 + i] = (uint8_t)(c >> (8 * i));
	c = (uint32_t)crc32(0, t, (uInt)(tlen - 4));
	for (int i = 0; i < 4; i++)
		t[tlen - 4 + i] = (uint8_t)(c >> (8 * i));
	assert_int_equal(pwrite(fd, t, tlen, (off_t)size), (ssize_t)tlen);
	close(fd);
	free(b);
	free(t);
}

static void test_corrupt_sha(void **state)
{
	struct fixture *f = *state;
	const size_t size = 150000;
	uint8_t *data = pattern(size, 9);
	struct blob_done d;
	assert_int_equal(put_bytes(f->fs, data, size, NULL, &d), BLOB_OK);
	char path[256];
	blob_path(f, d.id, path, sizeof(path));
	rewrite_block(path, size, 140000); /* in the last block */
	uint8_t *back;
	size_t n;
	/* every CRC matches, so a range read cannot tell */
	assert_int_equal(read_range(f->fs, d.id, 0, 100, &back, &n), BLOB_OK);
	free(back);
	/* a whole read checks the SHA-256 before handing out the last block */
	assert_int_equal(read_range(f->fs, d.id, 0, 0, &back, &n), BLOB_CORRUPT);
	assert_int_equal(n, 2 * 65536); /* the first two blocks, not the bad last one */
	free(back);
	assert_int_equal(blobfs_corrupt_count(f->fs), 1);
	assert_int_equal(count_files(f->dir, "quarantine"), 1);
	free(data);
}

static void test_stale_tmp(void **state)
{
	struct fixture *f = *state;
	struct blob_put *p;
	assert_int_equal(blob_put_begin(f->fs, 0, &p), BLOB_OK);
	assert_int_equal(blob_put_write(p, "half a blob", 11), BLOB_OK);
	/* the process "dies" here: the temp file stays, nothing under blobs/ */
	char path[256];
	snprintf(path, sizeof(path), "%s/tmp/put.stale", f->dir);
	int fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(count_files(f->dir, "tmp"), 2);
	blob_put_abort(&p);
	assert_int_equal(count_files(f->dir, "tmp"), 1);
	blobfs_free(&f->fs);
	/* a second process cannot open a dir in use */
	f->fs = open_fs(f->dir, BLOB_SYNC_BATCH, 0);
	struct blobfs_opts o = { .dir = f->dir, .sync_threads = 1 };
	struct blobfs *other;
	const char *err;
	assert_int_equal(blobfs_open(&o, &other, &err), -1);
	assert_non_null(strstr(err, "in use"));
	assert_int_equal(count_files(f->dir, "tmp"), 0);
	assert_int_equal(count_files(f->dir, "blobs"), 0);
}

static void test_list_paging(void **state)
{
	struct fixture *f = *state;
	char ids[30][65];
	for (int i = 0; i < 30; i++) {
		char buf[32];
		struct blob_done d;
		int len = snprintf(buf, sizeof(buf), "blob number %d", i);
		assert_int_equal(put_bytes(f->fs, buf, (size_t)len, NULL, &d), BLOB_OK);
		memcpy(ids[i], d.id, 65);
	}
	qsort(ids, 30, 65, (int (*)(const void *, const void *))strcmp);
	struct blob_info page[7];
	char after[65] = "";
	int seen = 0, pages = 0;
	bool more = true;
	while (more) {
		size_t n;
		assert_int_equal(blob_list(f->fs, after, 7, page, &n, &more), BLOB_OK);
		pages++;
		for (size_t i = 0; i < n; i++) {
			assert_string_equal(page[i].id, ids[seen]);
			assert_true(page[i].size >= 13 && page[i].size <= 14);
			seen++;
		}
		if (n > 0)
			memcpy(after, page[n - 1].id, 65);
		assert_true(pages < 10);
	}
	assert_int_equal(seen, 30);
	assert_int_equal(pages, 5); /* 7+7+7+7+2 */
	size_t n;
	assert_int_equal(blob_list(f->fs, ids[29], 7, page, &n, &more), BLOB_OK);
	assert_int_equal(n, 0);
	assert_false(more);
	/* exactly a full last page: no further page announced */
	assert_int_equal(blob_list(f->fs, ids[22], 7, page, &n, &more), BLOB_OK);
	assert_int_equal(n, 7);
	assert_false(more);
	assert_int_equal(blobfs_blob_count(f->fs), 30);

	/* deletes */
	bool existed;
	assert_int_equal(blob_delete_sync(f->fs, ids[3], &existed), BLOB_OK);
	assert_true(existed);
	assert_int_equal(blob_delete_sync(f->fs, ids[3], &existed), BLOB_OK);
	assert_false(existed);
	assert_int_equal(blob_list(f->fs, ids[2], 1, page, &n, &more), BLOB_OK);
	assert_string_equal(page[0].id, ids[4]);
	assert_true(more);
	assert_int_equal(blobfs_blob_count(f->fs), 29);
	/* the count survives a restart */
	blobfs_free(&f->fs);
	f->fs = open_fs(f->dir, BLOB_SYNC_POOL, 0);
	assert_int_equal(blobfs_blob_count(f->fs), 29);
}

struct async_ctx {
	int done;
	int existed;
	struct event_base *base;
	char ids[41][65];
};

static void async_done(const struct blob_done *d, void *arg)
{
	struct async_ctx *c = arg;
	assert_int_equal(d->result, BLOB_OK);
	memcpy(c->ids[c->done], d->id, 65);
	c->existed += d->existed;
	c->done++;
}

static void test_async_modes(void **state)
{
	struct fixture *f = *state;
	static const enum blob_sync_mode modes[] = { BLOB_SYNC_SYNCFS, BLOB_SYNC_BATCH, BLOB_SYNC_POOL };
	for (size_t m = 0; m < N_ELEMENTS(modes); m++) {
		blobfs_free(&f->fs);
		f->fs = open_fs(f->dir, modes[m], 0);
		struct async_ctx c = { .base = event_base_new() };
		struct blob_cq *cq = blob_cq_new(c.base);
		/* 30 distinct blobs and 10 copies of one: all in flight together */
		for (int i = 0; i < 40; i++) {
			char buf[64];
			int len = snprintf(buf, sizeof(buf), "mode %zu blob %d", m, i < 30 ? i : 999);
			struct blob_put *p;
			assert_int_equal(blob_put_begin(f->fs, (uint64_t)len, &p), BLOB_OK);
			assert_int_equal(blob_put_write(p, buf, (size_t)len), BLOB_OK);
			assert_int_equal(blob_put_commit(p, NULL, cq, async_done, &c), BLOB_PENDING);
		}
		while (c.done < 40)
			event_base_loop(c.base, EVLOOP_ONCE);
		assert_int_equal(blob_cq_inflight(cq), 0);
		assert_int_equal(c.existed, 9); /* one copy stored, nine found it there */
		for (int i = 0; i < 40; i++) {
			uint64_t sz;
			assert_int_equal(blob_stat(f->fs, c.ids[i], &sz), BLOB_OK);
		}
		/* a queue freed with work in flight still delivers it */
		struct blob_put *p;
		assert_int_equal(blob_put_begin(f->fs, 3, &p), BLOB_OK);
		assert_int_equal(blob_put_write(p, "xyz", 3), BLOB_OK);
		assert_int_equal(blob_put_commit(p, NULL, cq, async_done, &c), BLOB_PENDING);
		blob_cq_free(&cq);
		assert_int_equal(c.done, 41);
		event_base_free(c.base);
		assert_int_equal(count_files(f->dir, "tmp"), 0);
	}
	assert_int_equal(blobfs_blob_count(f->fs), 3 * 31 + 1);
}

static void test_no_space(void **state)
{
	struct fixture *f = *state;
	blobfs_free(&f->fs);
	f->fs = open_fs(f->dir, BLOB_SYNC_SYNCFS, UINT64_C(1) << 60);
	struct blob_put *p;
	assert_int_equal(blob_put_begin(f->fs, 10, &p), BLOB_NO_SPACE);
	assert_null(p);
	const char *why = NULL;
	assert_false(blobfs_ready(f->fs, &why));
	assert_non_null(strstr(why, "min_free"));
	uint64_t fr, tot;
	assert_int_equal(blobfs_space(f->fs, &fr, &tot), 0);
	assert_true(tot > 0 && fr <= tot);
	blobfs_free(&f->fs);
	f->fs = open_fs(f->dir, BLOB_SYNC_SYNCFS, 0);
	assert_true(blobfs_ready(f->fs, &why));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pure),
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idempotent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mismatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ranges, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_flip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_sha, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_tmp, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_paging, setup, teardown),
		cmocka_unit_test_setup_teardown(test_async_modes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_space, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
