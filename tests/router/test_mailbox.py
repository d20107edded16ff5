"""The mailbox RPCs of mail.router.v1 (router/rt_mailbox.c) through a real
router and PostgreSQL (MailCluster), with python grpcio as the front-end:
ListMailboxes, CreateMailbox, DeleteMailbox, RenameMailbox, Subscribe, Status,
Select/Examine (QRESYNC vanished) and Quota. Accounts are provisioned with SQL
and messages delivered with the schema's mail_deliver(), so these tests depend
on nothing but the mailbox module."""
import hashlib
import os
import sys
import time

import grpc
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mailcluster import MailCluster  # noqa: E402

ALL, ARCHIVE, DRAFTS, FLAGGED, JUNK, SENT, TRASH = ("\\All", "\\Archive", "\\Drafts", "\\Flagged",
                                                    "\\Junk", "\\Sent", "\\Trash")
SEEN, ANSWERED, FLAGGED_F, DELETED, DRAFT, RECENT = 1, 2, 4, 8, 16, 32


# ---------------------------------------------------------------- helpers

def lit(v):
    if v is None:
        return "NULL"
    return "'" + str(v).replace("'", "''") + "'"


class World:
    """The cluster, a stub and the SQL helpers a test needs."""

    def __init__(self, mc):
        self.mc = mc
        self.stub = mc.router_stub(0)
        import router_pb2
        self.pb = router_pb2
        self.n = 0

    def one(self, sql):
        return self.mc.psql(sql).strip()

    def account(self, address, quota_bytes=0, quota_messages=0):
        dom = address.split("@", 1)[1]
        self.mc.psql("INSERT INTO domains (name) VALUES (%s) ON CONFLICT DO NOTHING" % lit(dom))
        return int(self.one(
            "INSERT INTO accounts (domain_id, address, password_hash, quota_bytes, quota_messages) "
            "SELECT id, %s, 'x', %d, %d FROM domains WHERE name = %s RETURNING id"
            % (lit(address), quota_bytes, quota_messages, lit(dom))).splitlines()[0])

    def deliver(self, acct, mailbox="INBOX", flags=0, keywords=None, size=1000):
        """One message through mail_deliver(); returns (uid, modseq)."""
        self.n += 1
        blob = hashlib.sha256(("%d-%f" % (self.n, time.time())).encode()).hexdigest()
        kw = "NULL" if keywords is None else "ARRAY[%s]::text[]" % ",".join(lit(k) for k in keywords)
        row = self.one(
            "SELECT status, uid, modseq FROM mail_deliver(ARRAY[%d]::bigint[], %s, '%s', %d, now(), %d, "
            "%s, '{\"subject\":\"s\"}', '\\x5375626a6563743a20730d0a', 'body', ARRAY['store1'], NULL)"
            % (acct, lit(mailbox), blob, size, flags, kw)).splitlines()[0].split("|")
        assert row[0] == "ok", row
        return int(row[1]), int(row[2])

    def mbox_id(self, acct, name):
        return int(self.one("SELECT id FROM mailboxes WHERE account_id = %d AND name = %s" % (acct, lit(name))))

    def mbox_row(self, acct, name):
        r = self.one("SELECT uidvalidity, uidnext, highestmodseq FROM mailboxes WHERE account_id = %d "
                     "AND name = %s" % (acct, lit(name))).split("|")
        return dict(zip(["uidvalidity", "uidnext", "highestmodseq"], map(int, r)))

    def store(self, mb, uids, mode, flags, keywords=None):
        kw = "NULL" if keywords is None else "ARRAY[%s]::text[]" % ",".join(lit(k) for k in keywords)
        self.mc.psql("SELECT count(*) FROM mail_store_flags(%d, '%s', %s, %d, %s, NULL)"
                     % (mb, uids, lit(mode), flags, kw))

    def expunge(self, mb):
        return self.mc.psql("SELECT uid FROM mail_expunge(%d)" % mb).split()

    def session(self, acct):
        return self.pb.Session(account_id=acct, client_ip="127.0.0.1", session_id="t")

    # RPC shorthands
    def create(self, acct, name, use=()):
        return self.stub.CreateMailbox(self.pb.MailboxRequest(session=self.session(acct), name=name,
                                                              special_use=list(use))).code

    def delete(self, acct, name):
        return self.stub.DeleteMailbox(self.pb.MailboxRequest(session=self.session(acct), name=name)).code

    def rename(self, acct, old, new):
        return self.stub.RenameMailbox(self.pb.RenameMailboxRequest(session=self.session(acct),
                                                                    **{"from": old, "to": new})).code

    def subscribe(self, acct, name, on=True):
        return self.stub.Subscribe(self.pb.SubscribeRequest(session=self.session(acct), name=name,
                                                            subscribe=on)).code

    def list(self, acct, subscribed_only=False):
        r = self.stub.ListMailboxes(self.pb.ListMailboxesRequest(session=self.session(acct),
                                                                 subscribed_only=subscribed_only))
        return {m.name: m for m in r.mailboxes}

    def status(self, acct, names):
        return list(self.stub.Status(self.pb.StatusRequest(session=self.session(acct), names=names)).mailboxes)

    def select(self, acct, name, readonly=False, changed_since=0):
        return self.stub.Select(self.pb.SelectRequest(session=self.session(acct), name=name,
                                                      readonly=readonly, changed_since=changed_since))

    def raw(self, method, payload, reply):
        """A request given as raw protobuf bytes (what python would refuse to build)."""
        ch = grpc.insecure_channel(self.mc.router_addr(0))
        fn = ch.unary_unary("/mail.router.v1.Router/" + method, request_serializer=None,
                            response_deserializer=reply.FromString)
        try:
            return fn(payload, timeout=10)
        finally:
            ch.close()


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ranges(uidset):
    return [(r.first, r.last) for r in uidset.ranges]


