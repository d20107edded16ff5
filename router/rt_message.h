/* rt_message.h - internals of the router's message operations module
 * (rt_mod_message, slot 3), private to its files:
 *   rt_message.c  the module table, the call plumbing every method shares
 *                 (one struct msg_call per gRPC call: its db request, retry
 *                 timer and cleanup), helpers for UID sets, keywords and
 *                 binary PostgreSQL results; Store, Copy/Move and Expunge;
 *   rt_fetch.c    FetchMeta (one round trip, paged) and FetchBody (streamed
 *                 from the blob store with back-pressure);
 *   rt_search.c   Search: the SearchKey tree as one parameterised SQL query.
 * A call's struct msg_call (and whatever the method hangs on it) belongs to
 * the call: it is freed when the call is finished by us or cancelled by the
 * runtime (on_cancel), never both. */
#ifndef ROUTER_RT_MESSAGE_H
#define ROUTER_RT_MESSAGE_H
#include "lib/common.h"
#include "router/router.h"
#include "router.pb-c.h"
#include "lib/metrics.h"
#include <event2/event.h>

#define MSG_MODULE_SLOT 3
extern const struct rt_module rt_mod_message;

/* limits of what a frontend may ask in one call */
#define MSG_MAX_UID_RANGES 100000	/* ranges in one UidSet */
#define MSG_MAX_KEYWORDS 100		/* keywords in one Store */
#define MSG_MAX_KEYWORD_LEN 200		/* bytes of one keyword */
#define MSG_DB_RETRIES 1		/* extra attempts after DB_UNAVAILABLE (when safe) */
#define MSG_DB_RETRY_MS 200		/* pause before such an attempt */
/* replies are read by clients whose default limit is 4 MiB (grpc) */
#define MSG_REPLY_BUDGET (3u * 1024 * 1024)

typedef Mail__Router__V1__Code msg_code;

struct msg_call;
/* msg_db_cb - the result of the call's db request (after any retry) */
typedef void msg_db_cb(struct msg_call *mc, const struct db_result *r);

struct msg_call {
	struct rpc_call *call;
	struct rt_loop *l;
	const char *what;		/* method name, for logs */
	uint64_t account_id;		/* of the request's session */
	/* the db request in flight, and what it takes to send it again */
	struct db_request *req;
	struct event *retry_ev;
	const char *stmt;		/* prepared statement, or NULL for sql */
	char *sql;
	int nparams;
	char **params;			/* owned; NULL entries are SQL NULLs */
	int result_format;
	bool readonly;			/* safe to run again whatever happened */
	int attempts;
	msg_db_cb *cb;
	/* the method's own cleanup, run once by msg_call_end */
	void (*fini)(struct msg_call *mc);
};

/* ------------------------------------------------------------ call plumbing */

/* msg_call_new - a zeroed state of `size` bytes (struct msg_call first)
 * attached to call; NULL (and the call finished INVALID_ARGUMENT) when the
 * call already has one: a unary method got a second request message */
void *msg_call_new(struct rpc_call *call, size_t size, const char *what);
/* msg_call_end - cancel what is in flight, free everything (not the call) */
void msg_call_end(struct msg_call *mc);
/* msg_finish - end the call with a status, then msg_call_end */
void msg_finish(struct msg_call *mc, enum rpc_status st, const char *message);
/* msg_reply - send one reply message, finish OK, msg_call_end */
void msg_reply(struct msg_call *mc, const ProtobufCMessage *reply);
/* msg_db_error - end the call after a failed db request (UNAVAILABLE / INTERNAL) */
void msg_db_error(struct msg_call *mc, const struct db_result *r);
/* method callbacks every method shares */
void msg_on_half_close(struct rpc_call *call);
void msg_on_cancel(struct rpc_call *call);

/* msg_exec - run a prepared statement (stmt) or a one-statement sql text
 * (owned, freed with the call) with params (owned, nparams strings or NULLs).
 * DB_UNAVAILABLE is retried once after a pause when readonly, or when the
 * request never reached the server; then cb gets the result. */
void msg_exec(struct msg_call *mc, const char *stmt, char *sql, int nparams, char **params,
	      int result_format, bool readonly, msg_db_cb *cb);
