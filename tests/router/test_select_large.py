"""Select of a mailbox of any size (router/rt_mailbox.c, mail_select_page in
router/migrations/0007_prune.sql): the runs form of proto/router.proto's
SelectRequest, driven the way an IMAP front-end drives it - a python grpcio
client with the default 4 MiB message limit runs the paging loop and builds the
uid -> sequence map - against a real router and PostgreSQL (MailCluster).

  * 400,000 messages inserted by SQL: the classic one-reply form answers CANNOT
    (it would not fit in 4 MiB) instead of failing the call; the runs loop sees
    every uid exactly once with its flags and keywords, in pages that fit,
    including a page cut by size (a long stretch of messages whose flags alternate
    does not compress);
  * between pages: a new message (not listed: uid >= the first page's uidnext), an
    expunged one (absent), a flag change (the later page shows it);
  * \\Recent claimed by the first page only, carried by recent_from; keywords per
    page; QRESYNC vanished split over the pages' spans; bad requests."""
import hashlib
import os
import sys
import time

import grpc
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mailcluster import MailCluster  # noqa: E402

SEEN, ANSWERED, FLAGGED, DELETED, DRAFT, RECENT = 1, 2, 4, 8, 16, 32
GRPC_LIMIT = 4 * 1024 * 1024


def lit(v):
    return "'" + str(v).replace("'", "''") + "'"


class World:
    def __init__(self, mc):
        self.mc = mc
        self.stub = mc.router_stub(0)
        import router_pb2
        self.pb = router_pb2
        self.n = 0

    def one(self, sql):
        return self.mc.psql(sql).strip()

    def account(self, address):
        dom = address.split("@", 1)[1]
        self.mc.psql("INSERT INTO domains (name) VALUES (%s) ON CONFLICT DO NOTHING" % lit(dom))
        return int(self.one("INSERT INTO accounts (domain_id, address, password_hash) "
                            "SELECT id, %s, 'x' FROM domains WHERE name = %s RETURNING id"
                            % (lit(address), lit(dom))).splitlines()[0])

    def mbox_id(self, acct, name="INBOX"):
        return int(self.one("SELECT id FROM mailboxes WHERE account_id = %d AND name = %s" % (acct, lit(name))))

    def deliver(self, acct, flags=0, keywords=None):
        self.n += 1
        blob = hashlib.sha256(("sel-%d-%f" % (self.n, time.time())).encode()).hexdigest()
        kw = "NULL" if keywords is None else "ARRAY[%s]::text[]" % ",".join(lit(k) for k in keywords)
        row = self.one("SELECT status, uid FROM mail_deliver(ARRAY[%d]::bigint[], 'INBOX', '%s', 100, now(), "
                       "%d, %s, '{}', NULL, NULL, ARRAY['store1'], NULL)"
                       % (acct, blob, flags, kw)).splitlines()[0].split("|")
        assert row[0] == "ok", row
        return int(row[1])

    def expunge_uids(self, mb, uids):
        ms = "{%s}" % ",".join("[%d,%d]" % (u, u) for u in uids)
        return [int(x) for x in self.mc.psql("SELECT uid FROM mail_expunge(%d, '%s', false)" % (mb, ms)).split()]

    def session(self, acct):
        return self.pb.Session(account_id=acct, client_ip="127.0.0.1", session_id="sel")

    def select(self, acct, name="INBOX", **kw):
        return self.stub.Select(self.pb.SelectRequest(session=self.session(acct), name=name, **kw), timeout=120)

    def select_all(self, acct, name="INBOX", readonly=True, changed_since=0, limit=0, between=None):
        """The front-end's loop: the first page, then pages until more is false.
        Returns (first reply, [(uid, flags, keywords)], vanished uids, pages)."""
        first = self.select(acct, name, readonly=readonly, changed_since=changed_since, runs=True, limit=limit)
        assert first.code == 0, first
        pages, r = [first], first
        msgs, vanished = [], []
        while True:
            assert r.ByteSize() < GRPC_LIMIT
            for run in r.runs:
                kws = sorted(r.keywords[i] for i in run.keywords)
                for uid in range(run.first, run.last + 1):
                    msgs.append((uid, run.flags, kws))
            for v in r.vanished.ranges:
                vanished.extend(range(v.first, v.last + 1))
            if not r.more:
                break
            assert r.continue_after > 0
            if between is not None:
                between(len(pages), r)
            r = self.select(acct, name, runs=True, changed_since=changed_since, limit=limit,
                            after_uid=r.continue_after, uid_below=first.uidnext,
                            recent_from=first.first_recent_uid, readonly=True)
            assert r.code == 0 and r.mailbox_id == first.mailbox_id and r.uidvalidity == first.uidvalidity
            pages.append(r)
        return first, msgs, vanished, pages


