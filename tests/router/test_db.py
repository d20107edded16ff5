"""The router's PostgreSQL layer against a real PostgreSQL 15 (tests/pgcluster.py).
Run with /usr/bin/python3 -m pytest; MAIL_BUILD_DIR names the build.

  db_check (tests/interop/db_check.c) drives router/db.c and router/migrate.c:
      pipelining, error isolation, prepared statements, LISTEN/NOTIFY, cancellation,
      timeouts, a server restart and a failover to a promoted standby under a
      steady insert load (no acknowledged write lost, no false success),
      migrations run twice at once, refusal of a newer schema, and 8-connection
      concurrent mail_deliver.
  psql checks the schema's SQL functions directly: quota, idempotent delivery,
      STORE with UNCHANGEDSINCE, EXPUNGE with VANISHED data and blob refcounts,
      COPY/MOVE uids, RENAME with children, CREATE/DELETE, cascades, GC, lookups,
      the POP3 lock, auth throttling, the queue's SKIP LOCKED claim, notifications."""
import hashlib
import os
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import binary  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "router", "migrations")
# newest migration in router/migrations (the binary embeds every file there)
LATEST = max(int(f[:4]) for f in os.listdir(MIGRATIONS) if re.match(r"^\d{4}_.*\.sql$", f))


# ---------------------------------------------------------------- helpers

