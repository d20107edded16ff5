"""The router through PostgreSQL outages, with deliveries running (issue 4, Tests):
every Deliver that returned OK is in the messages table exactly once afterwards,
with its body on the store nodes its blob row names; what failed while the database
was away failed as UNAVAILABLE (or a per-recipient TEMPFAIL), never as a success.

  * PostgreSQL stopped for a few seconds and started again while 8 streams deliver,
    then restarted (pg_ctl restart) under the same load;
  * a primary with a synchronous hot standby (pg_basebackup -R), the router on a
    multi-host conninfo (target_session_attrs=read-write): deliveries before, the
    primary crashes (immediate stop), the standby is promoted, deliveries after -
    the router carries on against the promoted server and nothing acknowledged is
    missing from it.

Messages are told apart by their Subject (the router stores it decoded in
messages.subject). Run with /usr/bin/python3 -m pytest; MAIL_BUILD_DIR names the build."""
import hashlib
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import gen_python  # noqa: E402
from mailcluster import MailCluster  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

gen_python("router.proto")
gen_python("store.proto")
import grpc  # noqa: E402
import router_pb2 as pb  # noqa: E402
import store_pb2  # noqa: E402

CHUNK = 64 * 1024
RCPT = "fo@failover.test"


class MultiHostCluster(MailCluster):
    """A MailCluster whose routers use the primary + standby conninfo."""

    def router_argv(self, i, conninfo=None):
        return super().router_argv(i, conninfo or self.pg.multi_conninfo(self.db))


def provision(mc):
    mc.psql("INSERT INTO domains (name) VALUES ('failover.test')")
    mc.psql("INSERT INTO accounts (domain_id, address, password_hash) "
            "SELECT id, '%s', '{SHA512-CRYPT}$6$x$unused' FROM domains WHERE name = 'failover.test'" % RCPT)


def body(tag):
    return (b"From: load <load@remote.example>\r\nTo: " + RCPT.encode() + b"\r\n"
            b"Subject: " + tag.encode() + b"\r\nMessage-ID: <" + tag.encode() + b"@remote.example>\r\n\r\n"
            + (b"line of the body of " + tag.encode() + b"\r\n") * 40)


def deliver(stub, tag, timeout=30):
    """One Deliver; returns ('ok', None), ('tempfail', detail) or ('error', grpc code)."""
    env = pb.Envelope(mail_from="load@remote.example", recipients=[pb.Recipient(address=RCPT)],
                      session=pb.Session(client_ip="192.0.2.9", session_id=tag))
    data = body(tag)

    def gen():
        yield pb.DeliverRequest(envelope=env)
        for i in range(0, len(data), CHUNK):
            yield pb.DeliverRequest(data=data[i:i + CHUNK])
    try:
        r = stub.Deliver(gen(), timeout=timeout)
    except grpc.RpcError as e:
        return "error", e.code()
    codes = [x.code for x in r.results]
    if r.code == pb.CODE_OK and codes == [pb.CODE_OK]:
        return "ok", None
    assert r.code in (pb.CODE_OK, pb.CODE_TEMPFAIL) and all(c == pb.CODE_TEMPFAIL for c in codes), r
    return "tempfail", r


class Load:
    """n threads delivering distinct messages until stop(); outcomes by tag."""

    def __init__(self, stub, prefix, n=8):
        self.stub, self.prefix, self.n = stub, prefix, n
        self.outcomes = {}      # tag -> (what, detail, t_start, t_end)
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(n)]

    def _run(self, k):
        seq = 0
        while not self.halt.is_set():
            tag = "%s-%d-%d" % (self.prefix, k, seq)
            seq += 1
            t0 = time.monotonic()
            what, detail = deliver(self.stub, tag)
            with self.lock:
                self.outcomes[tag] = (what, detail, t0, time.monotonic())
            if what != "ok":
                time.sleep(0.05)

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads)

    def acked(self):
        return {t for t, o in self.outcomes.items() if o[0] == "ok"}

    def failed(self):
        return {t: o for t, o in self.outcomes.items() if o[0] != "ok"}


def check_delivered(mc, acked, which="primary", all_tags=None):
    """Every acknowledged tag exactly once in messages, its body on its recorded nodes;
    nothing at all more than once."""
    out = mc.pg.psql("SELECT subject, count(*), min(m.blob_id) FROM messages m GROUP BY subject",
                     db=mc.db, which=which)
    counts, blobs = {}, {}
    for line in out.splitlines():
        if line:
            subject, n, blob = line.split("|")
            counts[subject] = int(n)
            blobs[subject] = blob
    missing = [t for t in acked if counts.get(t) != 1]
    assert not missing, "acknowledged but not stored exactly once: %s" % missing[:10]
    dups = {s: n for s, n in counts.items() if n > 1}
    assert not dups, "stored twice: %s" % dups
    if all_tags is not None:
        assert set(counts) <= set(all_tags), set(counts) - set(all_tags)
    # the durability rule's other half: the bodies are on the nodes the rows name
    stubs = [mc.store_stub(i) for i in range(mc.n_stores)]
    nodes = {}
    for line in mc.pg.psql("SELECT id, nodes FROM blobs", db=mc.db, which=which).splitlines():
        if line:
            bid, ns = line.split("|")
            nodes[bid] = [x.strip('"') for x in ns.strip("{}").split(",") if x]
    for t in acked:
        # the bytes that were sent, after the Return-Path the final delivery adds
        assert blobs[t] == hashlib.sha256(b"Return-Path: <load@remote.example>\r\n" + body(t)).hexdigest(), t
        ns = nodes[blobs[t]]
        assert len(ns) >= mc.replicas, (t, ns)
        for n in ns:
            r = stubs[int(n[len("store"):]) - 1].Stat(store_pb2.StatRequest(id=blobs[t]), timeout=10)
            assert r.exists, (t, n)
    return counts


