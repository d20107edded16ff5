"""Pruning of the expunged table (QRESYNC VANISHED rows) by the housekeeping job
(router/rt_jobs.c, mail_job_prune_expunged in router/migrations/0007_prune.sql),
against a real router and PostgreSQL (MailCluster), and QRESYNC after it
(RFC 7162 3.2.5.2 / 3.2.10: VANISHED (EARLIER) may name uids the client already
knows are gone, or that never existed, but never leaves out one it missed):

  * rows older than the retention (30 days; made old here by moving
    expunged_at back) are deleted, young ones stay, in steps (a mailbox with
    more old rows than one step takes); each pruned mailbox records the highest
    modseq it lost (expunged_pruned_modseq);
  * Select with a changed_since older than that reports every uid below UIDNEXT
    that is not in the mailbox - a superset of what was expunged since - in the
    classic form and over the pages of the runs form; with a changed_since at or
    after it, exactly the expunges that came later."""
import hashlib
import os
import re
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mailcluster import MailCluster  # noqa: E402


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

    def deliver(self, acct):
        self.n += 1
        blob = hashlib.sha256(("prune-%d-%f" % (self.n, time.time())).encode()).hexdigest()
        row = self.one("SELECT status, uid FROM mail_deliver(ARRAY[%d]::bigint[], 'INBOX', '%s', 100, now(), "
                       "0, NULL, '{}', NULL, NULL, ARRAY['store1'], NULL)" % (acct, blob)).splitlines()[0]
        assert row.startswith("ok|"), row
        return int(row.split("|")[1])

    def expunge(self, mb, uids):
        """Expunges uids (one new modseq); returns that modseq."""
        ms = "{%s}" % ",".join("[%d,%d]" % (u, u) for u in uids)
        rows = [r.split("|") for r in self.mc.psql("SELECT uid, modseq FROM mail_expunge(%d, '%s', false)"
                                                   % (mb, ms)).split()]
        assert [int(r[0]) for r in rows] == sorted(uids)
        return int(rows[0][1])

    def hms(self, mb):
        return int(self.one("SELECT highestmodseq FROM mailboxes WHERE id = %d" % mb))

    def pruned(self, mb):
        return int(self.one("SELECT expunged_pruned_modseq FROM mailboxes WHERE id = %d" % mb))

    def expunged(self, mb):
        return [int(x) for x in self.mc.psql("SELECT uid FROM expunged WHERE mailbox_id = %d ORDER BY uid"
                                             % mb).split()]

    def session(self, acct):
        return self.pb.Session(account_id=acct, client_ip="127.0.0.1", session_id="prune")

    def vanished(self, acct, since, name="INBOX"):
        """Classic Select (EXAMINE) with QRESYNC: the vanished uids."""
        r = self.stub.Select(self.pb.SelectRequest(session=self.session(acct), name=name, readonly=True,
                                                   changed_since=since), timeout=60)
        assert r.code == 0
        return [u for v in r.vanished.ranges for u in range(v.first, v.last + 1)]

    def vanished_paged(self, acct, since, limit, name="INBOX"):
        """The runs form's loop: the union of the pages' vanished uids (each once)."""
        first = r = self.stub.Select(self.pb.SelectRequest(session=self.session(acct), name=name, readonly=True,
                                                           changed_since=since, runs=True, limit=limit))
        out, pages = [], 0
        while True:
            pages += 1
            out.extend(u for v in r.vanished.ranges for u in range(v.first, v.last + 1))
            if not r.more:
                return out, pages
            r = self.stub.Select(self.pb.SelectRequest(
                session=self.session(acct), name=name, readonly=True, changed_since=since, runs=True,
                limit=limit, after_uid=r.continue_after, uid_below=first.uidnext,
                recent_from=first.first_recent_uid))


def metrics(mc):
    with urllib.request.urlopen(mc.metrics_url(0) + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                      if line and not line.startswith("#"))}


def wait_for(what, fn, timeout=60.0):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def test_prune_then_qresync_superset():
    with MailCluster(stores=2, routers=1) as mc:
        w = World(mc)
        a = w.account("prune@prune.test")
        mb = w.mbox_id(a)
        for _ in range(20):
            w.deliver(a)
        m0 = w.expunge(mb, [7])                  # a client that knows modseq m0 saw this one go
        m1 = w.expunge(mb, [2, 3, 4])
        m2 = w.expunge(mb, [10])
        mc.psql("UPDATE expunged SET expunged_at = now() - interval '31 days' WHERE mailbox_id = %d" % mb)
        m3 = w.expunge(mb, [15, 16])             # young: must stay
        assert m0 < m1 < m2 < m3 == w.hms(mb)
        assert w.vanished(a, m0) == [2, 3, 4, 10, 15, 16]     # exact while nothing is pruned
        assert w.vanished(a, m2) == [15, 16]

        # another account whose rows are all young: untouched
        b = w.account("young@prune.test")
        mbb = w.mbox_id(b)
        for _ in range(3):
            w.deliver(b)
        w.expunge(mbb, [2])
        # a mailbox with more old rows than one pruning step deletes (10,000)
        big = int(w.one("INSERT INTO mailboxes (account_id, name) VALUES (%d, 'Big') RETURNING id"
                        % a).splitlines()[0])
        mc.psql("INSERT INTO expunged (mailbox_id, uid, modseq, expunged_at) SELECT %d, g, 1 + g / 1000, "
                "now() - interval '40 days' FROM generate_series(1, 25000) g" % big)
        mc.psql("UPDATE mailboxes SET uidnext = 25001, highestmodseq = 100 WHERE id = %d" % big)

        # a router that takes the housekeeping lease prunes at once
        assert mc.stop_router(0) == 0
        mc.start_router(0)
        wait_for("pruning", lambda: w.expunged(big) == [] and w.expunged(mb) == [15, 16])
        assert w.pruned(mb) == m2 and w.pruned(big) == 26 and w.pruned(mbb) == 0
        assert w.expunged(mbb) == [2]
        wait_for("the pruning log line", lambda: re.search(r'msg="expunged rows pruned" removed=25005 ',
                                                           mc.router_log()))
        assert metrics(mc)["expunged_pruned_total"] == 25005

        present = [int(x) for x in mc.psql("SELECT uid FROM messages WHERE mailbox_id = %d ORDER BY uid"
                                           % mb).split()]
        absent = [u for u in range(1, 21) if u not in present]
        assert absent == [2, 3, 4, 7, 10, 15, 16]
        # older than what was pruned: every uid below UIDNEXT that is not there -
        # a superset (7 was known to the client) of the exact answer
        for since in (1, m0, m1, m2 - 1):
            v = w.vanished(a, since)
            assert v == absent, since
            assert set([2, 3, 4, 10, 15, 16]) <= set(v)
            assert w.vanished_paged(a, since, limit=4) == (absent, 4)
        # at or after it: exact again - only what was expunged later
        assert w.vanished(a, m2) == [15, 16]
        assert w.vanished_paged(a, m2, limit=4) == ([15, 16], 4)
        assert w.vanished(a, m3) == []
        # the schema's function agrees (routers of the previous release call it)
        assert w.one("SELECT mail_vanished(%d, %d)" % (mb, m0)) == "2:4,7,10,15:16"
        assert w.one("SELECT mail_vanished(%d, %d)" % (mb, m2)) == "15:16"
        # the big mailbox: nothing left in it, every uid below UIDNEXT vanished
        assert w.vanished(a, 5, name="Big") == list(range(1, 25001))
        assert w.vanished(a, 26, name="Big") == []
        # a young mailbox still answers exactly
        assert w.vanished(b, 1) == [2]
