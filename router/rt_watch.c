/* rt_watch.c - Watch (server-streaming) of mail.router.v1: the changes made by
 * anyone, through any router, to a mailbox or to every mailbox of an account,
 * for the front-ends' IDLE / NOTIFY and the untagged EXISTS, FETCH, EXPUNGE and
 * VANISHED responses of a selected mailbox.
 *
 * Source: the schema's functions pg_notify('mail_changes',
 * '<account>:<mailbox>:<event>:<uids>:<modseq>') at commit (0001_init.sql,
 * mail_notify). Each worker loop LISTENs once (db_listen on its own pool, made in
 * loop_init) and fans every notification out to the Watch calls of that loop
 * whose account and mailbox match; the event is packed once per notification.
 * The main loop serves no gRPC calls and does not listen.
 *
 * A watcher's life (see router.proto, WatchEvent):
 *   W_WAIT_LISTEN  the loop's LISTEN is not in effect (start-up, database down);
 *   W_HELLO        LISTEN is in effect and the mailbox's ownership and current
 *                  HIGHESTMODSEQ are being read; a change notified meanwhile is
 *                  owed as a resync event (the read may or may not include it);
 *   W_LIVE         HELLO was sent (with that HIGHESTMODSEQ): every change committed
 *                  after it reaches the stream, in commit order.
 * A watcher not live within WATCH_HELLO_TIMEOUT_MS ends with UNAVAILABLE. When the
 * LISTEN connection is lost, watchers not yet live wait again; once it is back,
 * every live watcher gets a resync event (CHANGED with no uids and the mailbox's
 * current HIGHESTMODSEQ): notifications may have been missed meanwhile.
 *
 * Back-pressure: a watcher whose call has RPC_CALL_HIGH_WATER bytes queued gets
 * nothing more; the events it misses collapse into one owed resync event, sent
 * from on_writable. Memory per watcher is therefore bounded whatever the rate of
 * changes. A watcher that stays blocked for WATCH_STALL_MS while changes keep
 * coming ends with RESOURCE_EXHAUSTED.
 *
 * Ownership: the loop's struct watch_loop (rt_loop.mod[WATCH_SLOT]) owns every
 * struct watcher, linked in a hash of account ids. A watcher is freed when its
 * call ends (watcher_end) or is cancelled (on_cancel) - its HELLO statement is
 * cancelled then, so no late reply reaches it - and the rest in loop_fini. */
#include "lib/common.h"
#include "router/router.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/xalloc.h"
#include "router.pb-c.h"
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <event2/event.h>

#define WATCH_SLOT 4
#define WATCH_CHANNEL "mail_changes"	/* as mail_notify() names it */
#define WATCH_BUCKETS 4096		/* hash of account ids (power of two) */
#define WATCH_HELLO_TIMEOUT_MS 10000	/* a watch not live by then ends UNAVAILABLE */
#define WATCH_STALL_MS 60000		/* a watcher blocked that long is dropped */
#define WATCH_DB_TRIES 3		/* reads sent again after DB_UNAVAILABLE (a connection
					 * found dead only when used, after a restart) */

#define KIND(x) MAIL__ROUTER__V1__WATCH_EVENT__KIND__##x

enum watch_state { W_WAIT_LISTEN, W_HELLO, W_LIVE };

struct watch_loop;

struct watcher {
	struct watch_loop *wl;
	struct rpc_call *call;		/* NULL once the call has ended */
	uint64_t account_id;
	uint64_t mailbox_id;		/* 0: every mailbox of the account */
	enum watch_state state;
	struct db_request *req;		/* the HELLO read in flight */
	int tries;			/* HELLO reads sent */
	struct event *timer;		/* HELLO deadline (until live) */
	struct watcher *prev, *next;	/* bucket of account_id */
	bool resync_owed;		/* events were dropped: one resync event is owed */
	bool resync_wanted;		/* in the loop's reconnect batch */
	uint64_t resync_modseq;		/* highest modseq among the dropped events */
	int64_t stalled_since;		/* when the owed resync started waiting (ms) */
};