@pytest.fixture(scope="module")
def w():
    with MailCluster(stores=2, routers=1) as mc:
        yield World(mc)


def code(w, name):
    return w.pb.Code.Value(name)


# ---------------------------------------------------------------- tree operations

def test_create_list_rename_delete_subscribe(w):
    a = w.account("tree@mb.test")
    OK, EXISTS, NOMB, INVALID = (code(w, "CODE_OK"), code(w, "CODE_MAILBOX_EXISTS"),
                                 code(w, "CODE_NO_SUCH_MAILBOX"), code(w, "CODE_INVALID"))
    assert w.create(a, "Work/Projects/2024") == OK
    assert w.create(a, "Sent Items", [SENT.lower()]) == OK       # USE attributes are case-insensitive
    assert w.create(a, "Bin", [TRASH, JUNK, TRASH]) == OK
    assert w.create(a, "Trash/") == OK                            # trailing separator: declares children
    assert w.create(a, "Work/Projects") == EXISTS
    assert w.create(a, "Bogus", ["\\Important"]) == INVALID       # not RFC 6154: IMAP NO [USEATTR]
    lst = w.list(a)
    assert sorted(lst) == ["Bin", "INBOX", "Sent Items", "Trash", "Work", "Work/Projects", "Work/Projects/2024"]
    assert [n for n in lst if lst[n].has_children] == ["Work", "Work/Projects"]
    assert not any(m.noselect for m in lst.values())              # CREATE made real parents
    assert list(lst["Sent Items"].special_use) == [SENT]
    assert sorted(lst["Bin"].special_use) == [JUNK, TRASH]
    assert lst["INBOX"].subscribed and not lst["Work"].subscribed
    ids = {n: m.id for n, m in lst.items()}
    assert all(ids.values()) and len(set(ids.values())) == len(ids)

    # SUBSCRIBE / UNSUBSCRIBE; LSUB-style listing keeps has_children of the full tree
    assert w.subscribe(a, "Work") == OK
    assert w.subscribe(a, "Work/Projects/2024") == OK
    assert w.subscribe(a, "Nope") == NOMB
    assert w.subscribe(a, "Nope", on=False) == OK                 # nothing to unsubscribe: done
    sub = w.list(a, subscribed_only=True)
    assert sorted(sub) == ["INBOX", "Work", "Work/Projects/2024"] and sub["Work"].has_children
    assert w.subscribe(a, "Work/Projects/2024", on=False) == OK
    assert sorted(w.list(a, subscribed_only=True)) == ["INBOX", "Work"]

    # RENAME with children: ids, UIDVALIDITY and subscriptions move with the names
    uidv = w.mbox_row(a, "Work/Projects/2024")["uidvalidity"]
    assert w.rename(a, "Work", "Archive/Old Work") == OK
    lst = w.list(a)
    assert "Work" not in lst and "Work/Projects" not in lst
    assert lst["Archive/Old Work"].id == ids["Work"] and lst["Archive/Old Work"].subscribed
    assert lst["Archive/Old Work/Projects/2024"].id == ids["Work/Projects/2024"]
    assert w.mbox_row(a, "Archive/Old Work/Projects/2024")["uidvalidity"] == uidv
    assert lst["Archive"].id != 0 and lst["Archive"].has_children  # missing parent created
    assert w.rename(a, "Archive/Old Work", "Bin") == EXISTS
    assert w.rename(a, "Archive/Old Work", "Archive/Old Work/x") == code(w, "CODE_CANNOT")
    assert w.rename(a, "Nope", "Nope2") == NOMB

    # DELETE of a mailbox with children (RFC 9051): it goes, the children stay and
    # the name shows as a \Noselect parent implied by the hierarchy
    assert w.delete(a, "Archive/Old Work") == OK
    lst = w.list(a)
    p = lst["Archive/Old Work"]
    assert p.noselect and p.has_children and p.id == 0 and not p.subscribed
    assert "Archive/Old Work/Projects/2024" in lst
    assert w.delete(a, "Archive/Old Work") == NOMB                # \Noselect: nothing to delete
    assert w.select(a, "Archive/Old Work").code == NOMB
    assert w.delete(a, "Bin") == OK and "Bin" not in w.list(a)
    assert w.delete(a, "Bin") == NOMB
    # subscribed_only never lists implied parents
    assert all(not m.noselect for m in w.list(a, subscribed_only=True).values())


