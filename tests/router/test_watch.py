"""Watch (router/rt_watch.c): change notifications fed by PostgreSQL
LISTEN/NOTIFY, through two real router processes (MailCluster(routers=2)) with
python grpcio as the front-end: HELLO when the stream is live, NEW / CHANGED /
EXPUNGED / MAILBOXES events, mailbox and account scope, a change made through
one router (or straight in SQL) reaching a Watch on the other within a second,
the resync event after a PostgreSQL restart, a watch opened while PostgreSQL is
down, a slow reader's events collapsing into one resync, and the errors."""
import hashlib
import os
import queue
import sys
import threading
import time
import urllib.request

import grpc
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mailcluster import MailCluster  # noqa: E402

SEEN, DELETED = 1, 8


def lit(v):
    return "NULL" if v is None else "'" + str(v).replace("'", "''") + "'"


class World:
    def __init__(self, mc):
        self.mc = mc
        self.stubs = [mc.router_stub(i) for i in range(len(mc.router_ports))]
        import router_pb2
        self.pb = router_pb2
        self.n = 0

    def one(self, sql):
        return self.mc.psql(sql).strip()

    def account(self, address):
        dom = address.split("@", 1)[1]
        self.mc.psql("INSERT INTO domains (name) VALUES (%s) ON CONFLICT DO NOTHING" % lit(dom))
        return int(self.one("INSERT INTO accounts (domain_id, address, password_hash) SELECT id, %s, 'x' "
                            "FROM domains WHERE name = %s RETURNING id" % (lit(address), lit(dom))).splitlines()[0])

    def deliver(self, acct, mailbox="INBOX"):
        self.n += 1
        blob = hashlib.sha256(("%d-%f" % (self.n, time.time())).encode()).hexdigest()
        row = self.one("SELECT status, uid, modseq FROM mail_deliver(ARRAY[%d]::bigint[], %s, '%s', 100, now(), "
                       "0, NULL, '{}', '\\x00', NULL, ARRAY['store1'], NULL)"
                       % (acct, lit(mailbox), blob)).splitlines()[0].split("|")
        assert row[0] == "ok", row
        return int(row[1]), int(row[2])

    def mbox_id(self, acct, name="INBOX"):
        return int(self.one("SELECT id FROM mailboxes WHERE account_id = %d AND name = %s" % (acct, lit(name))))

    def modseq(self, mb):
        return int(self.one("SELECT highestmodseq FROM mailboxes WHERE id = %d" % mb))

    def session(self, acct):
        return self.pb.Session(account_id=acct, session_id="w")

    def watch(self, acct, mailbox_id=0, router=1):
        return Watch(self.stubs[router], self.pb.WatchRequest(session=self.session(acct), mailbox_id=mailbox_id))

    def kind(self, name):
        return self.pb.WatchEvent.Kind.Value(name)

    def metric(self, router, name):
        with urllib.request.urlopen(self.mc.metrics_url(router) + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None


class Watch:
    """A Watch call read by a thread into a queue."""

    def __init__(self, stub, req):
        self.q = queue.Queue()
        self.call = stub.Watch(req)
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()

    def _pump(self):
        try:
            for ev in self.call:
                self.q.put(ev)
            self.q.put(None)
        except grpc.RpcError as e:
            self.q.put(e)

    def next(self, timeout=5.0):
        ev = self.q.get(timeout=timeout)
        if isinstance(ev, Exception):
            raise ev
        return ev

    def error(self, timeout=10.0):
        ev = self.q.get(timeout=timeout)
        assert isinstance(ev, grpc.RpcError), ev
        return ev.code()

    def quiet(self):
        return self.q.empty()

    def close(self):
        self.call.cancel()
        self.t.join(5)


def ranges(ev):
    return [(r.first, r.last) for r in ev.uids.ranges]


@pytest.fixture(scope="module")
def w():
    with MailCluster(stores=2, routers=2) as mc:
        yield World(mc)


def test_events_of_a_mailbox_and_of_an_account(w):
    a = w.account("events@w.test")
    b = w.account("other@w.test")
    mb = w.mbox_id(a)
    HELLO, NEW, CHANGED, EXPUNGED, MAILBOXES = (w.kind(k) for k in
                                                ("HELLO", "NEW", "CHANGED", "EXPUNGED", "MAILBOXES"))
    wm = w.watch(a, mb)
    wa = w.watch(a, 0)
    ev = wm.next()
    assert (ev.kind, ev.mailbox_id, ev.modseq) == (HELLO, mb, w.modseq(mb))
    ev = wa.next()
    assert (ev.kind, ev.mailbox_id, ev.modseq) == (HELLO, 0, 0)

    uid, modseq = w.deliver(a)
    for x in (wm, wa):
        ev = x.next()
        assert (ev.kind, ev.mailbox_id, ev.modseq, ranges(ev)) == (NEW, mb, modseq, [(uid, uid)])
    w.deliver(a)
    w.deliver(a)
    assert [ranges(wm.next()) for _ in range(2)] == [[(2, 2)], [(3, 3)]]
    assert [ranges(wa.next()) for _ in range(2)] == [[(2, 2)], [(3, 3)]]

    w.mc.psql("SELECT count(*) FROM mail_store_flags(%d, '{[1,3]}', 'add', %d, NULL, NULL)" % (mb, DELETED))
    ev = wm.next()
    assert (ev.kind, ranges(ev), ev.modseq) == (CHANGED, [(1, 3)], w.modseq(mb))
    assert wa.next().kind == CHANGED
    w.mc.psql("SELECT count(*) FROM mail_expunge(%d, '{[2,3]}')" % mb)
    ev = wm.next()
    assert (ev.kind, ranges(ev), ev.modseq) == (EXPUNGED, [(2, 3)], w.modseq(mb))
    assert wa.next().kind == EXPUNGED

    # mailbox list changes: the account watch sees them; a mailbox watch only its own
    st = w.stubs[0].CreateMailbox(w.pb.MailboxRequest(session=w.session(a), name="Other"))
    assert st.code == 0
    other = w.mbox_id(a, "Other")
    ev = wa.next()
    assert (ev.kind, ev.mailbox_id) == (MAILBOXES, other)
    w.deliver(a, "Other")
    ev = wa.next()
    assert (ev.kind, ev.mailbox_id) == (NEW, other)
    w.deliver(b)                                  # another account: nobody here hears it
    w.deliver(a)                                  # the sync point
    ev = wm.next()
    assert (ev.kind, ev.mailbox_id, ranges(ev)) == (NEW, mb, [(4, 4)])
    ev = wa.next()
    assert (ev.kind, ev.mailbox_id) == (NEW, mb)
    # a rename names several mailboxes (0): every watch of the account gets it
    assert w.stubs[0].RenameMailbox(w.pb.RenameMailboxRequest(session=w.session(a),
                                                              **{"from": "Other", "to": "Renamed"})).code == 0
    assert (wm.next().kind, wa.next().kind) == (MAILBOXES, MAILBOXES)
    assert w.stubs[0].Subscribe(w.pb.SubscribeRequest(session=w.session(a), name="Renamed",
                                                      subscribe=True)).code == 0
    ev = wa.next()
    assert (ev.kind, ev.mailbox_id) == (MAILBOXES, other)

    # a uid set too long for a notification payload ('*') asks for a resync of that mailbox
    w.mc.psql("INSERT INTO blobs (id, size) VALUES (repeat('b', 64), 10) ON CONFLICT DO NOTHING")
    w.mc.psql("INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, blob_id, envelope, body, "
              "bodystructure, header_block) SELECT %d, g, 1, now(), 10, repeat('b', 64), '', '', '', '' "
              "FROM generate_series(100, 4000) g" % mb)
    w.mc.psql("UPDATE mailboxes SET uidnext = 4001 WHERE id = %d" % mb)
    w.mc.psql("SELECT count(*) FROM mail_store_flags(%d, int8multirange(VARIADIC ARRAY(SELECT int8range(g, g, "
              "'[]') FROM generate_series(100, 4000, 2) g)), 'add', %d, NULL, NULL)" % (mb, SEEN))
    ev = wm.next()
    assert (ev.kind, ev.mailbox_id, len(ev.uids.ranges), ev.modseq) == (CHANGED, mb, 0, w.modseq(mb))
    assert wm.quiet() and wa.next().kind == CHANGED
    wm.close()
    wa.close()


def test_change_through_one_router_reaches_the_other_within_a_second(w):
    a = w.account("cross@w.test")
    mb = w.mbox_id(a)
    wm = w.watch(a, mb, router=1)
    wa = w.watch(a, 0, router=1)
    assert wm.next().kind == w.kind("HELLO") and wa.next().kind == w.kind("HELLO")
    lat = []
    for i in range(5):
        t = time.monotonic()
        assert w.stubs[0].CreateMailbox(w.pb.MailboxRequest(session=w.session(a), name="F%d" % i)).code == 0
        ev = wa.next(timeout=1.0)
        lat.append(time.monotonic() - t)
        assert ev.kind == w.kind("MAILBOXES") and ev.mailbox_id == w.mbox_id(a, "F%d" % i)
    for i in range(5):
        t = time.monotonic()
        uid, _ = w.deliver(a)                     # psql: another client altogether
        ev = wm.next(timeout=1.0)
        lat.append(time.monotonic() - t)
        assert ev.kind == w.kind("NEW") and ranges(ev) == [(uid, uid)]
    print("router 1 -> router 2 watch latency: max %.1f ms, mean %.1f ms"
          % (max(lat) * 1000, sum(lat) / len(lat) * 1000))
    assert max(lat) < 1.0
    # both routers fan out: a watch on router 1 hears the same delivery
    w1 = w.watch(a, mb, router=0)
    assert w1.next().kind == w.kind("HELLO")
    uid, _ = w.deliver(a)
    assert ranges(w1.next(1.0)) == [(uid, uid)] and ranges(wm.next(1.0)) == [(uid, uid)]
    for x in (wm, wa, w1):
        x.close()


def test_watch_errors_and_cleanup(w):
    a = w.account("errs@w.test")
    b = w.account("errs-b@w.test")
    assert w.watch(b, w.mbox_id(a)).error() == grpc.StatusCode.NOT_FOUND      # not b's mailbox
    assert w.watch(a, 99999999).error() == grpc.StatusCode.NOT_FOUND
    assert w.watch(88888888, 0).error() == grpc.StatusCode.NOT_FOUND           # no such account
    assert Watch(w.stubs[1], w.pb.WatchRequest()).error() == grpc.StatusCode.INVALID_ARGUMENT
    # cancelled watches are freed on the router (the gauge goes back)
    ws = [w.watch(a, 0) for _ in range(20)]
    for x in ws:
        assert x.next().kind == w.kind("HELLO")
    end = time.monotonic() + 5
    while w.metric(1, "watch_streams") != 20 and time.monotonic() < end:
        time.sleep(0.05)
    assert w.metric(1, "watch_streams") == 20
    for x in ws:
        x.close()
    end = time.monotonic() + 5
    while w.metric(1, "watch_streams") != 0 and time.monotonic() < end:
        time.sleep(0.05)
    assert w.metric(1, "watch_streams") == 0


def test_slow_reader_gets_one_resync(w):
    """A watcher that does not read: its events stop queueing at the high-water mark
    and collapse into one resync event (bounded memory); later events flow again."""
    a = w.account("slow@w.test")
    mb = w.mbox_id(a)
    ch = grpc.insecure_channel(w.mc.router_addr(1), options=[("grpc.http2.bdp_probe", 0),
                                                             ("grpc.http2.lookahead_bytes", 16384)])
    stub = __import__("router_pb2_grpc").RouterStub(ch)
    call = stub.Watch(w.pb.WatchRequest(session=w.session(a), mailbox_id=mb))
    first = next(call)
    assert first.kind == w.kind("HELLO")
    n = 100000                                    # ~2 MB of events, far past what any window holds
    w.mc.psql("SELECT count(mail_notify(%d, %d, 'flags', g::text, g)) FROM generate_series(1, %d) g" % (a, mb, n))
    time.sleep(1.0)                               # let the router fill the stream
    events, resyncs, last = 0, [], 0
    for ev in call:                               # in commit order, up to the last change
        assert ev.kind == w.kind("CHANGED") and ev.mailbox_id == mb and ev.modseq > last
        last = ev.modseq
        if len(ev.uids.ranges) == 0:
            resyncs.append(ev.modseq)             # stands for every event it replaced
        else:
            assert ranges(ev) == [(ev.modseq, ev.modseq)]
            events += 1
        if last == n:
            break
    print("slow reader: %d of %d events sent, %d resync(s) for the rest" % (events, n, len(resyncs)))
    assert resyncs and events < n
    assert w.metric(1, "watch_resyncs_total") >= 1
    uid, _ = w.deliver(a)
    ev = next(call)
    assert ev.kind == w.kind("NEW") and ranges(ev) == [(uid, uid)]
    call.cancel()
    ch.close()


def test_watch_survives_a_postgresql_restart(w):
    a = w.account("restart@w.test")
    mb = w.mbox_id(a)
    w.deliver(a)
    wm = w.watch(a, mb)
    wa = w.watch(a, 0, router=0)
    assert wm.next().kind == w.kind("HELLO") and wa.next().kind == w.kind("HELLO")
    w.mc.pg.restart()
    ev = wm.next(timeout=20)
    assert (ev.kind, ev.mailbox_id, len(ev.uids.ranges)) == (w.kind("CHANGED"), mb, 0)
    assert ev.modseq == w.modseq(mb)              # the mailbox's current HIGHESTMODSEQ
    ev = wa.next(timeout=20)
    assert (ev.kind, ev.mailbox_id, len(ev.uids.ranges)) == (w.kind("CHANGED"), 0, 0)
    uid, _ = w.deliver(a)                         # and the stream carries on
    assert ranges(wm.next()) == [(uid, uid)] and ranges(wa.next()) == [(uid, uid)]

    # a watch opened while PostgreSQL is down says HELLO once it is back
    w.mc.pg.stop_server("primary")
    try:
        late = w.watch(a, mb)
        time.sleep(1.0)
        assert late.quiet()                       # not live: no HELLO yet
    finally:
        w.mc.pg.start_server("primary")
    ev = late.next(timeout=9)
    assert ev.kind == w.kind("HELLO") and ev.modseq == w.modseq(mb)
    uid, _ = w.deliver(a)
    assert ranges(late.next()) == [(uid, uid)]
    for x in (wm, wa, late):
        x.close()

    # down for longer than a watch waits to become live: UNAVAILABLE, then watch again
    w.mc.pg.stop_server("primary")
    try:
        doomed = w.watch(a, mb)
        t = time.monotonic()
        assert doomed.error(timeout=15) == grpc.StatusCode.UNAVAILABLE
        assert 9 < time.monotonic() - t < 13
    finally:
        w.mc.pg.start_server("primary")
    end = time.monotonic() + 20
    while True:
        again = w.watch(a, mb)
        try:
            ev = again.next(timeout=12)
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < end
    assert ev.kind == w.kind("HELLO")
    again.close()


def test_drain_ends_watch_streams():
    """SIGTERM: a Watch stream never ends by itself, so the draining router ends
    every one at once with UNAVAILABLE ("router draining": the frontend watches
    again elsewhere) and exits cleanly without waiting for its shutdown timeout."""
    with MailCluster(stores=2, routers=1) as mc:
        w = World(mc)
        a = w.account("drain@w.test")
        w.deliver(a)
        mb = w.mbox_id(a)
        streams = [w.watch(a, mb, router=0), w.watch(a, 0, router=0)]
        for s in streams:
            assert s.next().kind == w.kind("HELLO")
        assert mc.stop_router(0) == 0
        for s in streams:
            ev = s.q.get(timeout=10)
            assert isinstance(ev, grpc.RpcError) and ev.code() == grpc.StatusCode.UNAVAILABLE, ev
            assert "router draining" in ev.details()
        log = mc.router_log(0)
        assert 'msg="watch streams ended for the drain"' in log and "watchers=2" in log
        assert "drain timed out" not in log