struct watch_loop {
	struct rt_loop *l;
	struct db_listener *listener;
	bool listening;			/* LISTEN is in effect now */
	struct db_request *resync_req;	/* HIGHESTMODSEQs after a reconnect */
	char *resync_arg;		/* its parameter (kept to send it again) */
	int resync_tries;
	size_t n_watchers;
	struct watcher *buckets[WATCH_BUCKETS];
};

/* a parsed notification */
struct watch_change {
	uint64_t account, mailbox, modseq;
	Mail__Router__V1__WatchEvent__Kind kind;
	const char *uids;		/* uid set text; NULL when the event carries none */
	size_t uids_len;
};

static struct {
	struct metric *streams, *events, *resyncs, *dropped;
} watch_m;

/* ------------------------------------------------------------------ helpers */

/* watch_now_ms - monotonic milliseconds */
static int64_t watch_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* watch_bucket - the hash bucket of an account */
static struct watcher **watch_bucket(struct watch_loop *wl, uint64_t account)
{
	uint64_t h = account * 0x9e3779b97f4a7c15ull;
	return &wl->buckets[(h >> 32) & (WATCH_BUCKETS - 1)];
}

/* watcher_free - unlinks and releases a watcher (its call has ended) */
static void watcher_free(struct watcher *w)
{
	struct watch_loop *wl = w->wl;
	if (w->prev != NULL)
		w->prev->next = w->next;
	else
		*watch_bucket(wl, w->account_id) = w->next;
	if (w->next != NULL)
		w->next->prev = w->prev;
	db_request_cancel(&w->req);
	if (w->timer != NULL)
		event_free(w->timer);
	wl->n_watchers--;
	metric_add(watch_m.streams, -1);
	free(w);
}

/* watcher_end - ends the call with st and releases the watcher */
static void watcher_end(struct watcher *w, enum rpc_status st, const char *message)
{
	if (w->call != NULL) {
		rpc_call_set_data(w->call, NULL);
		rpc_call_finish(w->call, st, message);
		w->call = NULL;
	}
	watcher_free(w);
}

/* watch_uidset_parse - an IMAP uid set as mail_uidset() writes it ("1:3,7") into
 * ranges (arrays owned by the caller); false on anything else */
static bool watch_uidset_parse(const char *s, size_t len, Mail__Router__V1__UidRange **ranges_r,
			       Mail__Router__V1__UidRange ***ptrs_r, size_t *n_r)
{
	size_t cap = 1;
	for (size_t i = 0; i < len; i++)
		cap += s[i] == ',';
	Mail__Router__V1__UidRange *r = xcalloc(cap, sizeof(*r));
	Mail__Router__V1__UidRange **ptrs = xcalloc(cap, sizeof(*ptrs));
	size_t n = 0;
	const char *p = s, *end = s + len;
	while (p < end && n < cap) {
		uint64_t v[2] = { 0, 0 };
		for (int k = 0; k < 2; k++) {
			if (p == end || *p < '0' || *p > '9')
				goto bad;
			while (p < end && *p >= '0' && *p <= '9' && v[k] <= UINT32_MAX)
				v[k] = v[k] * 10 + (uint64_t)(*p++ - '0');
			if (v[k] == 0 || v[k] > UINT32_MAX)
				goto bad;
			if (k == 0 && p < end && *p == ':')
				p++;
			else if (k == 0)
				v[1] = v[0], k = 1;
		}
		if (p < end && *p == ',')
			p++;
		else if (p != end)
			goto bad;
		mail__router__v1__uid_range__init(&r[n]);
		r[n].first = (uint32_t)(v[0] < v[1] ? v[0] : v[1]);
		r[n].last = (uint32_t)(v[0] < v[1] ? v[1] : v[0]);
		ptrs[n] = &r[n];
		n++;
	}
	if (p != end)
		goto bad;
	*ranges_r = r;
	*ptrs_r = ptrs;
	*n_r = n;
	return true;
bad:
	free(r);
	free(ptrs);
	return false;
}

