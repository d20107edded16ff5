/* rpc.h - gRPC (HTTP/2 + length-prefixed protobuf) on nghttp2 and libevent.
 * The wire protocol is grpc/grpc's PROTOCOL-HTTP2.md; it interoperates with
 * stock gRPC (python grpcio) both ways. Messages are opaque bytes here; the
 * *_pb helpers pack/unpack protobuf-c messages.
 *
 * Threading: a server connection or a client lives on one event_base and is
 * touched only from that loop's thread. The rpc_server object itself (its
 * method table) is shared read-only by all workers.
 *
 * Ownership: the runtime owns every rpc_call / rpc_ccall. Handlers keep the
 * pointer until they finish it or are told it is gone (on_cancel / on_done);
 * after that the pointer is dead. Callbacks are never invoked re-entrantly
 * from inside rpc_call_send/finish or rpc_ccall_send/close_send/cancel. */
#ifndef MAIL_RPC_H
#define MAIL_RPC_H
#include "lib/common.h"
#include <event2/event.h>
#include <event2/util.h>
#include <sys/socket.h>

typedef struct ssl_ctx_st SSL_CTX;
struct ProtobufCMessage;
struct ProtobufCMessageDescriptor;

enum rpc_status {
	RPC_OK = 0, RPC_CANCELLED = 1, RPC_UNKNOWN = 2, RPC_INVALID_ARGUMENT = 3,
	RPC_DEADLINE_EXCEEDED = 4, RPC_NOT_FOUND = 5, RPC_ALREADY_EXISTS = 6,
	RPC_PERMISSION_DENIED = 7, RPC_RESOURCE_EXHAUSTED = 8, RPC_FAILED_PRECONDITION = 9,
	RPC_ABORTED = 10, RPC_OUT_OF_RANGE = 11, RPC_UNIMPLEMENTED = 12, RPC_INTERNAL = 13,
	RPC_UNAVAILABLE = 14, RPC_DATA_LOSS = 15, RPC_UNAUTHENTICATED = 16,
};
const char *rpc_status_name(enum rpc_status st);

#define RPC_DEFAULT_MAX_MESSAGE (4u * 1024 * 1024)
#define RPC_CHUNK_SIZE (64u * 1024) /* bodies travel in chunks of at most this */

/* ------------------------------------------------------------------ server */

struct rpc_server;
struct rpc_call;

struct rpc_method {
	const char *path; /* "/mail.store.v1.BlobStore/Put" */
	/* on_start (optional): headers arrived; metadata and deadline are known */
	void (*on_start)(struct rpc_call *call);
	/* on_message: one whole request message; the bytes live only during the call */
	void (*on_message)(struct rpc_call *call, const uint8_t *msg, size_t len);
	/* on_half_close: the client ended its side (after the last message) */
	void (*on_half_close)(struct rpc_call *call);
	/* on_cancel (optional): RST_STREAM, deadline, connection loss or server
	 * stop before rpc_call_finish; the call dies when this returns */
	void (*on_cancel)(struct rpc_call *call);
	/* on_writable (optional): queued response bytes fell below half the
	 * high-water mark; server-streaming handlers resume producing here */
	void (*on_writable)(struct rpc_call *call);
};

struct rpc_server_opts {
	size_t max_message;     /* largest request message accepted; 0 = RPC_DEFAULT_MAX_MESSAGE */
	SSL_CTX *tls;           /* NULL = h2c with prior knowledge; else TLS with ALPN "h2" */
	uint32_t window;        /* per-stream and connection receive window; 0 = 1 MiB */
	int keepalive_ms;       /* send PING after this idle time; 0 = off */
	uint32_t max_streams;   /* SETTINGS_MAX_CONCURRENT_STREAMS; 0 = 1000 */
};

/* rpc_server_new - nworkers: how many worker threads will accept (indexes 0..n-1) */
struct rpc_server *rpc_server_new(const struct rpc_method *methods, size_t n_methods,
				  const struct rpc_server_opts *opts, int nworkers);
void rpc_server_free(struct rpc_server **srvp);
/* rpc_server_accept - serve a connected socket on worker `widx`'s loop (takes fd) */
void rpc_server_accept(struct rpc_server *srv, int widx, struct event_base *base,
		       evutil_socket_t fd, const struct sockaddr *peer, int peer_len);
/* rpc_server_drain - GOAWAY on worker widx's connections; running calls finish */
void rpc_server_drain(struct rpc_server *srv, int widx);
/* rpc_server_close_all - drops worker widx's connections now (cancels calls) */
void rpc_server_close_all(struct rpc_server *srv, int widx);
size_t rpc_server_conn_count(const struct rpc_server *srv, int widx);
/* rpc_server_set_tls - swap the TLS context for new connections (SIGHUP reload) */
void rpc_server_set_tls(struct rpc_server *srv, SSL_CTX *tls);