/* msg_params - a params array of n NULLs to fill with xstrdup/xasprintf */
char **msg_params(int n);

/* msg_session_check - the session names an account and the mailbox an id;
 * sets mc->account_id. false: the reply code is INVALID */
bool msg_session_check(struct msg_call *mc, const Mail__Router__V1__Session *s,
		       uint64_t mailbox_id);
/* msg_code_of_sqlstate - the reply code of a schema error (class ML), or
 * -1 when the SQL error is not one of those */
int msg_code_of_sqlstate(const char *sqlstate);

/* ------------------------------------------------------------ UID sets */

/* msg_uidset_sql - the set as an int8multirange literal ("{[1,4),[7,8)}");
 * '*' (0xffffffff) is the highest UID; first > last is swapped. NULL with
 * *error_r for too many ranges. An empty or absent set is "{}". */
char *msg_uidset_sql(const Mail__Router__V1__UidSet *set, const char **error_r);
/* msg_uidset_empty - no range at all */
bool msg_uidset_empty(const Mail__Router__V1__UidSet *set);

/* a UidSet built from ascending UIDs (consecutive ones share a range) */
struct msg_uidset_builder {
	Mail__Router__V1__UidSet set;
	Mail__Router__V1__UidRange *ranges;
	size_t n, cap;
};
void msg_uidset_init(struct msg_uidset_builder *b);
void msg_uidset_add(struct msg_uidset_builder *b, uint32_t uid);
/* msg_uidset_done - the finished set (valid until msg_uidset_free) */
Mail__Router__V1__UidSet *msg_uidset_done(struct msg_uidset_builder *b);
void msg_uidset_free(struct msg_uidset_builder *b);

/* ------------------------------------------------------------ keywords */

/* msg_keyword_valid - an IMAP flag-keyword (atom, RFC 9051), bounded */
bool msg_keyword_valid(const char *kw);
/* msg_text_array_sql - a text[] literal of the strings, every one quoted */
char *msg_text_array_sql(char *const *v, size_t n);

/* ------------------------------------------------------------ binary results */

/* memory released together (one reply's strings and arrays) */
struct msg_arena {
	void **p;
	size_t n, cap;
};
void *msg_arena_alloc(struct msg_arena *a, size_t size);
void msg_arena_free(struct msg_arena *a);

/* readers of a binary-format PGresult; false on a NULL or malformed value */
bool msg_pg_int(const PGresult *res, int row, int col, int64_t *v_r);
bool msg_pg_bytes(const PGresult *res, int row, int col, const uint8_t **p_r, size_t *len_r);
/* msg_pg_text_array - a one-dimensional text[] as NUL-terminated strings
 * allocated in the arena (a NULL value is an empty array); false if malformed */
bool msg_pg_text_array(const PGresult *res, int row, int col, struct msg_arena *a,
		       char ***v_r, size_t *n_r);

/* ------------------------------------------------------------ metrics */

/* registered once by the module's main_init, before any call runs */
struct msg_metrics {
	struct metric *body_bytes;	/* message_fetch_body_bytes_total */
	struct metric *body_paused;	/* message_fetch_body_paused_total */
	struct metric *meta_messages;	/* message_fetch_meta_messages_total */
	struct metric *search_refused;	/* message_search_refused_total */
};
extern struct msg_metrics msg_m;

/* ------------------------------------------------------------ methods */

void msg_fetch_meta_on_message(struct rpc_call *call, const uint8_t *msg, size_t len);
void msg_fetch_body_on_message(struct rpc_call *call, const uint8_t *msg, size_t len);
void msg_fetch_body_on_writable(struct rpc_call *call);
void msg_search_on_message(struct rpc_call *call, const uint8_t *msg, size_t len);

/* SQL of the prepared statements the other files run (rt_message.c lists
 * them all in the module's table, names "message_*") */
extern const char msg_sql_fetch_meta[];
#define MSG_FETCH_META_NPARAMS 10
extern const char msg_sql_fetch_body[];
#define MSG_FETCH_BODY_NPARAMS 3
#endif