/* watch_num - a decimal number filling [s, end); false on anything else */
static bool watch_num(const char *s, const char *end, uint64_t *v_r)
{
	uint64_t v = 0;
	if (s == end || end - s > 19)
		return false;
	for (; s < end; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*v_r = v;
	return true;
}

/* watch_parse - '<account>:<mailbox>:<event>:<uids>:<modseq>' (the uid set has
 * colons of its own: it runs from the third colon to the last); false for
 * anything else, an unknown event included. uids "*" (too long for a payload)
 * becomes a CHANGED without uids: resynchronise that mailbox. */
static bool watch_parse(const char *payload, struct watch_change *c)
{
	const char *p1 = strchr(payload, ':');
	const char *p2 = p1 != NULL ? strchr(p1 + 1, ':') : NULL;
	const char *p3 = p2 != NULL ? strchr(p2 + 1, ':') : NULL;
	const char *last = strrchr(payload, ':');
	if (p3 == NULL || last <= p3)
		return false;
	if (!watch_num(payload, p1, &c->account) || !watch_num(p1 + 1, p2, &c->mailbox) ||
	    !watch_num(last + 1, last + strlen(last), &c->modseq))
		return false;
	size_t elen = (size_t)(p3 - p2 - 1);
	const char *ev = p2 + 1;
	if (elen == 3 && memcmp(ev, "new", 3) == 0)
		c->kind = KIND(NEW);
	else if (elen == 5 && memcmp(ev, "flags", 5) == 0)
		c->kind = KIND(CHANGED);
	else if (elen == 7 && memcmp(ev, "expunge", 7) == 0)
		c->kind = KIND(EXPUNGED);
	else if (elen == 7 && memcmp(ev, "mailbox", 7) == 0)
		c->kind = KIND(MAILBOXES);
	else
		return false;
	c->uids = p3 + 1;
	c->uids_len = (size_t)(last - p3 - 1);
	if (c->kind == KIND(MAILBOXES) || c->uids_len == 0) {
		c->uids = NULL;
		c->uids_len = 0;
	} else if (c->uids_len == 1 && c->uids[0] == '*') {
		c->kind = KIND(CHANGED);
		c->uids = NULL;
		c->uids_len = 0;
	}
	return c->account != 0;
}

/* watch_matches - does the change concern this watcher? A mailbox watcher also
 * gets MAILBOXES events that name several mailboxes (0): a rename may be its own */
static bool watch_matches(const struct watcher *w, const struct watch_change *c)
{
	if (w->account_id != c->account)
		return false;
	if (w->mailbox_id == 0 || w->mailbox_id == c->mailbox)
		return true;
	return c->kind == KIND(MAILBOXES) && c->mailbox == 0;
}

/* ------------------------------------------------------------------ sending */

/* watcher_blocked - the call's queue is at its back-pressure mark */
static bool watcher_blocked(const struct watcher *w)
{
	return rpc_call_queued(w->call) >= RPC_CALL_HIGH_WATER;
}

/* watcher_owe_resync - the watcher misses an event: one resync event will replace
 * everything it missed */
static void watcher_owe_resync(struct watcher *w, uint64_t modseq)
{
	if (!w->resync_owed) {
		w->resync_owed = true;
		w->stalled_since = watch_now_ms();
		w->resync_modseq = 0;
	}
	if (modseq > w->resync_modseq)
		w->resync_modseq = modseq;
}

/* watcher_send_resync - CHANGED without uids for the watcher's mailbox (0 for an
 * account watch: every mailbox), now or as soon as the stream has room */
static void watcher_send_resync(struct watcher *w, uint64_t modseq)
{
	if (w->state != W_LIVE || watcher_blocked(w)) {
		watcher_owe_resync(w, modseq);
		return;
	}
	if (w->resync_owed && w->resync_modseq > modseq)
		modseq = w->resync_modseq;
	Mail__Router__V1__WatchEvent ev = MAIL__ROUTER__V1__WATCH_EVENT__INIT;
	ev.kind = KIND(CHANGED);
	ev.mailbox_id = w->mailbox_id;
	ev.modseq = w->mailbox_id != 0 ? modseq : 0; /* modseqs are per mailbox */
	rpc_call_send_pb(w->call, &ev.base);
	w->resync_owed = false;
	metric_inc(watch_m.resyncs);
	log_debug("watch resync sent", "call=%" PRIu64 " account=%" PRIu64 " mailbox=%" PRIu64
		  " modseq=%" PRIu64, rpc_call_id(w->call), w->account_id, w->mailbox_id, modseq);
}

/* watcher_deliver - one packed event to a watcher; false if the watcher was
 * dropped (blocked too long) and is gone */
static bool watcher_deliver(struct watcher *w, const uint8_t *buf, size_t len, uint64_t modseq)
{
	if (w->state == W_LIVE && !watcher_blocked(w)) {
		if (w->resync_owed) {
			watcher_send_resync(w, modseq); /* stands for this event too */
			return true;
		}
		rpc_call_send(w->call, buf, len);
		metric_inc(watch_m.events);
		return true;
	}
	watcher_owe_resync(w, modseq);
	if (w->state == W_LIVE && watch_now_ms() - w->stalled_since > WATCH_STALL_MS) {
		log_info("watch dropped: the front-end does not read", "call=%" PRIu64 " account=%" PRIu64
			 " queued=%zu", rpc_call_id(w->call), w->account_id, rpc_call_queued(w->call));
		metric_inc(watch_m.dropped);
		watcher_end(w, RPC_RESOURCE_EXHAUSTED, "watch stream not read");
		return false;
	}
	return true;
}

/* watch_notify - one notification to every matching watcher of the loop */
static void watch_notify(struct watch_loop *wl, const char *payload)
{
	struct watch_change c;
	if (!watch_parse(payload, &c)) {
		char q[200];
		log_debug("watch notification ignored", "payload=%s",
			  log_quote(q, sizeof(q), payload, strlen(payload)));
		return;
	}
	struct watcher **bucket = watch_bucket(wl, c.account);
	struct watcher *w = *bucket;
	while (w != NULL && !watch_matches(w, &c))
		w = w->next;
	if (w == NULL)
		return; /* nobody here watches it: no packing */

	Mail__Router__V1__WatchEvent ev = MAIL__ROUTER__V1__WATCH_EVENT__INIT;
	Mail__Router__V1__UidSet set = MAIL__ROUTER__V1__UID_SET__INIT;
	Mail__Router__V1__UidRange *ranges = NULL;
	ev.kind = c.kind;
	ev.mailbox_id = c.mailbox;
	ev.modseq = c.modseq;
	if (c.uids != NULL) {
		if (!watch_uidset_parse(c.uids, c.uids_len, &ranges, &set.ranges, &set.n_ranges)) {
			char q[200];
			log_warn("watch notification with a bad uid set: resync", "payload=%s",
				 log_quote(q, sizeof(q), payload, strlen(payload)));
			ev.kind = KIND(CHANGED);
		} else {
			ev.uids = &set;
		}
	}
	size_t len = protobuf_c_message_get_packed_size(&ev.base);
	uint8_t *buf = xmalloc(len + 1);
	protobuf_c_message_pack(&ev.base, buf);
	for (struct watcher *next; w != NULL; w = next) {
		next = w->next;
		if (watch_matches(w, &c))
			watcher_deliver(w, buf, len, c.modseq);
	}
	free(buf);
	free(ranges);
	free(set.ranges);
}

/* ------------------------------------------------------------------ HELLO */

static void watch_hello_done(const struct db_result *r, void *arg);

/* watcher_hello - LISTEN is in effect: read the mailbox's HIGHESTMODSEQ (and that
 * it is the account's) for the HELLO event */
static void watcher_hello(struct watcher *w)
{
	char acct[24], mbox[24];
	snprintf(acct, sizeof(acct), "%" PRIu64, w->account_id);
	snprintf(mbox, sizeof(mbox), "%" PRIu64, w->mailbox_id);
	const char *v[] = { acct, mbox };
	w->state = W_HELLO;
	w->tries++;
	w->req = db_exec(w->wl->l->db, "watch_hello", 2, v, NULL, NULL, 0, watch_hello_done, w);
}

/* watch_hello_done - HELLO, and the stream is live; or the watch ends */
static void watch_hello_done(const struct db_result *r, void *arg)
{
	struct watcher *w = arg;
	w->req = NULL;
	if (r->status == DB_UNAVAILABLE && w->tries < WATCH_DB_TRIES) {
		watcher_hello(w); /* a read: always safe to send again */
		return;
	}
	if (r->status != DB_OK) {
		struct rpc_call *call = w->call;
		rpc_call_set_data(call, NULL);
		w->call = NULL;
		rt_finish_db_error(call, r, "watch");
		watcher_free(w);
		return;
	}
	if (PQntuples(r->res) < 1 || PQnfields(r->res) < 1 || PQgetisnull(r->res, 0, 0)) {
		watcher_end(w, RPC_NOT_FOUND, w->mailbox_id != 0 ? "no such mailbox" : "no such account");
		return;
	}
	uint64_t modseq = strtoull(PQgetvalue(r->res, 0, 0), NULL, 10);
	w->state = W_LIVE;
	if (w->timer != NULL) {
		event_free(w->timer);
		w->timer = NULL;
	}
	Mail__Router__V1__WatchEvent ev = MAIL__ROUTER__V1__WATCH_EVENT__INIT;
	ev.kind = KIND(HELLO);
	ev.mailbox_id = w->mailbox_id;
	ev.modseq = modseq;
	rpc_call_send_pb(w->call, &ev.base);
	log_debug("watch live", "call=%" PRIu64 " account=%" PRIu64 " mailbox=%" PRIu64 " modseq=%" PRIu64,
		  rpc_call_id(w->call), w->account_id, w->mailbox_id, modseq);
	if (w->resync_owed)
		watcher_send_resync(w, w->resync_modseq);
}

/* watch_hello_timeout - the watch could not become live in time */
static void watch_hello_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct watcher *w = arg;
	(void)fd, (void)what;
	if (w->state == W_LIVE)
		return;
	log_info("watch not live in time", "call=%" PRIu64 " account=%" PRIu64 " listening=%d",
		 rpc_call_id(w->call), w->account_id, (int)w->wl->listening);
	watcher_end(w, RPC_UNAVAILABLE, "change notifications unavailable");
}

