/* migrate.c - the schema migration runner (synchronous, blocking libpq).
 *
 * Runs at router start before any event loop exists, and from `mailctl migrate`;
 * never on a loop thread. The migrations themselves are compiled in
 * (migrations_embedded.c, generated from the router/migrations NNNN_name.sql files), so a binary
 * always knows exactly which schema it was built for.
 *
 * Concurrency: every runner takes pg_advisory_lock(MIGRATE_LOCK_KEY) on its session
 * before it even looks at schema_migrations, so N routers starting together apply
 * each migration once and the others find nothing left to do. The lock dies with
 * the session, so a runner killed midway frees it (and its transaction rolls back).
 */
#include "lib/common.h"
#include "router/migrate.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdlib.h>
#include <time.h>

/* the error text handed out through error_r (one per thread, until the next call) */
static __thread char migrate_errbuf[1024];

/* migrate_fail - format the error for error_r; returns -1 */
static int ATTR_PRINTF(2, 3) migrate_fail(const char **error_r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(migrate_errbuf, sizeof(migrate_errbuf), fmt, ap);
	va_end(ap);
	if (error_r != NULL)
		*error_r = migrate_errbuf;
	return -1;
}

/* pg_message - a libpq/server error message on one line, for error_r and logs */
static const char *pg_message(const char *msg, char *buf, size_t size)
{
	size_t o = 0;
	for (const char *p = msg != NULL ? msg : ""; *p != '\0' && o + 1 < size; p++)
		buf[o++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
	while (o > 0 && buf[o - 1] == ' ')
		o--;
	buf[o] = '\0';
	return buf;
}

/* migrate_notice - server NOTICEs (CREATE ... IF NOT EXISTS etc.) go to the debug log */
static void migrate_notice(void *arg, const char *message)
{
	char buf[512], q[600];
	pg_message(message, buf, sizeof(buf));
	log_debug("db notice", "msg=%s", log_quote(q, sizeof(q), buf, strlen(buf)));
}

/* migrate_latest - the highest version embedded in this binary */
int migrate_latest(void)
{
	int v = 0;
	for (size_t i = 0; i < migrate_migrations_count; i++)
		v = MAIL_MAX(v, migrate_migrations[i].version);
	return v;
}

/* migrate_find - the embedded migration of a version, or NULL */
static const struct migrate_migration *migrate_find(int version)
{
	for (size_t i = 0; i < migrate_migrations_count; i++)
		if (migrate_migrations[i].version == version)
			return &migrate_migrations[i];
	return NULL;
}

/* migrate_exec - run sql, expecting a command or tuples result; on failure the
 * server's message goes to error_r prefixed with what */
static int migrate_exec(PGconn *c, const char *sql, PGresult **res_r, const char *what,
			const char **error_r)
{
	PGresult *res = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(res);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		char buf[700];
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		pg_message(res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(c), buf, sizeof(buf));
		if (buf[0] == '\0')
			pg_message(PQerrorMessage(c), buf, sizeof(buf));
		PQclear(res);
		return migrate_fail(error_r, "%s: %s%s%s", what, buf, state != NULL ? " sqlstate=" : "",
				    state != NULL ? state : "");
	}
	if (res_r != NULL)
		*res_r = res;
	else
		PQclear(res);
	return 0;
}

/* migrate_connect - a blocking connection to a writable server, or NULL */
static PGconn *migrate_connect(const char *conninfo, const char **error_r)
{
	char buf[700];
	PGconn *c = PQconnectdb(conninfo);
	if (c == NULL) {
		migrate_fail(error_r, "cannot allocate a PostgreSQL connection");
		return NULL;
	}
	if (PQstatus(c) != CONNECTION_OK) {
		migrate_fail(error_r, "cannot connect to PostgreSQL: %s",
			     pg_message(PQerrorMessage(c), buf, sizeof(buf)));
		PQfinish(c);
		return NULL;
	}
	PQsetNoticeProcessor(c, migrate_notice, NULL);
	return c;
}