def test_accounts_are_isolated(w):
    a = w.account("iso-a@mb.test")
    b = w.account("iso-b@mb.test")
    NOMB = code(w, "CODE_NO_SUCH_MAILBOX")
    assert w.create(a, "Private") == code(w, "CODE_OK")
    w.deliver(a, "Private")
    assert "Private" not in w.list(b)
    assert w.delete(b, "Private") == NOMB
    assert w.rename(b, "Private", "Mine") == NOMB
    assert w.subscribe(b, "Private") == NOMB
    assert w.select(b, "Private").code == NOMB
    assert [s.code for s in w.status(b, ["Private", "INBOX"])] == [NOMB, code(w, "CODE_OK")]
    assert w.mbox_row(a, "Private")["uidnext"] == 2                # untouched
    # a session without an account is refused outright
    with pytest.raises(grpc.RpcError) as e:
        w.stub.ListMailboxes(w.pb.ListMailboxesRequest())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # an account id that does not exist
    assert w.create(999999, "X") == code(w, "CODE_NO_SUCH_USER")
    assert w.list(999999) == {}


def test_inbox_rules(w):
    a = w.account("inbox@mb.test")
    OK, CANNOT = code(w, "CODE_OK"), code(w, "CODE_CANNOT")
    # INBOX is case-insensitive (RFC 3501 5.1), its children keep their own case
    assert w.create(a, "inbox") == code(w, "CODE_MAILBOX_EXISTS")
    assert w.create(a, "InBox/Sub") == OK
    assert "INBOX/Sub" in w.list(a) and "InBox/Sub" not in w.list(a)
    assert w.select(a, "iNbOx").mailbox_id == w.mbox_id(a, "INBOX")
    assert w.create(a, "INBOXES") == OK and "INBOXES" in w.list(a)   # only the whole component
    assert w.delete(a, "INBOX") == CANNOT and w.delete(a, "inbox") == CANNOT

    # RENAME INBOX: the messages move to the new mailbox, INBOX stays, empty, with its children
    u1, _ = w.deliver(a)
    w.deliver(a, flags=SEEN)
    inbox_id = w.mbox_id(a, "INBOX")
    assert w.rename(a, "Inbox", "Old Mail") == OK
    lst = w.list(a)
    assert lst["INBOX"].id == inbox_id and "INBOX/Sub" in lst and lst["Old Mail"].id != inbox_id
    st = {s.name: s for s in w.status(a, ["INBOX", "Old Mail"])}
    assert st["INBOX"].messages == 0 and st["Old Mail"].messages == 2 and st["Old Mail"].unseen == 1
    assert [m.uid for m in w.select(a, "Old Mail", readonly=True).messages] == [1, 2]
    # ... even into one of its own children (0003_mailbox.sql), the classic archive move
    w.deliver(a)
    assert w.rename(a, "INBOX", "INBOX/2024") == OK
    st = {s.name: s for s in w.status(a, ["INBOX", "INBOX/2024"])}
    assert st["INBOX"].messages == 0 and st["INBOX/2024"].messages == 1
    # any other mailbox still cannot move into itself
    assert w.rename(a, "Old Mail", "Old Mail/x") == CANNOT
    assert w.rename(a, "Old Mail", "INBOX") == code(w, "CODE_MAILBOX_EXISTS")