/* ------------------------------------------------------------------ reconnects */

struct watch_seq {
	uint64_t id, modseq;
};

static int watch_seq_cmp(const void *a, const void *b)
{
	uint64_t x = ((const struct watch_seq *)a)->id, y = ((const struct watch_seq *)b)->id;
	return x < y ? -1 : x > y;
}

static int watch_u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* watch_resync_send - the reconnect batch: a resync event to every watcher in it,
 * with its mailbox's HIGHESTMODSEQ when known (seqs sorted by id; 0 otherwise) */
static void watch_resync_send(struct watch_loop *wl, const struct watch_seq *seqs, size_t n)
{
	size_t sent = 0;
	for (size_t b = 0; b < WATCH_BUCKETS; b++) {
		for (struct watcher *w = wl->buckets[b]; w != NULL; w = w->next) {
			if (!w->resync_wanted)
				continue;
			w->resync_wanted = false;
			struct watch_seq key = { .id = w->mailbox_id }, *hit = NULL;
			if (w->mailbox_id != 0 && n > 0)
				hit = bsearch(&key, seqs, n, sizeof(*seqs), watch_seq_cmp);
			watcher_send_resync(w, hit != NULL ? hit->modseq : 0);
			sent++;
		}
	}
	log_info("watch resynchronised after a database reconnect", "loop=%d watchers=%zu",
		 wl->l->index, sent);
}