void rpc_call_set_data(struct rpc_call *call, void *data);
void *rpc_call_data(const struct rpc_call *call);
uint64_t rpc_call_id(const struct rpc_call *call);       /* for logs */
const char *rpc_call_path(const struct rpc_call *call);
struct event_base *rpc_call_base(const struct rpc_call *call);
int rpc_call_worker(const struct rpc_call *call);         /* widx it runs on */
/* rpc_call_metadata - request metadata value (lowercase name) or NULL */
const char *rpc_call_metadata(const struct rpc_call *call, const char *name);
/* rpc_call_deadline_ms - ms left before the client's grpc-timeout, -1 = none */
int64_t rpc_call_deadline_ms(const struct rpc_call *call);
const char *rpc_call_peer(const struct rpc_call *call);   /* "ip:port" */

/* rpc_call_send - queue one response message; -1 if finished or too large */
int rpc_call_send(struct rpc_call *call, const void *msg, size_t len);
int rpc_call_send_pb(struct rpc_call *call, const struct ProtobufCMessage *msg);
/* rpc_call_queued - response bytes queued and not yet handed to nghttp2 */
size_t rpc_call_queued(const struct rpc_call *call);
#define RPC_CALL_HIGH_WATER (256u * 1024)
/* rpc_call_finish - end the call with trailers; message may be NULL. The call
 * is owned by the runtime afterwards (no on_cancel will follow). */
void rpc_call_finish(struct rpc_call *call, enum rpc_status st, const char *message);
void rpc_call_finishf(struct rpc_call *call, enum rpc_status st, const char *fmt, ...) ATTR_PRINTF(3, 4);

/* ------------------------------------------------------------------ client */

struct rpc_client;
struct rpc_ccall;

struct rpc_client_opts {
	SSL_CTX *tls;              /* NULL = h2c prior knowledge; else TLS, ALPN "h2" */
	const char *authority;     /* :authority; default "host:port" */
	int connect_timeout_ms;    /* 0 = 5000 */
	int keepalive_ms;          /* PING after idle; a missing PONG within 10 s drops the connection; 0 = off */
	size_t max_message;        /* largest response message accepted; 0 = default */
	uint32_t window;           /* receive window; 0 = 1 MiB */
	int backoff_min_ms, backoff_max_ms; /* reconnect backoff; 0 = 100 / 10000 */
	int keepalive_timeout_ms;  /* (added) how long a PING may go unanswered; 0 = 10000 */
};

struct rpc_ccall_cbs {
	/* on_message: one response message (bytes live only during the call) */
	void (*on_message)(struct rpc_ccall *call, const uint8_t *msg, size_t len, void *arg);
	/* on_done: exactly once, unless the caller cancelled; the call dies when
	 * this returns. message is never NULL ("" when none). A response without
	 * grpc-status is reported as RPC_UNKNOWN/INTERNAL, never OK. */
	void (*on_done)(struct rpc_ccall *call, enum rpc_status st, const char *message, void *arg);
	/* on_writable (optional): queued request bytes fell below half the high-water mark */
	void (*on_writable)(struct rpc_ccall *call, void *arg);
};

/* rpc_client_new - addr "host:port" (numeric host or name resolved once at
 * connect). Connects lazily on the first call, reconnects with exponential
 * backoff. Calls started while disconnected wait for the connection until
 * their deadline; a failed connection attempt fails waiting calls with
 * RPC_UNAVAILABLE. */
struct rpc_client *rpc_client_new(struct event_base *base, const char *addr,
				  const struct rpc_client_opts *opts);
/* rpc_client_free - cancels every call without callbacks */
void rpc_client_free(struct rpc_client **cp);
bool rpc_client_connected(const struct rpc_client *c);
const char *rpc_client_addr(const struct rpc_client *c);

/* rpc_client_call - start a call of any kind; timeout_ms <= 0 = no deadline.
 * Never NULL. Metadata may be added until the first send/close_send. */
struct rpc_ccall *rpc_client_call(struct rpc_client *c, const char *path, int64_t timeout_ms,
				  const struct rpc_ccall_cbs *cbs, void *arg);
void rpc_ccall_add_metadata(struct rpc_ccall *call, const char *name, const char *value);
int rpc_ccall_send(struct rpc_ccall *call, const void *msg, size_t len);
int rpc_ccall_send_pb(struct rpc_ccall *call, const struct ProtobufCMessage *msg);
void rpc_ccall_close_send(struct rpc_ccall *call);
size_t rpc_ccall_queued(const struct rpc_ccall *call);
/* rpc_ccall_cancel - RST_STREAM(CANCEL); no callback follows */
void rpc_ccall_cancel(struct rpc_ccall *call);
/* rpc_client_unary - call + send + close_send in one */
struct rpc_ccall *rpc_client_unary(struct rpc_client *c, const char *path, int64_t timeout_ms,
				   const void *msg, size_t len,
				   const struct rpc_ccall_cbs *cbs, void *arg);
struct rpc_ccall *rpc_client_unary_pb(struct rpc_client *c, const char *path, int64_t timeout_ms,
				      const struct ProtobufCMessage *msg,
				      const struct rpc_ccall_cbs *cbs, void *arg);
#endif