@pytest.fixture(scope="module")
def w():
    with MailCluster(stores=2, routers=1) as mc:
        yield World(mc)


def expected_flags(g):
    """Flags of message g in the big mailbox: a long stretch all \\Seen, then a long
    stretch where they alternate (one run per message), then \\Seen | \\Flagged."""
    if g <= 100000:
        return SEEN
    if g <= 390000:
        return SEEN if g % 2 else 0
    return SEEN | FLAGGED


def test_select_400k_messages_in_pages(w):
    a = w.account("huge@sel.test")
    mb = w.mbox_id(a)
    n = 400000
    t = time.monotonic()
    w.mc.psql("INSERT INTO blobs (id, size) VALUES (repeat('b', 64), 10) ON CONFLICT DO NOTHING")
    w.mc.psql("INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size, blob_id, "
              "envelope, body, bodystructure, header_block) SELECT %d, g, 1000000000 + g, "
              "CASE WHEN g <= 100000 THEN 1 WHEN g <= 390000 THEN g %% 2 ELSE 5 END, "
              "CASE WHEN g %% 25000 = 0 THEN ARRAY['$k' || (g / 100000), 'Work'] ELSE '{}' END, "
              "now(), 10, repeat('b', 64), '', '', '', '' FROM generate_series(1, %d) g" % (mb, n))
    # a few holes, as expunges leave them
    holes = [g for g in range(1, n + 1) if g % 50000 == 7]
    w.mc.psql("DELETE FROM messages WHERE mailbox_id = %d AND uid %% 50000 = 7" % mb)
    w.mc.psql("UPDATE mailboxes SET uidnext = %d, highestmodseq = 2000000000 WHERE id = %d" % (n + 1, mb))
    print("inserted %d messages in %.1f s" % (n, time.monotonic() - t))
    want = [g for g in range(1, n + 1) if g % 50000 != 7]
    assert int(w.one("SELECT message_count FROM mailboxes WHERE id = %d" % mb)) == len(want)

    # an old front-end (classic form): a clear CANNOT, not a reply it would refuse
    t = time.monotonic()
    classic = w.select(a, readonly=True)
    assert classic.code == w.pb.Code.Value("CODE_CANNOT") and len(classic.messages) == 0
    print("classic select refused in %.1f s" % (time.monotonic() - t))
    assert "select reply too large for the classic form" in w.mc.router_log()

    # the runs loop, as a read-write SELECT (claims \Recent on the first page)
    t = time.monotonic()
    first, msgs, vanished, pages = w.select_all(a, readonly=False)
    took = time.monotonic() - t
    sizes = [p.ByteSize() for p in pages]
    print("runs select: %d pages, %s bytes, %d runs, %.1f s" % (len(pages), sizes,
                                                               sum(len(p.runs) for p in pages), took))
    uids = [m[0] for m in msgs]
    assert uids == want                                  # every uid exactly once, in order
    assert (first.uidnext, first.highestmodseq, first.first_recent_uid) == (n + 1, 2000000000, 1)
    for uid, flags, kws in msgs:
        assert flags & 31 == expected_flags(uid), uid
        assert flags & RECENT                            # all were unclaimed: recent for this session
        assert kws == (sorted(["$k%d" % (uid // 100000), "Work"]) if uid % 25000 == 0 else []), uid
    assert vanished == []
    assert all(s < GRPC_LIMIT for s in sizes)
    # the alternating stretch does not compress: a page was cut by size (3 MiB), not
    # by count (200,000 messages), and the next one started right after it
    counts = [sum(r.last - r.first + 1 for r in p.runs) for p in pages]
    assert counts[0] == 200000 and pages[0].continue_after == pages[0].runs[-1].last
    assert any(p.more and c < 200000 for p, c in zip(pages, counts)), counts
    assert len(pages) >= 3
    assert took < 60
    # the first page claimed \Recent: a second session sees none
    _, again, _, _ = w.select_all(a, readonly=True)
    assert [m[0] for m in again] == want and not any(f & RECENT for _, f, _ in again)


def test_changes_between_pages(w):
    """The first page's uidnext bounds the later pages; a message expunged between
    pages is absent, a flag change shows, a new message is not listed."""
    a = w.account("between@sel.test")
    mb = w.mbox_id(a)
    for i in range(30):
        w.deliver(a, flags=SEEN if i % 3 else 0, keywords=["odd"] if i % 2 else None)
    events = {}

    def between(k, reply):
        if k == 1:
            assert reply.continue_after == 10
            events["new"] = w.deliver(a)                     # uid 31 > first page's uidnext - 1
            events["gone"] = w.expunge_uids(mb, [25])
            w.mc.psql("SELECT count(*) FROM mail_store_flags(%d, '{[20,20]}', 'add', %d, NULL, NULL)"
                      % (mb, FLAGGED))

    first, msgs, _, pages = w.select_all(a, limit=10, between=between)
    assert first.uidnext == 31 and events["new"] == 31 and events["gone"] == [25]
    assert len(pages) == 3
    assert [m[0] for m in msgs] == [u for u in range(1, 31) if u != 25]
    by = {u: (f, k) for u, f, k in msgs}
    assert by[20][0] & FLAGGED and not by[19][0] & FLAGGED
    assert by[2][1] == ["odd"] and by[3][1] == []
    assert by[1][0] & SEEN == 0 and by[2][0] & SEEN
    # each page's keyword table covers its own runs only
    assert all(list(p.keywords) in ([], ["odd"]) for p in pages)


def test_recent_and_paging_fields(w):
    a = w.account("recent@sel.test")
    for i in range(12):
        w.deliver(a, flags=SEEN)
    first, msgs, _, pages = w.select_all(a, readonly=False, limit=5)
    assert first.first_recent_uid == 1 and len(pages) == 3
    assert [u for u, f, _ in msgs if f & RECENT] == list(range(1, 13))   # later pages too, via recent_from
    assert [(r.first, r.last) for r in first.runs] == [(1, 5)]         # one run: same flags
    for i in range(3):
        w.deliver(a, flags=SEEN)
    first, msgs, _, pages = w.select_all(a, readonly=False, limit=4)
    assert first.first_recent_uid == 13
    assert [u for u, f, _ in msgs if f & RECENT] == [13, 14, 15]
    # a run is split where \Recent starts
    runs = [(r.first, r.last, bool(r.flags & RECENT)) for p in pages for r in p.runs]
    assert (12, 12, False) in runs or any(r[1] == 12 for r in runs)
    assert all(not (f <= 12 < l and rec) for f, l, rec in runs)
    # EXAMINE after that: nothing is recent, and one page holds everything
    first, msgs, _, pages = w.select_all(a, readonly=True)
    assert len(pages) == 1 and not first.more and first.continue_after == 0
    assert [(r.first, r.last, r.flags) for r in first.runs] == [(1, 15, SEEN)]
    # a later page with recent_from 0: nothing recent
    r = w.select(a, runs=True, after_uid=3, uid_below=10, readonly=True)
    assert [(x.first, x.last, x.flags) for x in r.runs] == [(4, 9, SEEN)] and not r.more
    # paging fields without runs: refused; unknown mailbox: NO_SUCH_MAILBOX on any page
    for kw in ({"after_uid": 3}, {"uid_below": 5}, {"recent_from": 2}, {"limit": 10}):
        with pytest.raises(grpc.RpcError) as e:
            w.select(a, **kw)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kw
    NOMB = w.pb.Code.Value("CODE_NO_SUCH_MAILBOX")
    assert w.select(a, "Nope", runs=True).code == NOMB
    assert w.select(a, "Nope", runs=True, after_uid=5, uid_below=9).code == NOMB
    assert list(w.select(w.account("other@sel.test"), runs=True, after_uid=5).runs) == []  # its empty INBOX
    # a span with no message: one empty page
    e = w.select(a, "INBOX", runs=True, after_uid=100, uid_below=200)
    assert e.code == 0 and list(e.runs) == [] and not e.more


def test_qresync_vanished_over_pages(w):
    a = w.account("vanish@sel.test")
    mb = w.mbox_id(a)
    for _ in range(40):
        w.deliver(a)
    since = int(w.one("SELECT highestmodseq FROM mailboxes WHERE id = %d" % mb))
    gone = [3, 4, 5, 17, 30, 40]
    assert w.expunge_uids(mb, gone) == gone
    first, msgs, vanished, pages = w.select_all(a, changed_since=since, limit=8)
    assert len(pages) == 5
    assert vanished == gone                     # each once, each on the page whose span holds it
    assert [m[0] for m in msgs] == [u for u in range(1, 41) if u not in gone]
    # uid 40 (above the last message) comes with the last page
    assert [(v.first, v.last) for v in pages[-1].vanished.ranges] == [(40, 40)]
    # the classic form agrees
    c = w.select(a, readonly=True, changed_since=since)
    assert [(v.first, v.last) for v in c.vanished.ranges] == [(3, 5), (17, 17), (30, 30), (40, 40)]
    assert c.first_recent_uid == first.first_recent_uid