def test_invalid_names(w):
    a = w.account("names@mb.test")
    CANNOT, NOMB = code(w, "CODE_CANNOT"), code(w, "CODE_NO_SUCH_MAILBOX")
    bad = ["", "/", "/a", "a//b", "a/b//", "tab\there", "del\x7f", "nul-ish\x01", "wild*", "per%cent",
           "x" * 1001, "/".join(["d"] * 65), "c1\u0085ctl"]
    for name in bad:
        assert w.create(a, name) == CANNOT, repr(name)
    assert w.create(a, "x" * 1000) == code(w, "CODE_OK")          # the limit itself is fine
    assert w.create(a, "/".join(["d"] * 64)) == code(w, "CODE_OK")
    assert w.create(a, "Ünïcødé/日本語") == code(w, "CODE_OK")
    assert "Ünïcødé/日本語" in w.list(a)
    assert w.rename(a, "Ünïcødé", "a//b") == CANNOT
    for name in ["", "a//b", "/x"]:
        assert w.select(a, name).code == NOMB
        assert w.delete(a, name) == NOMB
        assert w.rename(a, name, "ok") == NOMB
    assert [s.code for s in w.status(a, ["a//b", "INBOX", ""])] == [NOMB, code(w, "CODE_OK"), NOMB]

    # bytes python would refuse to send: a name that is not UTF-8
    session = b"\x0a" + varint(len(b"\x08" + varint(a))) + b"\x08" + varint(a)
    for name in [b"\xff\xfe", b"caf\xc3", b"\xc0\xafetc", b"\xed\xa0\x80surrogate"]:
        req = session + b"\x12" + varint(len(name)) + name
        assert w.raw("CreateMailbox", req, w.pb.MailboxReply).code == CANNOT, name
        assert w.raw("Select", req, w.pb.SelectReply).code == NOMB, name
    # garbage instead of a message, and a second request message on a unary call
    with pytest.raises(grpc.RpcError) as e:
        w.raw("CreateMailbox", b"\xff\xff\xff", w.pb.MailboxReply)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ch = grpc.insecure_channel(w.mc.router_addr(0))
    two = ch.stream_unary("/mail.router.v1.Router/Select", request_serializer=None,
                          response_deserializer=w.pb.SelectReply.FromString)
    # the first SELECT waits for a lock held by another transaction, so the second
    # message surely arrives while the first is in SQL (which is then abandoned)
    import threading
    locker = threading.Thread(target=w.mc.psql, args=(
        "BEGIN; SELECT 1 FROM mailboxes WHERE account_id = %d AND name = 'INBOX' FOR UPDATE; "
        "SELECT pg_sleep(1.5); COMMIT;" % a,))
    locker.start()
    time.sleep(0.5)
    select_req = session + b"\x12\x05INBOX"
    t = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        two(iter([select_req, select_req]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and time.monotonic() - t < 0.9
    locker.join()
    with pytest.raises(grpc.RpcError) as e:
        two(iter([]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ch.close()
    with pytest.raises(grpc.RpcError) as e:
        w.status(a, ["INBOX"] * 1001)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- status, select, quota

def test_status_of_several_mailboxes(w):
    a = w.account("status@mb.test")
    assert w.create(a, "Lists") == code(w, "CODE_OK")
    w.deliver(a, size=100)
    w.deliver(a, size=200, flags=SEEN)
    w.deliver(a, size=300)
    w.deliver(a, "Lists", size=5000)
    st = w.status(a, ["INBOX", "Lists", "Nope", "inbox"])
    assert [s.name for s in st] == ["INBOX", "Lists", "Nope", "inbox"]   # as asked, in order
    i, l, n, i2 = st
    row = w.mbox_row(a, "INBOX")
    assert (i.code, i.messages, i.recent, i.unseen, i.size, i.deleted) == (0, 3, 3, 2, 600, 0)
    assert (i.uidnext, i.uidvalidity, i.highestmodseq) == (row["uidnext"], row["uidvalidity"],
                                                          row["highestmodseq"])
    assert (l.messages, l.unseen, l.size, l.uidnext) == (1, 1, 5000, 2)
    assert n.code == code(w, "CODE_NO_SUCH_MAILBOX")
    assert i2.messages == 3 and i2.uidvalidity == i.uidvalidity

    # flag changes move the counters and HIGHESTMODSEQ
    mb = w.mbox_id(a, "INBOX")
    w.store(mb, "{[1,2]}", "add", DELETED)
    w.store(mb, "{[3,3]}", "add", SEEN)
    i = w.status(a, ["INBOX"])[0]
    assert (i.messages, i.unseen, i.deleted) == (3, 1, 2)
    assert i.highestmodseq == row["highestmodseq"] + 2
    w.expunge(mb)
    i = w.status(a, ["INBOX"])[0]
    assert (i.messages, i.unseen, i.deleted, i.size, i.recent) == (1, 0, 0, 300, 1)
    # a read-write SELECT claims \Recent; STATUS then shows none
    w.select(a, "INBOX")
    assert w.status(a, ["INBOX"])[0].recent == 0
    assert w.status(a, []) == []


def test_select_contents_and_keywords(w):
    a = w.account("select@mb.test")
    w.deliver(a, keywords=["Work", "$Junk"])
    w.deliver(a, flags=SEEN | FLAGGED_F, keywords=["Work"])
    w.deliver(a, flags=ANSWERED)
    mb = w.mbox_id(a, "INBOX")
    w.store(mb, "{[3,3]}", "add", 0, ["$Forwarded"])
    row = w.mbox_row(a, "INBOX")

    r = w.select(a, "INBOX", readonly=True)                          # EXAMINE
    assert r.code == 0 and r.mailbox_id == mb
    assert (r.uidvalidity, r.uidnext, r.highestmodseq) == (row["uidvalidity"], row["uidnext"],
                                                         row["highestmodseq"])
    assert list(r.keywords) == ["$Forwarded", "$Junk", "Work"]        # every keyword in use, sorted
    assert [m.uid for m in r.messages] == [1, 2, 3]
    kw = lambda m: sorted(r.keywords[i] for i in m.keywords)
    assert [kw(m) for m in r.messages] == [["$Junk", "Work"], ["Work"], ["$Forwarded"]]
    assert [m.flags & ~RECENT for m in r.messages] == [0, SEEN | FLAGGED_F, ANSWERED]
    assert [m.modseq for m in r.messages] == [1 + 1, 1 + 2, row["highestmodseq"]]
    assert not r.HasField("vanished")
    # EXAMINE does not claim \Recent: again, and still recent
    assert all(m.flags & RECENT for m in w.select(a, "INBOX", readonly=True).messages)
    assert all(m.flags & RECENT for m in w.select(a, "INBOX").messages)   # this SELECT claims them
    assert not any(m.flags & RECENT for m in w.select(a, "INBOX").messages)
    assert not any(m.flags & RECENT for m in w.select(a, "INBOX", readonly=True).messages)
    w.deliver(a)
    r = w.select(a, "INBOX", readonly=True)
    assert [m.uid for m in r.messages if m.flags & RECENT] == [4]
    assert [m.uid for m in w.select(a, "INBOX").messages if m.flags & RECENT] == [4]
    assert w.select(a, "Nope").code == code(w, "CODE_NO_SUCH_MAILBOX")
    # an empty mailbox
    assert w.create(a, "Empty") == 0
    e = w.select(a, "Empty")
    assert e.code == 0 and list(e.messages) == [] and list(e.keywords) == [] and e.uidnext == 1


def test_qresync_vanished(w):
    a = w.account("qresync@mb.test")
    for _ in range(6):
        w.deliver(a)
    mb = w.mbox_id(a, "INBOX")
    w.store(mb, "{[2,2],[4,5]}", "add", DELETED)
    since = w.mbox_row(a, "INBOX")["highestmodseq"]
    assert w.expunge(mb) == ["2", "4", "5"]
    r = w.select(a, "INBOX", changed_since=since)
    assert ranges(r.vanished) == [(2, 2), (4, 5)]
    assert [m.uid for m in r.messages] == [1, 3, 6]
    assert r.highestmodseq == since + 1
    w.store(mb, "{[6,6]}", "add", DELETED)
    w.expunge(mb)
    r = w.select(a, "INBOX", readonly=True, changed_since=since + 1)   # only what came after
    assert ranges(r.vanished) == [(6, 6)]
    assert not w.select(a, "INBOX", readonly=True, changed_since=r.highestmodseq).HasField("vanished")
    assert not w.select(a, "INBOX", readonly=True).HasField("vanished")


def test_quota(w):
    a = w.account("quota@mb.test", quota_bytes=100000, quota_messages=10)
    w.deliver(a, size=1500)
    w.create(a, "Other")
    w.deliver(a, "Other", size=2500)
    q = w.stub.Quota(w.pb.QuotaRequest(session=w.session(a)))
    assert (q.bytes_used, q.bytes_limit, q.messages_used, q.messages_limit) == (4000, 100000, 2, 10)
    unlimited = w.account("free@mb.test")
    q = w.stub.Quota(w.pb.QuotaRequest(session=w.session(unlimited)))
    assert (q.bytes_used, q.bytes_limit, q.messages_used, q.messages_limit) == (0, 0, 0, 0)
    with pytest.raises(grpc.RpcError) as e:
        w.stub.Quota(w.pb.QuotaRequest(session=w.session(987654)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_select_large_mailbox_one_round_trip(w):
    """20,000 messages: one Select answers with every uid, flag and keyword."""
    a = w.account("big@mb.test")
    mb = w.mbox_id(a, "INBOX")
    n = 20000
    # bulk rows straight into messages (the counters follow through the triggers)
    w.mc.psql("INSERT INTO blobs (id, size) VALUES (repeat('a', 64), 10) ON CONFLICT DO NOTHING")
    w.mc.psql("INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size, blob_id, "
              "envelope, body, bodystructure, header_block) SELECT %d, g, g, g %% 32, "
              "CASE WHEN g %% 7 = 0 THEN ARRAY['k' || (g %% 5)] ELSE '{}' END, now(), 10, repeat('a', 64), "
              "'', '', '', '' FROM generate_series(1, %d) g" % (mb, n))
    w.mc.psql("UPDATE mailboxes SET uidnext = %d, highestmodseq = %d WHERE id = %d" % (n + 1, n, mb))
    t = time.monotonic()
    r = w.select(a, "INBOX", readonly=True)
    took = time.monotonic() - t
    print("select of %d messages: %.0f ms, %d bytes" % (n, took * 1000, r.ByteSize()))
    assert len(r.messages) == n and r.uidnext == n + 1
    assert [m.uid for m in r.messages[:3]] == [1, 2, 3] and r.messages[-1].uid == n
    assert sorted(r.keywords) == ["k0", "k1", "k2", "k3", "k4"]
    m = r.messages[6]                                                 # uid 7
    assert m.flags & 31 == 7 and [r.keywords[i] for i in m.keywords] == ["k2"]
    assert took < 5
    assert w.status(w.account("big2@mb.test"), ["INBOX"])[0].messages == 0
    st = w.status(a, ["INBOX"])[0]
    assert st.messages == n and st.recent == n      # never claimed: counted without a scan
    w.select(a, "INBOX")
    assert w.status(a, ["INBOX"])[0].recent == 0