static void watch_resync_done(const struct db_result *r, void *arg);

/* watch_resync_query - (again) the read of the watched mailboxes' HIGHESTMODSEQs */
static void watch_resync_query(struct watch_loop *wl)
{
	const char *v[] = { wl->resync_arg };
	wl->resync_tries++;
	wl->resync_req = db_exec(wl->l->db, "watch_modseqs", 1, v, NULL, NULL, 0, watch_resync_done, wl);
}

/* watch_resync_done - the HIGHESTMODSEQs of the watched mailboxes (any failure:
 * the resync events go out without them) */
static void watch_resync_done(const struct db_result *r, void *arg)
{
	struct watch_loop *wl = arg;
	wl->resync_req = NULL;
	if (r->status == DB_UNAVAILABLE && wl->resync_tries < WATCH_DB_TRIES) {
		watch_resync_query(wl);
		return;
	}
	free(wl->resync_arg);
	wl->resync_arg = NULL;
	if (r->status != DB_OK) {
		char q[200];
		log_info("watch resync without modseqs", "loop=%d error=%s", wl->l->index,
			 log_quote(q, sizeof(q), r->message, strlen(r->message)));
	}
	size_t n = r->status == DB_OK && PQnfields(r->res) >= 2 ? (size_t)PQntuples(r->res) : 0;
	struct watch_seq *seqs = xcalloc(n + 1, sizeof(*seqs));
	for (size_t i = 0; i < n; i++) {
		seqs[i].id = strtoull(PQgetvalue(r->res, (int)i, 0), NULL, 10);
		seqs[i].modseq = strtoull(PQgetvalue(r->res, (int)i, 1), NULL, 10);
	}
	qsort(seqs, n, sizeof(*seqs), watch_seq_cmp);
	watch_resync_send(wl, seqs, n);
	free(seqs);
}

