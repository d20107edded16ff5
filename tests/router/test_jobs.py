"""The router's background jobs (router/rt_jobs.c) against a real cluster
(tests/mailcluster.py): blob repair, blob GC, housekeeping and the job leases.

Messages are made the way a delivery makes them, without depending on the Deliver
RPC: mail_blob_prepare, a Put of the body on its R rendezvous nodes (python grpcio,
straight to the store nodes), then mail_deliver naming those nodes. What the jobs
did is checked on the nodes themselves (python Stat), in PostgreSQL (blobs.nodes,
job_leases, ...), in the routers' /metrics and logs. One PostgreSQL serves the
module, each test has its own database.

  * a store node killed: reads (FetchBody) are served from the other replica;
    replaced by an empty one, it gets every copy back (verification of the
    node's List against blobs.nodes), recorded;
  * R=2 on 3 nodes, one node gone for good: its copies move to the third node,
    which is recorded next to the lost one;
  * the GC deletes an expunged message's blob from every node (and the orphan
    copies of a blob nobody references) after the grace, keeps a blob that a copy
    in another mailbox still references until that one is expunged too; a fresh GC
    claim blocks new references (40001), a stale one does not;
  * two routers: exactly one holds and runs the jobs; killed with -9, its leases
    move to the other within the lease time, which runs housekeeping at once."""
import hashlib
import os
import re
import shutil
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import gen_python  # noqa: E402
from mailcluster import MailCluster  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

gen_python("store.proto")
gen_python("router.proto")
import grpc  # noqa: E402
import router_pb2 as rpb  # noqa: E402
import store_pb2 as spb  # noqa: E402
import store_pb2_grpc as spbg  # noqa: E402

CHUNK = 64 * 1024


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def pg():
    """One PostgreSQL for the module; each test gets its own database."""
    with PgCluster(fsync=False) as c:
        yield c


_dbs = iter(range(1, 1000))


def cluster(pg, **kw):
    return MailCluster(pg=pg, db="jobs%d" % next(_dbs), **kw)


def rendezvous(names, blob_id):
    """The documented placement order: SHA-256("<name>\\n<id>")[:8] big-endian, highest first."""
    def score(n):
        return int.from_bytes(hashlib.sha256((n + "\n" + blob_id).encode()).digest()[:8], "big")
    return sorted(names, key=lambda n: (-score(n), n))


def node_names(mc):
    return ["store%d" % (i + 1) for i in range(mc.n_stores)]


def node_index(name):
    return int(name[len("store"):]) - 1


def rows(mc, sql):
    return [line.split("|") for line in mc.psql(sql).splitlines() if line != ""]


def one(mc, sql):
    r = rows(mc, sql)
    assert len(r) == 1 and len(r[0]) == 1, r
    return r[0][0]


def pg_array(text):
    """A text[] as psql prints it -> python list."""
    text = text.strip()
    assert text.startswith("{") and text.endswith("}"), text
    return [x.strip('"') for x in text[1:-1].split(",") if x != ""]


def account(mc, address):
    dom = address.split("@", 1)[1]
    mc.psql("INSERT INTO domains (name) VALUES ('%s') ON CONFLICT DO NOTHING" % dom)
    return int(one(mc, "INSERT INTO accounts (domain_id, address, password_hash) "
                       "SELECT id, '%s', 'x' FROM domains WHERE name = '%s' RETURNING id"
                   % (address, dom)))


_stubs = {}


def store(mc, i):
    """A cached stub of store node i (grpc channels reconnect by themselves)."""
    port = mc.store_ports[i]
    if port not in _stubs:
        _stubs[port] = spbg.BlobStoreStub(grpc.insecure_channel("127.0.0.1:%d" % port))
    return _stubs[port]


def put(mc, i, data):
    bid = hashlib.sha256(data).hexdigest()
    chunks = [data[o:o + CHUNK] for o in range(0, len(data), CHUNK)] or [b""]
    reqs = [spb.PutRequest(expected_id=bid if k == 0 else "", data=c) for k, c in enumerate(chunks)]
    r = store(mc, i).Put(iter(reqs), timeout=20, wait_for_ready=True)
    assert r.id == bid
    return bid