def check_failures(load):
    bad = {t: o for t, o in load.failed().items()
           if not (o[0] == "tempfail" or o[1] == grpc.StatusCode.UNAVAILABLE)}
    assert not bad, "failures that are not UNAVAILABLE/TEMPFAIL: %s" % list(bad.items())[:5]


def wait_delivering(stub, prefix, timeout=40):
    """Until a Deliver succeeds again; returns the tags tried and the one that worked."""
    end = time.monotonic() + timeout
    tried = []
    while time.monotonic() < end:
        tag = "%s-%d" % (prefix, len(tried))
        tried.append(tag)
        what, detail = deliver(stub, tag, timeout=15)
        if what == "ok":
            return tried, tag
        assert what == "tempfail" or detail == grpc.StatusCode.UNAVAILABLE, (what, detail)
        time.sleep(0.2)
    raise AssertionError("no successful delivery within %ds" % timeout)


def test_postgres_restart_under_load():
    with MailCluster(stores=2, routers=1, router_args=["--db-timeout=2s"]) as mc:
        provision(mc)
        stub = mc.router_stub(0)
        assert deliver(stub, "warmup")[0] == "ok"
        load = Load(stub, "r").start()
        time.sleep(2)
        before = len(load.acked())
        t_down = time.monotonic()
        mc.pg.stop_server("primary", "fast")
        # down longer than a commit's timeout, its one retry and the retry's
        # timeout (2 + 0.3 + 2 s), so that the commits caught by the outage must
        # fail (as UNAVAILABLE): a shorter outage may be ridden out by the retry
        time.sleep(6)
        mc.pg.start_server("primary")
        t_up = time.monotonic()
        time.sleep(1)
        tried, ok1 = wait_delivering(stub, "after")
        time.sleep(1)
        mc.pg.restart()                 # and a plain restart (pg_ctl restart -m fast)
        tried2, ok2 = wait_delivering(stub, "again")
        time.sleep(2)
        load.stop()
        tried += tried2

        acked = load.acked() | {"warmup", ok1, ok2}
        failed = load.failed()
        print("acked=%d failed=%d before_outage=%d" % (len(acked), len(failed), before))
        assert before > 0
        # the outage was seen, as UNAVAILABLE; and deliveries carried on after it
        assert failed, "no delivery failed while PostgreSQL was down"
        check_failures(load)
        assert any(o[2] > t_up for t, o in load.outcomes.items() if o[0] == "ok")
        assert all(o[3] >= t_down for o in failed.values())
        check_delivered(mc, acked, all_tags=set(load.outcomes) | {"warmup"} | set(tried))
        log = mc.router_log(0)
        assert 'msg="db connection lost"' in log


def test_failover_to_promoted_standby():
    with PgCluster(standby=True, sync_standby=True, fsync=False) as pg:
        with MultiHostCluster(stores=2, routers=1, pg=pg, router_args=["--db-timeout=2s"]) as mc:
            provision(mc)
            stub = mc.router_stub(0)
            first = ["before-%d" % k for k in range(10)]
            for t in first:
                assert deliver(stub, t)[0] == "ok", t
            load = Load(stub, "f", n=6).start()
            time.sleep(2)
            pg.stop_primary("immediate")    # a crash: only what the standby has survives
            time.sleep(0.5)
            pg.promote()
            tried, _ = wait_delivering(stub, "after-promote")
            time.sleep(2)
            load.stop()
            last = ["after-%d" % k for k in range(10)]
            for t in last:
                assert deliver(stub, t)[0] == "ok", t

            acked = load.acked() | set(first) | set(last) | {tried[-1]}
            print("acked=%d failed=%d" % (len(acked), len(load.failed())))
            check_failures(load)
            check_delivered(mc, acked, which="standby",
                            all_tags=set(load.outcomes) | set(first) | set(last) | set(tried))
            log = mc.router_log(0)
            assert 'msg="db connection lost"' in log
            promoted = [line for line in log.splitlines()
                        if 'msg="db connected"' in line and 'host="%s"' % pg.sock_dir("standby") in line]
            assert promoted and all("in_hot_standby=off" in line for line in promoted), log[-3000:]