def db_check(conninfo, scenario, *args, timeout=120):
    """Run one db_check scenario; fail with its output unless every check passed."""
    p = subprocess.run([binary("tests", "db_check"), conninfo, scenario] + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    out, err = p.stdout.decode(), p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, "db_check %s failed (%d):\n%s\n%s" % (scenario, p.returncode, out, err[-4000:])
    assert " 0 failed" in out and re.search(r"^[1-9]\d* passed", out, re.M), out
    return out, err


def stats(out):
    """STAT k=v lines -> dict."""
    d = {}
    for line in out.splitlines():
        if line.startswith("STAT "):
            for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', line[5:]):
                d[m.group(1)] = m.group(2)
    return d


def lit(v):
    """An SQL literal."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def blob_id(n):
    return hashlib.sha256(str(n).encode()).hexdigest()


class Sql:
    """psql on one database: rows as lists of strings."""

    def __init__(self, pg, db):
        self.pg, self.db = pg, db

    def rows(self, sql):
        out = self.pg.psql(sql, db=self.db)
        return [line.split("|") for line in out.splitlines() if line != ""]

    def one(self, sql):
        r = self.rows(sql)
        assert len(r) == 1 and len(r[0]) == 1, r
        return r[0][0]

    def error(self, sql):
        """Run sql that must fail; returns the error text."""
        rc, out, err = self.pg.psql(sql, db=self.db, check=False, args=["-v", "VERBOSITY=verbose"])
        assert rc != 0, "expected an error from: %s (got %s)" % (sql, out)
        return err

    def deliver(self, accounts, n=0, size=1000, flags=0, token=None, mailbox="INBOX",
                keywords=None, blob=None):
        kw = "NULL" if keywords is None else "ARRAY[%s]::text[]" % ",".join(lit(k) for k in keywords)
        return self.rows(
            "SELECT account_id, status, mailbox_id, uidvalidity, uid, modseq FROM mail_deliver("
            "ARRAY[%s]::bigint[], %s, %s, %d, now(), %d, %s, '{\"subject\":\"m%d\"}', "
            "'\\x5375626a6563743a20780d0a', 'body text number %d', ARRAY['n1','n2'], %s)"
            % (",".join(str(a) for a in accounts), lit(mailbox), lit(blob or blob_id(n)), size, flags,
               kw, n, n, lit(token)))

    def account(self, address, quota_bytes=0, quota_messages=0):
        dom = address.split("@", 1)[1]
        self.rows("INSERT INTO domains (name) VALUES (%s) ON CONFLICT DO NOTHING" % lit(dom))
        return int(self.one(
            "INSERT INTO accounts (domain_id, address, password_hash, quota_bytes, quota_messages) "
            "SELECT id, %s, '$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA', %d, %d FROM domains "
            "WHERE name = %s RETURNING id" % (lit(address), quota_bytes, quota_messages, lit(dom))))

    def mailbox(self, account, name="INBOX"):
        return int(self.one("SELECT id FROM mailboxes WHERE account_id = %d AND name = %s"
                            % (account, lit(name))))

    def mbox_state(self, mb):
        r = self.rows("SELECT uidnext, highestmodseq, message_count, unseen_count, deleted_count, "
                      "total_bytes FROM mailboxes WHERE id = %d" % mb)[0]
        return dict(zip(["uidnext", "highestmodseq", "messages", "unseen", "deleted", "bytes"],
                        map(int, r)))


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def pg():
    with PgCluster(fsync=False) as c:
        yield c


@pytest.fixture(scope="module")
def template(pg):
    """A database migrated by migrate_run, used as the template of each SQL test's."""
    pg.create_database("tmpl")
    db_check(pg.conninfo("tmpl"), "migrate")
    return "tmpl"


_n = [0]


@pytest.fixture
def sql(pg, template):
    _n[0] += 1
    name = "s%d" % _n[0]
    pg.psql('CREATE DATABASE "%s" TEMPLATE "%s"' % (name, template))
    return Sql(pg, name)


@pytest.fixture
def plain_db(pg):
    _n[0] += 1
    return pg.create_database("p%d" % _n[0])


# ---------------------------------------------------------------- the harness

def test_pgcluster_new_base_dir_and_cleanup():
    """PgCluster under a base directory that does not exist yet, with a tight umask;
    cleanup kills the servers and removes everything."""
    base = "/tmp/pgc-%d/a/b" % os.getpid()
    old = os.umask(0o077)
    try:
        c = PgCluster(base_dir=base).start()
    finally:
        os.umask(old)
    try:
        assert c.psql("SELECT current_setting('listen_addresses') = '' AND current_setting('fsync') = 'off'") \
            == "t\n"
        pids = c.postmaster_pids()
        assert len(pids) == 1 and os.path.exists("/proc/%d" % pids[0])
        d = c.dir
    finally:
        c.cleanup()
    assert not os.path.exists(d)
    time.sleep(0.2)
    assert not os.path.exists("/proc/%d/status" % pids[0]) or \
        "zombie" in open("/proc/%d/status" % pids[0]).read()
    import shutil
    shutil.rmtree("/tmp/pgc-%d" % os.getpid(), ignore_errors=True)


# ---------------------------------------------------------------- the pool

def test_pipelined_inserts_faster_and_in_order(pg, plain_db):
    out, _ = db_check(pg.conninfo(plain_db), "pipeline")
    st = stats(out)
    seq, pip, pip4 = int(st["sequential_ms"]), int(st["pipelined_ms"]), int(st["pipelined4_ms"])
    print("2000 INSERTs: sequential %d ms, pipelined %d ms (1 conn), %d ms (4 conns)" % (seq, pip, pip4))
    assert pip < seq
    assert Sql(pg, plain_db).one("SELECT count(*) FROM pl_b") == "2000"


def test_sql_error_fails_only_its_request(pg, plain_db):
    db_check(pg.conninfo(plain_db), "errors")
    s = Sql(pg, plain_db)
    assert s.one("SELECT count(*) FROM er") == "98"
    assert s.one("SELECT count(*) FROM er WHERE id = 50") == "0"


def test_prepared_statements(pg, plain_db):
    _, err = db_check(pg.conninfo(plain_db), "prepared")
    assert 'msg="db prepare failed"' in err and "no_such_table_here" in err


def test_listen_notify(pg, plain_db):
    db_check(pg.conninfo(plain_db), "notify")


def test_cancel_and_pool_free(pg, plain_db):
    db_check(pg.conninfo(plain_db), "cancel")


def test_timeouts_and_no_server(pg, plain_db):
    db_check(pg.conninfo(plain_db), "timeouts")


def test_connected_log_names_host(pg, plain_db):
    _, err = db_check(pg.conninfo(plain_db), "prepared")
    line = [l for l in err.splitlines() if 'msg="db connected"' in l][0]
    assert 'host="%s"' % pg.sock_dir() in line and "in_hot_standby=off" in line, line


def test_multihost_skips_a_host_that_never_answers(pg, plain_db):
    """libpq has no per-host timeout in async mode: the pool must rotate hosts."""
    import socket
    import threading
    bh_dir = os.path.join(pg.dir, "bh")
    os.makedirs(bh_dir)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(os.path.join(bh_dir, ".s.PGSQL.%d" % pg.port))
    srv.listen(16)
    held = []

    def hold():
        while True:
            try:
                held.append(srv.accept()[0])   # accept, never answer
            except OSError:
                return
    t = threading.Thread(target=hold, daemon=True)
    t.start()
    try:
        ci = "host=%s,%s port=%d,%d dbname=%s user=postgres" % (bh_dir, pg.sock_dir(), pg.port, pg.port,
                                                                plain_db)
        out, err = db_check(ci, "blackhole")
        assert stats(out)["port"] == str(pg.port)
        assert "connect timed out" in err and held, err
    finally:
        srv.close()
        for c in held:
            c.close()


# ---------------------------------------------------------------- migrations

def test_migrate_concurrent_and_idempotent(pg, plain_db):
    ci = pg.conninfo(plain_db)
    procs = [subprocess.Popen([binary("tests", "db_check"), ci, "migrate"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [(p.communicate(timeout=60), p.returncode) for p in procs]
    for (out, err), rc in outs:
        assert rc == 0, out.decode() + err.decode()
    logs = "".join(err.decode() for (out, err), rc in outs)
    assert logs.count('msg="schema migration applied"') == LATEST, logs
    s = Sql(pg, plain_db)
    rows = s.rows("SELECT version, description FROM schema_migrations ORDER BY version")
    assert [int(r[0]) for r in rows] == list(range(1, LATEST + 1)) and rows[0] == ["1", "init"]
    # a third run changes nothing
    out, err = db_check(ci, "migrate")
    assert "applied=0" in err and stats(out)["version_before"] == str(LATEST)
    assert s.one("SELECT count(*) FROM schema_migrations") == str(LATEST)


def test_migrate_refuses_newer_schema(pg, plain_db):
    ci = pg.conninfo(plain_db)
    db_check(ci, "migrate")
    s = Sql(pg, plain_db)
    s.rows("INSERT INTO schema_migrations (version, description) VALUES (9999, 'from the future')")
    db_check(ci, "migrate_newer")
    assert s.one("SELECT count(*) FROM schema_migrations") == str(LATEST + 1)


# ---------------------------------------------------------------- delivery under concurrency

def test_deliver_concurrent_uids_and_counters(pg, sql):
    a1, a2 = sql.account("a@ex.test"), sql.account("b@ex.test")
    out, _ = db_check(pg.conninfo(sql.db), "deliver", a1, a2, 300)
    print(stats(out))
    for a, n in ((a1, 301), (a2, 300)):  # a1 also got the same-token message once
        mb = sql.mailbox(a)
        st = sql.mbox_state(mb)
        assert st["uidnext"] == n + 1 and st["messages"] == n and st["unseen"] == n
        assert st["highestmodseq"] == n + 1 and st["bytes"] == n * 1000
        assert sql.rows("SELECT used_bytes, used_messages FROM accounts WHERE id = %d" % a) == \
            [[str(n * 1000), str(n)]]
        assert sql.one("SELECT count(DISTINCT modseq) FROM messages WHERE mailbox_id = %d" % mb) == str(n)
    assert sql.one("SELECT sum(refcount) FROM blobs") == sql.one("SELECT count(*) FROM messages")
    assert sql.one("SELECT count(*) FROM delivery_tokens") == "301"


# ---------------------------------------------------------------- SQL functions

def test_deliver_statuses_and_quota(sql):
    a = sql.account("q@ex.test", quota_bytes=2500)
    m = sql.account("m@ex.test", quota_messages=1)
    d = sql.account("d@ex.test")
    sql.rows("UPDATE accounts SET disabled = true WHERE id = %d" % d)
    r = sql.deliver([a, m, d, 999999], n=1)
    assert [(x[0], x[1]) for x in r] == [(str(a), "ok"), (str(m), "ok"), (str(d), "disabled"),
                                         ("999999", "no_account")]
    assert sql.deliver([a], n=2)[0][1] == "ok"
    assert sql.deliver([a], n=3)[0][1] == "over_quota"          # 3000 > 2500 bytes
    assert sql.deliver([m], n=4)[0][1] == "over_quota"          # 2 > 1 message
    assert sql.deliver([a], n=5, size=400)[0][1] == "ok"         # 2400 fits
    assert sql.rows("SELECT used_bytes, used_messages FROM accounts WHERE id = %d" % a) == [["2400", "3"]]
    assert sql.deliver([a], mailbox="Nope", n=6, size=1)[0][1] == "no_mailbox"
    # refused deliveries allocate nothing: uids stay consecutive
    assert sql.rows("SELECT uid FROM messages WHERE mailbox_id = %d ORDER BY uid" % sql.mailbox(a)) == \
        [["1"], ["2"], ["3"]]
    # a copy that would pass the quota is refused as a whole
    dst = int(sql.rows("SELECT mailbox_id FROM mail_mailbox_create(%d, 'Archive')" % a)[0][0])
    err = sql.error("SELECT * FROM mail_copy(%d, '{[1,3]}', %d)" % (sql.mailbox(a), dst))
    assert "ML001" in err and "over quota" in err
    assert sql.mbox_state(dst)["messages"] == 0


def test_deliver_idempotent_token(sql):
    a = sql.account("t@ex.test")
    first = sql.deliver([a], n=1, token="tok-A")
    again = sql.deliver([a], n=1, token="tok-A")
    assert first == again and first[0][4] == "1"
    assert sql.one("SELECT count(*) FROM messages") == "1"
    assert sql.one("SELECT refcount FROM blobs") == "1"
    other = sql.deliver([a], n=1, token="tok-B")     # same body, new token: a new message
    assert other[0][4] == "2" and sql.one("SELECT refcount FROM blobs") == "2"
    assert sql.deliver([a], n=2)[0][4] == "3"        # no token: always delivers


def test_store_flags_condstore(sql):
    a = sql.account("f@ex.test")
    for i in range(3):
        sql.deliver([a], n=i)
    mb = sql.mailbox(a)
    assert sql.mbox_state(mb)["highestmodseq"] == 4

    r = sql.rows("SELECT uid, modseq, flags, keywords, status FROM mail_store_flags(%d, '{[1,3]}', "
                 "'add', 1, ARRAY['$Junk','Work','Work'], NULL)" % mb)
    assert r == [[str(u), "5", "1", "{$Junk,Work}", "changed"] for u in (1, 2, 3)]
    st = sql.mbox_state(mb)
    assert st["highestmodseq"] == 5 and st["unseen"] == 0

    # the same again changes nothing: no new modseq
    r = sql.rows("SELECT status, modseq FROM mail_store_flags(%d, '{[1,3]}', 'add', 1, NULL, NULL)" % mb)
    assert r == [["unchanged", "5"]] * 3 and sql.mbox_state(mb)["highestmodseq"] == 5

    # UNCHANGEDSINCE 4: every message changed at 5 -> MODIFIED, nothing stored
    r = sql.rows("SELECT uid, status FROM mail_store_flags(%d, '{[1,2]}', 'set', 4, NULL, 4)" % mb)
    assert r == [["1", "modified"], ["2", "modified"]]
    assert sql.one("SELECT flags FROM messages WHERE mailbox_id = %d AND uid = 1" % mb) == "1"

    # UNCHANGEDSINCE 5 passes; uid 2 only
    r = sql.rows("SELECT uid, modseq, flags, keywords, status FROM mail_store_flags(%d, '{[2,2]}', "
                 "'set', 4 | 8, ARRAY['Work'], 5)" % mb)
    assert r == [["2", "6", "12", "{Work}", "changed"]]
    st = sql.mbox_state(mb)
    assert st["highestmodseq"] == 6 and st["unseen"] == 1 and st["deleted"] == 1

    # -FLAGS and keyword removal on a sparse set
    r = sql.rows("SELECT uid, flags, keywords, status FROM mail_store_flags(%d, '{[1,1],[3,3]}', "
                 "'remove', 1, ARRAY['$Junk'], NULL)" % mb)
    assert r == [["1", "0", "{Work}", "changed"], ["3", "0", "{Work}", "changed"]]
    assert sql.mbox_state(mb)["unseen"] == 3
    err = sql.error("SELECT * FROM mail_store_flags(%d, '{[1,1]}', 'toggle', 1, NULL, NULL)" % mb)
    assert "ML005" in err
    # CHANGEDSINCE view: what changed after 6
    assert sql.rows("SELECT uid FROM messages WHERE mailbox_id = %d AND modseq > 6 ORDER BY uid" % mb) == \
        [["1"], ["3"]]


def test_expunge_vanished_and_refcounts(sql):
    a = sql.account("e@ex.test")
    shared = blob_id("shared")
    sql.deliver([a], n=1, blob=shared)
    sql.deliver([a], n=2)
    sql.deliver([a], n=3, blob=shared)
    sql.deliver([a], n=4)
    mb = sql.mailbox(a)
    assert sql.one("SELECT refcount FROM blobs WHERE id = '%s'" % shared) == "2"
    sql.rows("SELECT * FROM mail_store_flags(%d, '{[1,2]}', 'add', 8, NULL, NULL)" % mb)
    before = sql.mbox_state(mb)["highestmodseq"]

    # UID EXPUNGE 2:4 only removes the \Deleted ones in the set
    r = sql.rows("SELECT uid, modseq FROM mail_expunge(%d, '{[2,4]}')" % mb)
    assert r == [["2", str(before + 1)]]
    r = sql.rows("SELECT uid, modseq FROM mail_expunge(%d)" % mb)
    assert r == [["1", str(before + 2)]]
    assert sql.rows("SELECT * FROM mail_expunge(%d)" % mb) == []   # nothing left: no new modseq
    st = sql.mbox_state(mb)
    assert st["highestmodseq"] == before + 2 and st["messages"] == 2 and st["deleted"] == 0
    assert st["bytes"] == 2000
    assert sql.rows("SELECT uid, modseq FROM expunged WHERE mailbox_id = %d ORDER BY uid" % mb) == \
        [["1", str(before + 2)], ["2", str(before + 1)]]
    assert sql.one("SELECT mail_vanished(%d, %d)" % (mb, before)) == "1:2"
    assert sql.one("SELECT mail_vanished(%d, %d)" % (mb, before + 1)) == "1"
    assert sql.one("SELECT refcount FROM blobs WHERE id = '%s'" % shared) == "1"
    assert sql.rows("SELECT refcount, unreferenced_since IS NOT NULL FROM blobs WHERE id = '%s'"
                    % blob_id(2)) == [["0", "t"]]
    assert sql.rows("SELECT used_bytes, used_messages FROM accounts WHERE id = %d" % a) == [["2000", "2"]]
    # UIDs are never reused
    assert sql.deliver([a], n=5)[0][4] == "5"
    # POP3 DELE+QUIT: expunge without \Deleted
    assert sql.rows("SELECT uid FROM mail_expunge(%d, '{[3,3]}', false)" % mb) == [["3"]]
    # the GC takes the unreferenced blob after the grace period, not the referenced one
    assert sql.rows("SELECT blob_id, nodes FROM mail_blob_gc('1 hour', 10)") == []
    gone = sql.rows("SELECT blob_id, nodes FROM mail_blob_gc('0 seconds', 10) ORDER BY 1")
    assert sorted(g[0] for g in gone) == sorted([blob_id(2), shared]) and gone[0][1] == "{n1,n2}"
    assert sql.one("SELECT count(*) FROM message_text") == "2"     # its search text went with it


def test_copy_and_move_uids(sql):
    a = sql.account("c@ex.test")
    for i in range(4):
        sql.deliver([a], n=i, flags=1 if i == 2 else 0)
    src = sql.mailbox(a)
    dst = int(sql.rows("SELECT mailbox_id FROM mail_mailbox_create(%d, 'Dst')" % a)[0][0])
    uidv = sql.one("SELECT uidvalidity FROM mailboxes WHERE id = %d" % dst)

    r = sql.rows("SELECT src_uid, dst_uid, uidvalidity, modseq FROM mail_copy(%d, '{[2,3],[4,4]}', %d)"
                 % (src, dst))
    assert r == [["2", "1", uidv, "2"], ["3", "2", uidv, "2"], ["4", "3", uidv, "2"]]
    st = sql.mbox_state(dst)
    assert st["messages"] == 3 and st["uidnext"] == 4 and st["unseen"] == 2 and st["highestmodseq"] == 2
    assert sql.one("SELECT flags FROM messages WHERE mailbox_id = %d AND uid = 2" % dst) == "1"
    assert sql.rows("SELECT used_messages FROM accounts WHERE id = %d" % a) == [["7"]]
    assert sql.one("SELECT refcount FROM blobs WHERE id = '%s'" % blob_id(1)) == "2"

    src_before = sql.mbox_state(src)
    r = sql.rows("SELECT src_uid, dst_uid FROM mail_move(%d, '{[1,2]}', %d)" % (src, dst))
    assert r == [["1", "4"], ["2", "5"]]
    st = sql.mbox_state(src)
    assert st["messages"] == 2 and st["highestmodseq"] == src_before["highestmodseq"] + 1
    assert sql.rows("SELECT uid FROM expunged WHERE mailbox_id = %d ORDER BY uid" % src) == [["1"], ["2"]]
    assert sql.rows("SELECT used_messages FROM accounts WHERE id = %d" % a) == [["7"]]  # a move adds nothing
    assert sql.rows("SELECT * FROM mail_copy(%d, '{[100,200]}', %d)" % (src, dst)) == []
    other = sql.account("other@ex.test")
    err = sql.error("SELECT * FROM mail_copy(%d, '{[3,3]}', %d)" % (src, sql.mailbox(other)))
    assert "ML004" in err


def test_mailbox_create_rename_delete(sql):
    a = sql.account("r@ex.test")
    for name in ("a/b/c", "a/x", "ab"):
        sql.rows("SELECT * FROM mail_mailbox_create(%d, %s)" % (a, lit(name)))
    names = lambda: [r[0] for r in sql.rows("SELECT name FROM mailboxes WHERE account_id = %d ORDER BY name" % a)]
    assert names() == ["INBOX", "a", "a/b", "a/b/c", "a/x", "ab"]     # parents created
    assert "ML003" in sql.error("SELECT * FROM mail_mailbox_create(%d, 'a/x')" % a)
    assert "ML005" in sql.error("SELECT * FROM mail_mailbox_create(%d, 'bad//name')" % a)
    ids = dict(sql.rows("SELECT name, id || ':' || uidvalidity FROM mailboxes WHERE account_id = %d" % a))

    r = sql.rows("SELECT mailbox_id, old_name, new_name FROM mail_mailbox_rename(%d, 'a', 'z/new') "
                 "ORDER BY old_name" % a)
    assert [(x[1], x[2]) for x in r] == [("a", "z/new"), ("a/b", "z/new/b"), ("a/b/c", "z/new/b/c"),
                                         ("a/x", "z/new/x")]
    assert names() == ["INBOX", "ab", "z", "z/new", "z/new/b", "z/new/b/c", "z/new/x"]
    after = dict(sql.rows("SELECT name, id || ':' || uidvalidity FROM mailboxes WHERE account_id = %d" % a))
    assert after["z/new/b/c"] == ids["a/b/c"] and after["z/new"] == ids["a"]   # same ids, same UIDVALIDITY
    assert "ML003" in sql.error("SELECT * FROM mail_mailbox_rename(%d, 'ab', 'z/new')" % a)
    assert "ML004" in sql.error("SELECT * FROM mail_mailbox_rename(%d, 'z', 'z/new/q')" % a)
    assert "ML002" in sql.error("SELECT * FROM mail_mailbox_rename(%d, 'nope', 'x')" % a)

    # RENAME INBOX moves its messages to the new mailbox, INBOX stays (empty)
    sql.deliver([a], n=1)
    sql.deliver([a], n=2)
    r = sql.rows("SELECT old_name, new_name FROM mail_mailbox_rename(%d, 'inbox', 'Old Mail')" % a)
    assert r == [["INBOX", "Old Mail"]]
    assert sql.mbox_state(sql.mailbox(a, "INBOX"))["messages"] == 0
    assert sql.mbox_state(sql.mailbox(a, "Old Mail"))["messages"] == 2

    # DELETE: INBOX refused; a mailbox with messages releases quota and blob references
    assert "ML004" in sql.error("SELECT mail_mailbox_delete(%d, 'INBOX')" % a)
    old_uidv = int(sql.one("SELECT uidvalidity FROM mailboxes WHERE id = %d" % sql.mailbox(a, "Old Mail")))
    sql.one("SELECT mail_mailbox_delete(%d, 'Old Mail')" % a)
    assert sql.rows("SELECT used_bytes, used_messages FROM accounts WHERE id = %d" % a) == [["0", "0"]]
    assert sql.one("SELECT sum(refcount) FROM blobs") == "0"
    # the same name again gets a new, larger UIDVALIDITY
    new_uidv = int(sql.rows("SELECT uidvalidity FROM mail_mailbox_create(%d, 'Old Mail')" % a)[0][0])
    assert new_uidv > old_uidv
    # children survive their parent's deletion
    sql.one("SELECT mail_mailbox_delete(%d, 'z/new')" % a)
    assert "z/new/b" in names() and "z/new" not in names()


def test_cascade_delete_keeps_refcounts(sql):
    a = sql.account("x@gone.test")
    b = sql.account("y@stay.test")
    sql.deliver([a, b], n=1)
    sql.deliver([a], n=2)
    sql.rows("INSERT INTO outbound_queue (blob_id, mail_from, rcpt, domain) VALUES ('%s', 'x@gone.test', "
             "'r@remote.test', 'remote.test')" % blob_id(2))
    assert sql.one("SELECT refcount FROM blobs WHERE id = '%s'" % blob_id(2)) == "2"
    sql.rows("DELETE FROM domains WHERE name = 'gone.test'")
    assert sql.rows("SELECT id, refcount FROM blobs ORDER BY id") == sorted([[blob_id(1), "1"], [blob_id(2), "1"]])
    sql.rows("DELETE FROM outbound_queue")
    assert sql.rows("SELECT refcount, unreferenced_since IS NOT NULL FROM blobs WHERE id = '%s'"
                    % blob_id(2)) == [["0", "t"]]
    # the other account is untouched
    assert sql.mbox_state(sql.mailbox(b))["messages"] == 1


def test_change_notifications(pg, sql):
    a = sql.account("n@ex.test")
    mb = sql.mailbox(a)
    script = ("LISTEN mail_changes;\n"
              "SELECT count(*) FROM mail_deliver(ARRAY[%d]::bigint[], 'INBOX', '%s', 10, now(), 0, NULL, "
              "'{}', NULL, NULL, NULL, NULL);\n"
              "SELECT count(*) FROM mail_store_flags(%d, '{[1,1]}', 'add', 8, NULL, NULL);\n"
              "SELECT count(*) FROM mail_expunge(%d);\n" % (a, blob_id(1), mb, mb))
    p = subprocess.run(["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-At", "-h", pg.sock_dir(), "-p",
                        str(pg.port), "-U", "postgres", "-d", sql.db], input=script.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    got = re.findall(r'notification "mail_changes" with payload "([^"]*)"', p.stdout.decode())
    assert got == ["%d:%d:new:1:2" % (a, mb), "%d:%d:flags:1:3" % (a, mb), "%d:%d:expunge:1:4" % (a, mb)], \
        p.stdout.decode() + p.stderr.decode()


def test_lookup_lock_throttle_queue(pg, sql):
    a = sql.account("alice@ex.test")
    sql.account("off@ex.test")
    sql.rows("UPDATE accounts SET disabled = true WHERE address = 'off@ex.test'")
    dom = sql.one("SELECT id FROM domains WHERE name = 'ex.test'")
    sql.rows("INSERT INTO aliases (domain_id, address, targets) VALUES (%s, 'team@ex.test', "
             "ARRAY['alice@ex.test','bob@else.test'])" % dom)
    look = lambda addr: sql.rows("SELECT kind, coalesce(account_id::text, ''), coalesce(targets::text, '') "
                                 "FROM mail_lookup_recipient(%s)" % lit(addr))[0]
    assert look("Alice@EX.test") == ["account", str(a), ""]
    assert look("off@ex.test")[0] == "disabled"
    assert look("team@ex.test") == ["alias", "", "{alice@ex.test,bob@else.test}"]
    assert look("nobody@ex.test")[0] == "unknown"
    assert look("x@remote.test")[0] == "remote"
    sql.rows("INSERT INTO aliases (domain_id, address, targets) VALUES (%s, '@ex.test', ARRAY['alice@ex.test'])" % dom)
    assert look("nobody@ex.test") == ["alias", "", "{alice@ex.test}"]
    assert "check" in sql.error("INSERT INTO aliases (domain_id, address, targets) VALUES (%s, 'e@ex.test', '{}')" % dom)

    # POP3 maildrop lease
    acq = lambda h, ms=60000: sql.one("SELECT mail_maildrop_acquire(%d, '%s', %d)" % (a, h, ms))
    assert acq("fe1") == "t" and acq("fe2") == "f" and acq("fe1") == "t"
    assert sql.one("SELECT mail_maildrop_release(%d, 'fe2')" % a) == "f"
    assert sql.one("SELECT mail_maildrop_release(%d, 'fe1')" % a) == "t"
    assert acq("fe2", 1) == "t"
    time.sleep(0.01)
    assert acq("fe3") == "t"          # fe2's lease ran out (its frontend died)

    # authentication failures counted across routers, per window
    assert [sql.one("SELECT mail_auth_failure('ip:192.0.2.1', 60)") for _ in range(3)] == ["1", "2", "3"]
    assert sql.one("SELECT mail_auth_failures('ip:192.0.2.1', 60)") == "3"
    sql.rows("UPDATE auth_failures SET window_start = now() - interval '2 minutes'")
    assert sql.one("SELECT mail_auth_failures('ip:192.0.2.1', 60)") == "0"
    assert sql.one("SELECT mail_auth_failure('ip:192.0.2.1', 60)") == "1"

    # the queue: concurrent claimers never get the same entry (FOR UPDATE SKIP LOCKED)
    sql.rows("SELECT mail_blob_prepare('%s', 10)" % blob_id(9))
    sql.rows("INSERT INTO outbound_queue (blob_id, mail_from, rcpt, domain) SELECT '%s', 'a@ex.test', "
             "'r' || g || '@remote.test', 'remote.test' FROM generate_series(1, 3) g" % blob_id(9))
    holder = subprocess.Popen(
        ["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-At", "-h", pg.sock_dir(), "-p", str(pg.port),
         "-U", "postgres", "-d", sql.db],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    holder.stdin.write(b"BEGIN;\nSELECT id FROM mail_queue_claim('router-a', 2, 60);\n"
                       b"SELECT pg_sleep(2);\nCOMMIT;\n")
    holder.stdin.close()
    end = time.monotonic() + 20
    while time.monotonic() < end:   # router-a holds its claim (uncommitted) while it sleeps
        if sql.one("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                   "AND query = 'SELECT pg_sleep(2);'") == "1":
            break
        time.sleep(0.02)
    b_ids = [r[0] for r in sql.rows("SELECT id FROM mail_queue_claim('router-b', 10, 60)")]
    a_out = holder.stdout.read()
    holder.wait(timeout=30)
    a_ids = [x for x in a_out.decode().split() if x.isdigit()]
    assert len(a_ids) == 2 and len(b_ids) == 1 and not set(a_ids) & set(b_ids), (a_ids, b_ids)
    assert sql.rows("SELECT claimed_by, count(*) FROM outbound_queue GROUP BY 1 ORDER BY 1") == \
        [["router-a", "2"], ["router-b", "1"]]
    assert sql.rows("SELECT * FROM mail_queue_claim('router-c', 10, 60)") == []   # leases still running
    assert sql.one("SELECT refcount FROM blobs WHERE id = '%s'" % blob_id(9)) == "3"


# ---------------------------------------------------------------- restart and failover

def _outage_run(conninfo, seconds, act):
    """db_check outage under load; act() runs when it says READY. Returns (stats, stderr)."""
    p = subprocess.Popen([binary("tests", "db_check"), conninfo, "outage", str(seconds)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    try:
        for raw in p.stdout:
            line = raw.decode()
            lines.append(line)
            if line.startswith("READY outage"):
                act()
                break
        rest, err = p.communicate(timeout=seconds + 60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = "".join(lines) + rest.decode()
    err = err.decode("utf-8", "replace")
    assert p.returncode == 0, "outage run failed:\n%s\n%s" % (out, err[-5000:])
    st = stats(out)
    print(st)
    return st, err


def test_restart_under_load_no_false_success():
    with PgCluster(fsync=False) as pg:
        pg.create_database("o")
        pg.psql("CREATE TABLE acks (id bigint PRIMARY KEY)", db="o")

        def act():
            time.sleep(0.3)
            pg.stop_server("primary", "fast")
            time.sleep(1.5)                      # down for a while: requests queue, some time out
            pg.start_server("primary")

        st, err = _outage_run(pg.conninfo("o"), 5, act)
        assert int(st["unavailable_not_executed"]) + int(st["unavailable_maybe"]) > 0 or \
            float(st["max_ok_wait_s"]) > 0.3
        assert int(pg.psql("SELECT count(*) FROM acks", db="o")) >= int(st["ok"])
        assert 'msg="db connection lost"' in err and err.count('msg="db connected"') >= 4


def test_failover_to_promoted_standby():
    with PgCluster(standby=True, sync_standby=True, fsync=False) as pg:
        pg.create_database("f")
        pg.psql("CREATE TABLE acks (id bigint PRIMARY KEY)", db="f")
        pg.wait_replayed()
        # a migration against the standby alone is refused (read-only)
        p = subprocess.run([binary("tests", "db_check"), pg.conninfo("f", which="standby"), "migrate"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        assert p.returncode != 0 and b"hot standby" in p.stdout

        def act():
            time.sleep(0.3)
            pg.stop_primary("immediate")         # a crash: only what the standby has survives
            time.sleep(0.5)
            pg.promote()

        st, err = _outage_run(pg.multi_conninfo("f"), 6, act)
        # every acknowledged insert is on the promoted server (checked by db_check too)
        n = int(pg.psql("SELECT count(*) FROM acks", db="f", which="standby"))
        assert n >= int(st["ok"]) > 0
        assert int(st["listen_resync"]) >= 1
        promoted = [l for l in err.splitlines()
                    if 'msg="db connected"' in l and 'host="%s"' % pg.sock_dir("standby") in l]
        assert promoted and all("in_hot_standby=off" in l for l in promoted), err[-3000:]