/* watch_resync_all - notifications may have been missed: every live watcher gets
 * a resync event once the current HIGHESTMODSEQs are read */
static void watch_resync_all(struct watch_loop *wl)
{
	uint64_t *ids = xcalloc(wl->n_watchers + 1, sizeof(*ids));
	size_t n = 0;
	for (size_t b = 0; b < WATCH_BUCKETS; b++) {
		for (struct watcher *w = wl->buckets[b]; w != NULL; w = w->next) {
			if (w->state != W_LIVE)
				continue;
			w->resync_wanted = true;
			if (w->mailbox_id != 0 && n < wl->n_watchers)
				ids[n++] = w->mailbox_id;
		}
	}
	db_request_cancel(&wl->resync_req);
	if (n == 0) {
		watch_resync_send(wl, NULL, 0);
		free(ids);
		return;
	}
	qsort(ids, n, sizeof(*ids), watch_u64_cmp);
	char *arr = xmalloc(n * 21 + 3), *p = arr;
	*p++ = '{';
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && ids[i] == ids[i - 1])
			continue;
		p += snprintf(p, 22, "%s%" PRIu64, p == arr + 1 ? "" : ",", ids[i]);
	}
	*p++ = '}';
	*p = '\0';
	free(wl->resync_arg);
	wl->resync_arg = arr;
	wl->resync_tries = 0;
	watch_resync_query(wl);
	free(ids);
}

