/* migrate.h - the PostgreSQL schema of the mail service and its migration runner.
 *
 * The schema lives in router/migrations/NNNN_name.sql (additive only: see the README
 * there), embedded into the binary at build time. migrate_run() brings a database up
 * to the newest version this binary knows; it is synchronous (blocking libpq) and is
 * meant for router start, before the event loops run, and for `mailctl migrate`.
 * Several routers may call it at once: a PostgreSQL advisory lock serializes them.
 *
 * The SQLSTATE codes the schema's functions raise (class "ML") are below, so that
 * callers map them to protocol answers without matching message text. */
#ifndef ROUTER_MIGRATE_H
#define ROUTER_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>

/* the key of pg_advisory_lock() held while migrating ("mailmigr") */
#define MIGRATE_LOCK_KEY 0x6d61696c6d696772LL

/* SQLSTATEs raised by the SQL functions of the schema */
#define MIGRATE_SQLSTATE_OVER_QUOTA "ML001"	/* copy over the account's quota */
#define MIGRATE_SQLSTATE_NO_MAILBOX "ML002"	/* IMAP [NONEXISTENT] */
#define MIGRATE_SQLSTATE_EXISTS "ML003"		/* IMAP [ALREADYEXISTS] */
#define MIGRATE_SQLSTATE_CANNOT "ML004"		/* IMAP [CANNOT]: delete INBOX, rename into itself */
#define MIGRATE_SQLSTATE_INVALID "ML005"	/* bad mailbox name, store mode, flags */
#define MIGRATE_SQLSTATE_NO_ACCOUNT "ML006"

/* one embedded migration (generated from router/migrations by embed.cmake) */
struct migrate_migration {
	int version;
	const char *name;	/* from the file name: "init" */
	const char *sha256;	/* hex digest of the file, recorded when applied */
	const char *sql;
	size_t sql_len;
};
extern const struct migrate_migration migrate_migrations[];
extern const size_t migrate_migrations_count;

/* migrate_latest - the newest schema version this binary knows */
int migrate_latest(void);

/* migrate_run - connect with conninfo, take the migration lock, create
 * schema_migrations if missing, and apply each missing migration in its own
 * transaction (each one logged). Refuses (-1) a database whose version is newer
 * than migrate_latest(), naming both versions. 0 / -1 with *error_r (valid until
 * the next call from this thread). */
int migrate_run(const char *conninfo, const char **error_r);

/* migrate_db_version - the database's schema version (0: none applied yet) without
 * changing anything; for `mailctl migrate --status` and readiness checks */
int migrate_db_version(const char *conninfo, int *version_r, const char **error_r);

#endif