/* migrate_applied - the versions recorded in schema_migrations, ascending */
static int migrate_applied(PGconn *c, int **versions_r, char ***sums_r, int *n_r,
			   const char **error_r)
{
	PGresult *res;
	if (migrate_exec(c, "SELECT version, checksum FROM schema_migrations ORDER BY version",
			 &res, "reading schema_migrations", error_r) < 0)
		return -1;
	int n = PQntuples(res);
	int *v = xcalloc((size_t)n + 1, sizeof(*v));
	char **s = xcalloc((size_t)n + 1, sizeof(*s));
	for (int i = 0; i < n; i++) {
		v[i] = atoi(PQgetvalue(res, i, 0));
		s[i] = xstrdup(PQgetisnull(res, i, 1) ? "" : PQgetvalue(res, i, 1));
	}
	PQclear(res);
	*versions_r = v;
	*sums_r = s;
	*n_r = n;
	return 0;
}

/* migrate_apply - one migration in its own transaction, recorded with its checksum */
static int migrate_apply(PGconn *c, const struct migrate_migration *m, const char **error_r)
{
	char what[160], vbuf[16];
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	snprintf(what, sizeof(what), "migration %04d_%s failed", m->version, m->name);
	/* bounded lock waits: a migration must not queue behind a long query while every
	 * other session queues behind it */
	if (migrate_exec(c, "BEGIN; SET LOCAL lock_timeout = '30s'", NULL, what, error_r) < 0)
		return -1;
	if (migrate_exec(c, m->sql, NULL, what, error_r) < 0) {
		PQclear(PQexec(c, "ROLLBACK"));
		return -1;
	}
	snprintf(vbuf, sizeof(vbuf), "%d", m->version);
	const char *params[3] = { vbuf, m->name, m->sha256 };
	PGresult *res = PQexecParams(c,
				     "INSERT INTO schema_migrations (version, description, checksum) "
				     "VALUES ($1, $2, $3)",
				     3, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		char buf[700];
		pg_message(PQresultErrorMessage(res), buf, sizeof(buf));
		PQclear(res);
		PQclear(PQexec(c, "ROLLBACK"));
		return migrate_fail(error_r, "%s: recording it: %s", what, buf);
	}
	PQclear(res);
	if (migrate_exec(c, "COMMIT", NULL, what, error_r) < 0) {
		PQclear(PQexec(c, "ROLLBACK"));
		return -1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	log_info("schema migration applied", "version=%d name=%s ms=%ld", m->version, m->name,
		 (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
	return 0;
}

/* migrate_locked - the work done while holding the advisory lock */
static int migrate_locked(PGconn *c, const char **error_r)
{
	int *versions = NULL, n = 0, ret = -1;
	char **sums = NULL;
	int latest = migrate_latest();

	if (migrate_exec(c, "SET client_min_messages = warning; "
			 "CREATE TABLE IF NOT EXISTS schema_migrations ("
			 " version integer PRIMARY KEY,"
			 " description text NOT NULL,"
			 " checksum text,"
			 " applied_at timestamptz NOT NULL DEFAULT now())",
			 NULL, "creating schema_migrations", error_r) < 0)
		return -1;
	if (migrate_applied(c, &versions, &sums, &n, error_r) < 0)
		return -1;

	int db_version = n > 0 ? versions[n - 1] : 0;
	if (db_version > latest) {
		migrate_fail(error_r, "database schema version %d is newer than this binary knows "
			     "(latest %d): refusing to run against it; upgrade this program",
			     db_version, latest);
		goto out;
	}
	for (int i = 0; i < n; i++) {
		const struct migrate_migration *m = migrate_find(versions[i]);
		if (m == NULL) {
			migrate_fail(error_r, "database has schema migration %d, which this binary "
				     "does not know (latest %d)", versions[i], latest);
			goto out;
		}
		if (sums[i][0] != '\0' && strcmp(sums[i], m->sha256) != 0)
			log_warn("schema migration changed since it was applied", "version=%d name=%s "
				 "applied_sha256=%.64s binary_sha256=%.64s", m->version, m->name,
				 sums[i], m->sha256);
	}
	int applied = 0;
	for (size_t i = 0; i < migrate_migrations_count; i++) {
		const struct migrate_migration *m = &migrate_migrations[i];
		bool have = false;
		for (int j = 0; j < n && !have; j++)
			have = versions[j] == m->version;
		if (have)
			continue;
		if (m->version < db_version)
			log_warn("applying a schema migration older than the database's version",
				 "version=%d db_version=%d", m->version, db_version);
		if (migrate_apply(c, m, error_r) < 0)
			goto out;
		applied++;
	}
	log_info("schema up to date", "version=%d applied=%d", latest, applied);
	ret = 0;
out:
	for (int i = 0; i < n; i++)
		free(sums[i]);
	free(sums);
	free(versions);
	return ret;
}

/* migrate_run - connect, lock, bring the schema up to date, unlock */
int migrate_run(const char *conninfo, const char **error_r)
{
	char lock_sql[96], unlock_sql[96], buf[64];
	PGresult *res;
	PGconn *c = migrate_connect(conninfo, error_r);
	if (c == NULL)
		return -1;

	const char *host = PQhost(c) != NULL ? PQhost(c) : "";
	const char *port = PQport(c) != NULL ? PQport(c) : "";
	const char *standby = PQparameterStatus(c, "in_hot_standby");
	if (standby != NULL && strcmp(standby, "on") == 0) {
		migrate_fail(error_r, "connected to a hot standby (read-only) at host=%s port=%s: "
			     "cannot migrate; use target_session_attrs=read-write", host, port);
		PQfinish(c);
		return -1;
	}
	log_info("schema migration check", "host=%s port=%s binary_version=%d",
		 log_quote(buf, sizeof(buf), host, strlen(host)), port, migrate_latest());

	snprintf(lock_sql, sizeof(lock_sql), "SELECT pg_try_advisory_lock(%lld)", MIGRATE_LOCK_KEY);
	if (migrate_exec(c, lock_sql, &res, "taking the migration lock", error_r) < 0) {
		PQfinish(c);
		return -1;
	}
	bool got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	if (!got) {
		log_info("waiting for the schema migration lock", "key=%lld", MIGRATE_LOCK_KEY);
		snprintf(lock_sql, sizeof(lock_sql), "SELECT pg_advisory_lock(%lld)", MIGRATE_LOCK_KEY);
		if (migrate_exec(c, lock_sql, NULL, "taking the migration lock", error_r) < 0) {
			PQfinish(c);
			return -1;
		}
	}
	int ret = migrate_locked(c, error_r);
	snprintf(unlock_sql, sizeof(unlock_sql), "SELECT pg_advisory_unlock(%lld)", MIGRATE_LOCK_KEY);
	PQclear(PQexec(c, unlock_sql));
	PQfinish(c);
	return ret;
}

/* migrate_db_version - max(version) of schema_migrations, 0 if none */
int migrate_db_version(const char *conninfo, int *version_r, const char **error_r)
{
	PGresult *res;
	PGconn *c = migrate_connect(conninfo, error_r);
	if (c == NULL)
		return -1;
	if (migrate_exec(c, "SELECT to_regclass('schema_migrations') IS NOT NULL", &res,
			 "reading the schema version", error_r) < 0) {
		PQfinish(c);
		return -1;
	}
	bool exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	*version_r = 0;
	if (exists) {
		if (migrate_exec(c, "SELECT coalesce(max(version), 0) FROM schema_migrations", &res,
				 "reading the schema version", error_r) < 0) {
			PQfinish(c);
			return -1;
		}
		*version_r = atoi(PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	PQfinish(c);
	return 0;
}