/* watch_listen_cb - the loop's LISTEN connection: notifications and its state */
static void watch_listen_cb(const struct db_notification *n, void *arg)
{
	struct watch_loop *wl = arg;
	switch (n->event) {
	case DB_LISTEN_NOTIFY:
		watch_notify(wl, n->payload);
		return;
	case DB_LISTEN_LOST:
		wl->listening = false;
		log_info("watch notifications lost", "loop=%d watchers=%zu", wl->l->index, wl->n_watchers);
		/* a HELLO read now could not be trusted: read again once listening */
		for (size_t b = 0; b < WATCH_BUCKETS; b++) {
			for (struct watcher *w = wl->buckets[b]; w != NULL; w = w->next) {
				if (w->state == W_HELLO) {
					db_request_cancel(&w->req);
					w->state = W_WAIT_LISTEN;
					w->resync_owed = false;
					w->tries = 0;
				}
			}
		}
		return;
	case DB_LISTEN_RESYNC:
	case DB_LISTEN_READY:
		wl->listening = true;
		if (n->event == DB_LISTEN_RESYNC)
			watch_resync_all(wl);
		for (size_t b = 0; b < WATCH_BUCKETS; b++)
			for (struct watcher *w = wl->buckets[b]; w != NULL; w = w->next)
				if (w->state == W_WAIT_LISTEN)
					watcher_hello(w);
		return;
	}
}

/* ------------------------------------------------------------------ the call */

/* watch_on_message - the one WatchRequest: register, HELLO once live */
static void watch_on_message(struct rpc_call *call, const uint8_t *msg, size_t len)
{
	struct watcher *old = rpc_call_data(call);
	if (old != NULL) {
		watcher_end(old, RPC_INVALID_ARGUMENT, "one request message expected");
		return;
	}
	struct watch_loop *wl = rt_loop_of_call(call)->mod[WATCH_SLOT];
	if (wl == NULL) {
		rpc_call_finish(call, RPC_UNAVAILABLE, "no change notifications on this loop");
		return;
	}
	Mail__Router__V1__WatchRequest *m = mail__router__v1__watch_request__unpack(NULL, len, msg);
	if (m == NULL) {
		rpc_call_finish(call, RPC_INVALID_ARGUMENT, "malformed WatchRequest");
		return;
	}
	uint64_t account = m->session != NULL ? m->session->account_id : 0;
	uint64_t mailbox = m->mailbox_id;
	mail__router__v1__watch_request__free_unpacked(m, NULL);
	if (account == 0 || account > (uint64_t)INT64_MAX || mailbox > (uint64_t)INT64_MAX) {
		rpc_call_finish(call, RPC_INVALID_ARGUMENT, "session.account_id required");
		return;
	}
	struct watcher *w = XNEW(struct watcher);
	w->wl = wl;
	w->call = call;
	w->account_id = account;
	w->mailbox_id = mailbox;
	w->state = W_WAIT_LISTEN;
	struct watcher **bucket = watch_bucket(wl, account);
	w->next = *bucket;
	if (*bucket != NULL)
		(*bucket)->prev = w;
	*bucket = w;
	wl->n_watchers++;
	metric_add(watch_m.streams, 1);
	rpc_call_set_data(call, w);
	w->timer = evtimer_new(rpc_call_base(call), watch_hello_timeout, w);
	struct timeval tv = { WATCH_HELLO_TIMEOUT_MS / 1000, (WATCH_HELLO_TIMEOUT_MS % 1000) * 1000 };
	evtimer_add(w->timer, &tv);
	log_debug("watch started", "call=%" PRIu64 " account=%" PRIu64 " mailbox=%" PRIu64 " listening=%d",
		  rpc_call_id(call), account, mailbox, (int)wl->listening);
	if (wl->listening)
		watcher_hello(w);
}

/* watch_on_half_close - the client sent its request (or none at all) */
static void watch_on_half_close(struct rpc_call *call)
{
	if (rpc_call_data(call) == NULL)
		rpc_call_finish(call, RPC_INVALID_ARGUMENT, "missing request message");
}

/* watch_on_cancel - the front-end went away (or the router stops) */
static void watch_on_cancel(struct rpc_call *call)
{
	struct watcher *w = rpc_call_data(call);
	if (w == NULL)
		return;
	rpc_call_set_data(call, NULL);
	w->call = NULL;
	log_debug("watch ended", "account=%" PRIu64 " mailbox=%" PRIu64, w->account_id, w->mailbox_id);
	watcher_free(w);
}