def has(mc, i, bid):
    for attempt in range(20):
        try:
            return store(mc, i).Stat(spb.StatRequest(id=bid), timeout=5, wait_for_ready=True).exists
        except grpc.RpcError as e:
            # a cached channel to a node that was restarted fails once ("Broken pipe")
            if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == 19:
                raise
            time.sleep(0.1)


def deliver(mc, acct, data, mailbox="INBOX"):
    """A delivery as the router makes it: prepare, put on the R placed nodes, mail_deliver."""
    bid = hashlib.sha256(data).hexdigest()
    mc.psql("SELECT mail_blob_prepare('%s', %d)" % (bid, len(data)))
    nodes = rendezvous(node_names(mc), bid)[:mc.replicas]
    for n in nodes:
        put(mc, node_index(n), data)
    r = rows(mc, "SELECT status, uid FROM mail_deliver(ARRAY[%d]::bigint[], '%s', '%s', %d, now(), 0, "
                 "NULL, '{}', NULL, NULL, ARRAY[%s]::text[], NULL)"
             % (acct, mailbox, bid, len(data), ",".join("'%s'" % n for n in nodes)))
    assert r[0][0] == "ok", r
    return bid, nodes, int(r[0][1])


def metrics(mc, i=0):
    with urllib.request.urlopen(mc.metrics_url(i) + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def wait_for(what, fn, timeout=60.0, step=0.25):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(step)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def recorded(mc, bid):
    return pg_array(one(mc, "SELECT nodes FROM blobs WHERE id = '%s'" % bid))


def wait_lease_holder(mc, timeout=30):
    def held():
        r = rows(mc, "SELECT job, holder FROM job_leases WHERE expires_at > clock_timestamp() ORDER BY job")
        return r if len(r) == 3 else None
    return wait_for("job leases", held, timeout)


# ---------------------------------------------------------------- repair

def test_repair_restores_copies_on_a_replaced_empty_node(pg):
    with cluster(pg, stores=2, replicas=2) as mc:
        acct = account(mc, "alice@example.test")
        inbox = int(one(mc, "SELECT id FROM mailboxes WHERE account_id = %d AND name = 'INBOX'" % acct))
        bodies = [os.urandom(3000 + k) + b"msg %d" % k for k in range(12)]
        # a larger body: the copy streams it in several windows
        bodies.append(os.urandom(2 * 1024 * 1024 + 17))
        blobs = [deliver(mc, acct, data)[0] for data in bodies]
        big = blobs[-1]
        for b in blobs:
            assert sorted(recorded(mc, b)) == ["store1", "store2"] and has(mc, 1, b)
        wait_lease_holder(mc)

        # the disk of store2 is replaced: same name and port, empty data dir
        mc.kill_store(1)
        # meanwhile reads are served from the other replica (FetchBody through the router)
        stub = mc.router_stub(0)
        for uid in (1, len(bodies)):
            chunks = stub.FetchBody(rpb.FetchBodyRequest(session=rpb.Session(account_id=acct),
                                                         mailbox_id=inbox, uid=uid), timeout=60)
            assert b"".join(c.data for c in chunks) == bodies[uid - 1]
        shutil.rmtree(mc.store_dir(1))
        mc.start_store(1)

        wait_for("every copy back on store2", lambda: all(has(mc, 1, b) for b in blobs), timeout=60)
        for b in blobs:
            assert sorted(recorded(mc, b)) == ["store1", "store2"]
            assert has(mc, 0, b)
        m = wait_for("repair metrics", lambda: (lambda m: m if m.get("repair_missing") == 0 else None)(
            metrics(mc)), timeout=20)
        assert m["repair_copies_total"] >= len(blobs)
        log = mc.router_log(0)
        assert 'msg="blob verification: recorded copies missing" node=store2' in log
        assert re.search(r'msg="blob repaired" id=%s from=store1 to=store2' % big[:16], log), log[-3000:]



def test_repair_verifies_a_node_restarted_between_probes(pg):
    """A store node restarted with an empty disk faster than the health probe
    looks (nothing read from it meanwhile): the probe finds a new process
    (StatResponse.instance) and the node is verified at once - not at the next
    scrub, an hour away - so every copy comes back."""
    with cluster(pg, stores=2, replicas=2) as mc:
        acct = account(mc, "rita@example.test")
        blobs = [deliver(mc, acct, os.urandom(2000 + k) + b"restart %d" % k)[0] for k in range(8)]
        wait_lease_holder(mc)
        assert all(has(mc, 1, b) for b in blobs)
        mc.kill_store(1)
        shutil.rmtree(mc.store_dir(1))
        mc.start_store(1)
        wait_for("every copy back on store2", lambda: all(has(mc, 1, b) for b in blobs), timeout=60)
        log = mc.router_log(0)
        assert 'msg="blob node restarted" node=store2' in log, log[-3000:]
        assert 'msg="store node restarted: its copies will be verified" node=store2' in log, log[-3000:]
        assert 'msg="blob verification: recorded copies missing" node=store2' in log
        for b in blobs:
            assert sorted(recorded(mc, b)) == ["store1", "store2"] and has(mc, 0, b)


def test_repair_moves_copies_off_a_node_gone_for_good(pg):
    with cluster(pg, stores=3, replicas=2) as mc:
        acct = account(mc, "bob@example.test")
        placed = {}
        for k in range(16):
            bid, nodes, _ = deliver(mc, acct, b"body of message %d\r\n" % k + os.urandom(500))
            placed[bid] = nodes
        # the node holding the most copies goes away and never comes back
        counts = {n: sum(n in v for v in placed.values()) for n in node_names(mc)}
        gone = max(counts, key=counts.get)
        affected = {b: v for b, v in placed.items() if gone in v}
        assert affected
        wait_lease_holder(mc)
        t0 = time.monotonic()
        mc.kill_store(node_index(gone))

        def third_has_all():
            for b, v in affected.items():
                other = [n for n in node_names(mc) if n not in v][0]
                if not has(mc, node_index(other), b):
                    return False
            return True
        wait_for("copies on the third node", third_has_all, timeout=75)
        took = time.monotonic() - t0
        # not before the node had been down for the grace (a restart must not copy)
        assert took >= 9, took
        for b, v in affected.items():
            rec = recorded(mc, b)
            # the lost node stays recorded (it may come back with its copy: the GC needs it)
            assert sorted(rec) == sorted(node_names(mc)), (b, rec)
        for b, v in placed.items():
            if b not in affected:
                assert sorted(recorded(mc, b)) == sorted(v)
        wait_for("nothing missing", lambda: metrics(mc).get("repair_missing") == 0, timeout=20)
        assert metrics(mc)["repair_copies_total"] >= len(affected)


# ---------------------------------------------------------------- GC

def test_gc_deletes_expunged_blob_everywhere_and_keeps_referenced_ones(pg):
    with cluster(pg, stores=2, replicas=2, router_args=["--blob-gc-grace=2s"]) as mc:
        acct = account(mc, "carol@example.test")
        inbox = int(one(mc, "SELECT id FROM mailboxes WHERE account_id = %d AND name = 'INBOX'" % acct))
        archive = int(one(mc, "SELECT mailbox_id FROM mail_mailbox_create(%d, 'Archive')" % acct))
        gone, _, uid_gone = deliver(mc, acct, b"Subject: expunged\r\n\r\nbye\r\n" + os.urandom(100))
        kept, _, uid_kept = deliver(mc, acct, b"Subject: copied\r\n\r\nstays\r\n" + os.urandom(100))
        mc.psql("SELECT * FROM mail_copy(%d, '{[%d,%d]}', %d)" % (inbox, uid_kept, uid_kept, archive))
        # a body whose delivery failed after the upload: a row that never got a
        # reference and copies that nobody recorded (on both nodes)
        orphan_data = b"never delivered" + os.urandom(64)
        orphan = hashlib.sha256(orphan_data).hexdigest()
        mc.psql("SELECT mail_blob_prepare('%s', %d)" % (orphan, len(orphan_data)))
        put(mc, 0, orphan_data)
        put(mc, 1, orphan_data)

        mc.psql("SELECT count(*) FROM mail_store_flags(%d, '{[1,4294967296)}', 'add', 8, NULL, NULL)" % inbox)
        assert len(rows(mc, "SELECT * FROM mail_expunge(%d)" % inbox)) == 2
        assert one(mc, "SELECT refcount FROM blobs WHERE id = '%s'" % gone) == "0"
        assert one(mc, "SELECT refcount FROM blobs WHERE id = '%s'" % kept) == "1"
        t0 = time.monotonic()

        def collected():
            return one(mc, "SELECT count(*) FROM blobs WHERE id IN ('%s', '%s')" % (gone, orphan)) == "0"
        wait_for("GC of the unreferenced blobs", collected, timeout=30)
        assert time.monotonic() - t0 >= 1.5  # not before the grace
        for i in range(2):
            assert not has(mc, i, gone) and not has(mc, i, orphan)
            assert has(mc, i, kept)
        assert one(mc, "SELECT refcount FROM blobs WHERE id = '%s'" % kept) == "1"
        time.sleep(3)  # several more GC steps: the referenced blob stays
        assert all(has(mc, i, kept) for i in range(2))
        assert one(mc, "SELECT count(*) FROM blobs WHERE id = '%s'" % kept) == "1"
        assert metrics(mc)["blob_gc_deleted_total"] >= 2
        assert 'msg="blob gc" deleted=' in mc.router_log(0)

        # the message in Archive is expunged too: now it goes
        mc.psql("SELECT count(*) FROM mail_store_flags(%d, '{[1,4294967296)}', 'add', 8, NULL, NULL)" % archive)
        mc.psql("SELECT * FROM mail_expunge(%d)" % archive)
        wait_for("GC of the last copy", lambda: not has(mc, 0, kept) and not has(mc, 1, kept), timeout=30)
        wait_for("its row", lambda: one(mc, "SELECT count(*) FROM blobs WHERE id = '%s'" % kept) == "0",
                 timeout=10)

        # while the GC deletes a blob's bodies nothing may start using it again
        # (40001, retry); a claim whose GC died long ago is ignored
        fresh = hashlib.sha256(b"fresh claim").hexdigest()
        stale = hashlib.sha256(b"stale claim").hexdigest()
        mc.psql("INSERT INTO blobs (id, size, gc_claimed_at) VALUES ('%s', 11, clock_timestamp()), "
                "('%s', 11, clock_timestamp() - interval '10 minutes')" % (fresh, stale))
        rc, out, err = mc.pg.psql("SELECT mail_blob_prepare('%s', 11)" % fresh, db=mc.db, check=False,
                                  args=["-v", "VERBOSITY=verbose"])
        assert rc != 0 and "40001" in err and "garbage collector" in err, err
        rc, out, err = mc.pg.psql(
            "SELECT status FROM mail_deliver(ARRAY[%d]::bigint[], 'INBOX', '%s', 11, now(), 0, NULL, '{}', "
            "NULL, NULL, ARRAY['store1']::text[], NULL)" % (acct, fresh), db=mc.db, check=False,
            args=["-v", "VERBOSITY=verbose"])
        assert rc != 0 and "40001" in err, err
        assert one(mc, "SELECT count(*) FROM messages") == "0"
        # the stale claim: the blob is usable, the claim is gone
        mc.psql("SELECT mail_blob_prepare('%s', 11)" % stale)
        assert one(mc, "SELECT gc_claimed_at IS NULL FROM blobs WHERE id = '%s'" % stale) == "t"
        # placement bookkeeping is allowed under a claim (it is no new reference)
        assert one(mc, "SELECT mail_blob_add_node('%s', 'store2')" % fresh) == "t"
        assert one(mc, "SELECT mail_blob_add_node('%s', 'store2')" % fresh) == "f"  # idempotent


# ---------------------------------------------------------------- leases

def test_one_router_runs_the_jobs_and_another_takes_over_when_it_dies(pg):
    with cluster(pg, stores=2, routers=2) as mc:
        holders = wait_lease_holder(mc)
        names = {h for _, h in holders}
        assert len(names) == 1, holders
        holder = names.pop()
        hi = int(holder[len("router"):]) - 1
        other = 1 - hi
        # for a while: the same holder, renewing; only it works
        first = rows(mc, "SELECT job, acquired_at, expires_at FROM job_leases ORDER BY job")
        time.sleep(5)
        again = rows(mc, "SELECT job, holder, acquired_at, expires_at FROM job_leases ORDER BY job")
        for a, b in zip(first, again):
            assert b[1] == holder and b[2] == a[1] and b[3] > a[2], (a, b)
        mh, mo = metrics(mc, hi), metrics(mc, other)
        for job in ("blob_repair", "blob_gc", "housekeep"):
            assert mh['job_lease_held{job="%s"}' % job] == 1
            assert mo['job_lease_held{job="%s"}' % job] == 0
            assert mh['job_steps_total{job="%s"}' % job] >= 1
            assert mo['job_steps_total{job="%s"}' % job] == 0, job
        assert 'msg="job lease acquired"' not in mc.router_log(other)

        # things for the housekeeping: an old delivery token, an expired POP3 lock,
        # an old failure counter (and fresh ones that must stay)
        acct = account(mc, "erin@example.test")
        mc.psql("INSERT INTO delivery_tokens (token, created_at) VALUES ('old', now() - interval '8 days'), "
                "('new', now())")
        mc.psql("INSERT INTO maildrop_locks (account_id, holder, expires_at) "
                "VALUES (%d, 'fe1', now() - interval '1 minute')" % acct)
        mc.psql("INSERT INTO auth_failures (key, window_start, count) VALUES "
                "('ip:192.0.2.1', now() - interval '2 days', 3), ('ip:192.0.2.2', now(), 1)")

        mc.kill_router(hi)
        killed_at = time.monotonic()
        last = {r[0]: r[1] for r in rows(mc, "SELECT job, expires_at FROM job_leases")}

        def moved():
            r = rows(mc, "SELECT job, holder, acquired_at FROM job_leases ORDER BY job")
            return r if all(h == "router%d" % (other + 1) for _, h, _ in r) else None
        after = wait_for("the leases on the other router", moved, timeout=30)
        took = time.monotonic() - killed_at
        assert took <= 20, took
        for job, _, acquired in after:
            # never two holders: the takeover came after the dead holder's lease expired
            assert one(mc, "SELECT '%s'::timestamptz >= '%s'::timestamptz" % (acquired, last[job])) == "t"
        # the new holder runs the jobs, housekeeping at once
        wait_for("housekeeping", lambda: one(mc, "SELECT count(*) FROM delivery_tokens") == "1", timeout=10)
        assert one(mc, "SELECT token FROM delivery_tokens") == "new"
        assert one(mc, "SELECT count(*) FROM maildrop_locks") == "0"
        assert rows(mc, "SELECT key FROM auth_failures") == [["ip:192.0.2.2"]]
        log = mc.router_log(other)
        for job in ("blob_repair", "blob_gc", "housekeep"):
            assert 'msg="job lease acquired" job=%s holder=router%d' % (job, other + 1) in log
        assert re.search(r'msg="housekeeping" removed=([3-9]|\d\d)', log), log[-3000:]
        mo = metrics(mc, other)
        assert all(mo['job_steps_total{job="%s"}' % j] >= 1 for j in ("blob_repair", "blob_gc", "housekeep"))