/* watch_on_writable - room again: the owed resync event goes out */
static void watch_on_writable(struct rpc_call *call)
{
	struct watcher *w = rpc_call_data(call);
	if (w != NULL && w->state == W_LIVE && w->resync_owed && !watcher_blocked(w))
		watcher_send_resync(w, w->resync_modseq);
}

/* ------------------------------------------------------------------ module */

/* watch_metrics_init - the process-wide series (every loop shares them) */
static void watch_metrics_init(void)
{
	watch_m.streams = metric_gauge("watch_streams", "Watch calls open on this router");
	watch_m.events = metric_counter("watch_events_total", "change events sent on Watch streams");
	watch_m.resyncs = metric_counter("watch_resyncs_total",
					 "resync events sent (missed notifications or a slow reader)");
	watch_m.dropped = metric_counter("watch_dropped_total", "Watch calls ended because nobody read them");
}

/* watch_loop_init - a worker loop LISTENs on mail_changes once */
static void watch_loop_init(struct rt_loop *l)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, watch_metrics_init);
	if (l->is_main)
		return; /* no gRPC calls run on the main loop */
	struct watch_loop *wl = XNEW(struct watch_loop);
	wl->l = l;
	l->mod[WATCH_SLOT] = wl;
	wl->listener = db_listen(l->db, WATCH_CHANNEL, watch_listen_cb, wl);
}

/* watch_loop_drain - a drain started: a Watch stream never ends by itself, so
 * every one is ended UNAVAILABLE at once and its frontend watches again through
 * another router (and resynchronizes), instead of holding the drain until the
 * shutdown timeout */
static void watch_loop_drain(struct rt_loop *l)
{
	struct watch_loop *wl = l->mod[WATCH_SLOT];
	if (wl == NULL || wl->n_watchers == 0)
		return;
	log_info("watch streams ended for the drain", "loop=%d watchers=%zu", l->index, wl->n_watchers);
	for (size_t b = 0; b < WATCH_BUCKETS; b++)
		while (wl->buckets[b] != NULL)
			watcher_end(wl->buckets[b], RPC_UNAVAILABLE, "router draining");
}

/* watch_loop_fini - the loop stops: its calls are gone already; free the rest */
static void watch_loop_fini(struct rt_loop *l)
{
	struct watch_loop *wl = l->mod[WATCH_SLOT];
	if (wl == NULL)
		return;
	db_unlisten(&wl->listener);
	db_request_cancel(&wl->resync_req);
	free(wl->resync_arg);
	for (size_t b = 0; b < WATCH_BUCKETS; b++)
		while (wl->buckets[b] != NULL)
			watcher_end(wl->buckets[b], RPC_UNAVAILABLE, "router stopping");
	l->mod[WATCH_SLOT] = NULL;
	free(wl);
}

static const struct db_stmt watch_stmts[] = {
	/* the HELLO read: NULL when the mailbox is not the account's (or, for an
	 * account watch, when the account does not exist) */
	{ "watch_hello",
	  "SELECT CASE WHEN $2::bigint = 0 "
	  "THEN (SELECT 0::bigint FROM accounts WHERE id = $1::bigint) "
	  "ELSE (SELECT highestmodseq FROM mailboxes WHERE id = $2::bigint AND account_id = $1::bigint) END", 2 },
	{ "watch_modseqs", "SELECT id, highestmodseq FROM mailboxes WHERE id = ANY ($1::bigint[])", 1 },
};

static const struct rpc_method watch_methods[] = {
	{ "/mail.router.v1.Router/Watch", NULL, watch_on_message, watch_on_half_close, watch_on_cancel,
	  watch_on_writable },
};

const struct rt_module rt_mod_watch = {
	.name = "watch",
	.methods = watch_methods,
	.n_methods = N_ELEMENTS(watch_methods),
	.stmts = watch_stmts,
	.n_stmts = N_ELEMENTS(watch_stmts),
	.slot = WATCH_SLOT,
	.loop_init = watch_loop_init,
	.loop_fini = watch_loop_fini,
	.loop_drain = watch_loop_drain,
};
