"""ResolveRecipient, Deliver and Append (router/rt_deliver.c) through python grpcio
against a real cluster: PostgreSQL, store nodes, the router.

What a call claims is checked again independently: rows and columns with psql,
replicas by asking each store node directly (Stat/Get with python grpcio) and by
recomputing the rendezvous placement, bodies byte for byte. The destructive cases
(a store node down, a router killed mid-stream) run on a cluster of their own.
Run with /usr/bin/python3 -m pytest; MAIL_BUILD_DIR names the build."""
import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import gen_python  # noqa: E402
from mailcluster import MailCluster  # noqa: E402

gen_python("router.proto")
gen_python("store.proto")
import grpc  # noqa: E402
import router_pb2 as pb  # noqa: E402
import store_pb2  # noqa: E402

CHUNK = 64 * 1024
MAX_SIZE = 1024 * 1024          # --max-message-size of the cluster below
HASH = "{SHA512-CRYPT}$6$x$notused"

OK = pb.CODE_OK
NO_SUCH_USER = pb.CODE_NO_SUCH_USER
OVER_QUOTA = pb.CODE_OVER_QUOTA
RELAY_DENIED = pb.CODE_RELAY_DENIED
INVALID = pb.CODE_INVALID


def q(s):
    return "'" + s.replace("'", "''") + "'"


def sha(b):
    return hashlib.sha256(b).hexdigest()


def stored(body, mail_from="sender@remote.example", received=""):
    """What a Deliver stores: the Return-Path the final delivery adds (RFC 5321
    4.4), the frontend's Received header, the data as sent."""
    rp = b"Return-Path: <" + mail_from.encode() + b">\r\n"
    return rp + (received.encode() + b"\r\n" if received else b"") + body


def sid(body, mail_from="sender@remote.example", received=""):
    """The blob id of a delivered body."""
    return sha(stored(body, mail_from, received))


def rendezvous(names, blob_id):
    """The documented placement order: SHA-256("<name>\\n<id>")[:8] big-endian, highest first."""
    def score(n):
        return int.from_bytes(hashlib.sha256((n + "\n" + blob_id).encode()).digest()[:8], "big")
    return sorted(names, key=lambda n: (-score(n), n))


def message(subject="Hello", body="plain body words", n=0, extra=b""):
    """A multipart/alternative message with encoded words, as a client would send it."""
    return (
        b"Date: Tue, 2 Jan 2024 10:11:12 +0100 (CET)\r\n"
        b"From: =?utf-8?q?J=C3=B6rg_Sender?= <Joerg.Sender@Remote.Example>\r\n"
        b"To: Bob <bob@dl.test>, team@dl.test\r\n"
        b"Cc: \"Carol C\" <carol@dl.test>\r\n"
        b"Subject: Re: [list] Fwd: " + subject.encode() + b" (fwd)\r\n"
        b"Message-ID: <m" + str(n).encode() + b"@remote.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
        b"\r\n"
        b"--b1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"" + body.encode() + b" caf=C3=A9\r\n"
        b"--b1\r\n"
        b"Content-Type: text/html; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n" + base64.encodebytes(b"<p>htmlonlyword &amp; more \xe9t\xe9</p>").replace(b"\n", b"\r\n") +
        b"--b1--\r\n" + extra)


class Env:
    def __init__(self, mc):
        self.mc = mc
        self.stub = mc.router_stub(0)
        self.ids = {}
        self._stores = {}

    def store(self, i):
        if i not in self._stores:
            self._stores[i] = self.mc.store_stub(i)
        return self._stores[i]

    def rows(self, sql):
        return [line.split("|") for line in self.mc.psql(sql).splitlines() if line != ""]

    def one(self, sql):
        r = self.rows(sql)
        assert len(r) == 1 and len(r[0]) == 1, r
        return r[0][0]

    def domain(self, name):
        self.mc.psql("INSERT INTO domains (name) VALUES (%s) ON CONFLICT DO NOTHING" % q(name))

    def account(self, address, quota_bytes=0, disabled=False):
        dom = address.split("@", 1)[1]
        self.domain(dom)
        aid = int(self.one(
            "INSERT INTO accounts (domain_id, address, password_hash, quota_bytes, disabled) "
            "SELECT id, %s, %s, %d, %s FROM domains WHERE name = %s RETURNING id"
            % (q(address), q(HASH), quota_bytes, "true" if disabled else "false", q(dom))))
        self.ids[address] = aid
        return aid

    def alias(self, address, targets):
        dom = address.split("@", 1)[1]
        self.domain(dom)
        self.mc.psql("INSERT INTO aliases (domain_id, address, targets) SELECT id, %s, ARRAY[%s] FROM domains "
                     "WHERE name = %s" % (q(address), ",".join(q(t) for t in targets), q(dom)))

    def inbox(self, address, name="INBOX"):
        return int(self.one("SELECT mb.id FROM mailboxes mb JOIN accounts a ON a.id = mb.account_id "
                            "WHERE a.address = %s AND mb.name = %s" % (q(address), q(name))))

    def resolve(self, address, account_id=0, size=0):
        return self.stub.ResolveRecipient(pb.ResolveRecipientRequest(
            address=address, session=pb.Session(account_id=account_id, client_ip="192.0.2.7"),
            message_size=size), timeout=30)

    def envelope(self, rcpts, mail_from="sender@remote.example", account_id=0, received="", queue_id=""):
        return pb.Envelope(mail_from=mail_from, recipients=[pb.Recipient(address=a) for a in rcpts],
                           session=pb.Session(account_id=account_id, client_ip="192.0.2.7", session_id="t1"),
                           received_header=received, queue_id=queue_id)

    def deliver(self, rcpts, body, stub=None, timeout=60, **kw):
        env = self.envelope(rcpts, **kw)

        def gen():
            yield pb.DeliverRequest(envelope=env)
            for i in range(0, len(body), CHUNK):
                yield pb.DeliverRequest(data=body[i:i + CHUNK])
        return (stub or self.stub).Deliver(gen(), timeout=timeout)

    def append(self, account, mailbox, body, flags=(), date=0, size=None, timeout=30):
        def gen():
            yield pb.AppendRequest(session=pb.Session(account_id=account), mailbox=mailbox, flags=list(flags),
                                   internal_date=date, size=len(body) if size is None else size)
            for i in range(0, len(body), CHUNK):
                yield pb.AppendRequest(data=body[i:i + CHUNK])
        return self.stub.Append(gen(), timeout=timeout)

    def store_get(self, i, blob_id):
        data = b""
        for r in self.store(i).Get(store_pb2.GetRequest(id=blob_id), timeout=30):
            data += r.data
        return data

    def holders(self, blob_id):
        """Store nodes (by name) that have the blob, asked directly."""
        have = []
        for i in range(self.mc.n_stores):
            if self.store(i).Stat(store_pb2.StatRequest(id=blob_id), timeout=10).exists:
                have.append("store%d" % (i + 1))
        return have


def provision(e):
    for a in ("bob@dl.test", "carol@dl.test", "dave@dl.test", "erin@dl.test", "conc@dl.test",
              "app@dl.test"):
        e.account(a)
    e.account("full@dl.test", quota_bytes=500)
    e.account("appfull@dl.test", quota_bytes=100)
    e.account("off@dl.test", disabled=True)
    e.alias("team@dl.test", ["carol@dl.test", "Dave@dl.test", "erin@dl.test"])
    e.alias("chain@dl.test", ["team@dl.test"])
    e.alias("fwd@dl.test", ["Someone@Remote.Example"])
    e.alias("loopa@dl.test", ["loopb@dl.test"])
    e.alias("loopb@dl.test", ["loopa@dl.test"])
    e.alias("@catch.test", ["bob@dl.test"])
    e.alias("fullfwd@dl.test", ["full@dl.test"])
    e.mc.psql("INSERT INTO mailboxes (account_id, name) VALUES (%d, 'Archive')" % e.ids["app@dl.test"])


@pytest.fixture(scope="module")
def env():
    with MailCluster(stores=3, routers=1, router_args=["--max-message-size=%d" % MAX_SIZE]) as mc:
        e = Env(mc)
        provision(e)
        yield e


# ---------------------------------------------------------------- ResolveRecipient

def test_resolve_recipient(env):
    """RCPT TO answers: local account, alias (several targets, through another alias),
    catch-all, unknown, disabled, alias loop, remote without and with authentication,
    an alias forwarding to a remote address, over quota for the SIZE given, bad syntax."""
    r = env.resolve("Bob@DL.test")
    assert (r.code, r.local, list(r.targets)) == (OK, True, ["bob@dl.test"])
    r = env.resolve("team@dl.test")
    assert r.code == OK and r.local and sorted(r.targets) == ["carol@dl.test", "dave@dl.test", "erin@dl.test"]
    r = env.resolve("chain@dl.test")
    assert r.code == OK and sorted(r.targets) == ["carol@dl.test", "dave@dl.test", "erin@dl.test"]
    r = env.resolve("anything.at.all@catch.test")
    assert (r.code, r.local, list(r.targets)) == (OK, True, ["bob@dl.test"])
    assert env.resolve("nobody@dl.test").code == NO_SUCH_USER
    assert env.resolve("off@dl.test").code == NO_SUCH_USER
    assert env.resolve("loopa@dl.test").code == NO_SUCH_USER
    assert env.resolve("someone@remote.example").code == RELAY_DENIED
    r = env.resolve("someone@remote.example", account_id=env.ids["bob@dl.test"])
    assert (r.code, r.local, list(r.targets)) == (OK, False, ["someone@remote.example"])
    # a session naming an account that is disabled or does not exist does not relay
    assert env.resolve("someone@remote.example", account_id=env.ids["off@dl.test"]).code == RELAY_DENIED
    assert env.resolve("someone@remote.example", account_id=987654).code == RELAY_DENIED
    r = env.resolve("fwd@dl.test")
    assert (r.code, r.local, list(r.targets)) == (OK, False, ["someone@remote.example"])
    assert env.resolve("full@dl.test", size=2000).code == OVER_QUOTA
    assert env.resolve("fullfwd@dl.test", size=2000).code == OVER_QUOTA
    assert env.resolve("full@dl.test", size=100).code == OK
    assert env.resolve("full@dl.test").code == OK   # size unknown: not full yet
    for bad in ("no-at-sign", "two@@dl.test", "@dl.test", "bob@", "", "x" * 250 + "@dl.test",
                "a@b\x01.test"):
        assert env.resolve(bad).code == INVALID, bad


# ---------------------------------------------------------------- Deliver

def test_deliver_local_and_alias(env):
    """One Deliver to a user, an alias with three targets and one of those targets
    again: one blob, on exactly R=2 of the 3 store nodes (the rendezvous choice),
    byte-identical to what was sent with the Return-Path and Received header in front; one row per
    mailbox (a duplicate after alias expansion gets one copy); the IMAP strings, the
    header block, the search fields and the full-text row computed at delivery."""
    received = "Received: from client.example (client.example [192.0.2.7])\r\n\tby mx.dl.test; Tue, 2 Jan 2024 09:11:13 +0000"
    body = message()
    r = env.deliver(["bob@dl.test", "team@dl.test", "Carol@dl.test"], body, received=received)
    assert r.code == OK and len(r.queue_id) == 16
    assert [(x.address, x.code) for x in r.results] == [("bob@dl.test", OK), ("team@dl.test", OK),
                                                        ("Carol@dl.test", OK)]
    data = stored(body, received=received)
    blob_id = sha(data)
    rows = env.rows("SELECT a.address, m.uid, m.blob_id, m.size FROM messages m JOIN mailboxes mb ON "
                    "mb.id = m.mailbox_id JOIN accounts a ON a.id = mb.account_id ORDER BY a.address")
    assert rows == [[a, "1", blob_id, str(len(data))] for a in
                    ("bob@dl.test", "carol@dl.test", "dave@dl.test", "erin@dl.test")]
    assert env.rows("SELECT refcount, size, nodes FROM blobs WHERE id = %s" % q(blob_id)) == \
        [["4", str(len(data)), "{%s}" % ",".join(sorted(rendezvous(["store1", "store2", "store3"], blob_id)[:2]))]]
    holders = env.holders(blob_id)
    assert sorted(holders) == sorted(rendezvous(["store1", "store2", "store3"], blob_id)[:2])
    for name in holders:
        assert env.store_get(int(name[5:]) - 1, blob_id) == data

    m = dict(zip(["envelope", "body", "bodystructure", "header_block", "part_map", "subject", "base_subject",
                  "from_addr", "to_addr", "cc_addr", "sort_from", "sort_to", "sort_cc", "sent_date",
                  "message_id", "internal_ok"],
                 env.rows("SELECT convert_from(envelope, 'UTF8'), convert_from(body, 'UTF8'), "
                          "convert_from(bodystructure, 'UTF8'), encode(substr(header_block, 1, 20), 'escape'), "
                          "replace(convert_from(part_map, 'UTF8'), E'\\n', ';'), subject, base_subject, from_addr, to_addr, "
                          "cc_addr, sort_from, sort_to, sort_cc, sent_date AT TIME ZONE 'UTC', message_id, "
                          "abs(extract(epoch FROM now() - internal_date)) < 60 "
                          "FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id WHERE mb.id = %d"
                          % env.inbox("bob@dl.test"))[0]))
    assert m["envelope"].startswith('("Tue, 2 Jan 2024 10:11:12 +0100 (CET)" "Re: [list] Fwd: Hello (fwd)"')
    assert '"<m0@remote.example>")' in m["envelope"] and '"Joerg.Sender" "Remote.Example"' in m["envelope"]
    assert m["bodystructure"].startswith('(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable"')
    assert '"alternative" ("boundary" "b1")' in m["bodystructure"]
    assert m["body"].endswith('"alternative")') and "boundary" not in m["body"]
    assert m["header_block"] == "Return-Path: <sender"
    assert "[1] " in m["part_map"] and "[2.MIME] " in m["part_map"]
    assert m["subject"] == "Re: [list] Fwd: Hello (fwd)" and m["base_subject"] == "Hello"
    assert m["from_addr"] == "Jörg Sender <Joerg.Sender@Remote.Example>"
    assert m["to_addr"] == "Bob <bob@dl.test>, team@dl.test" and m["cc_addr"] == '"Carol C" <carol@dl.test>'
    assert (m["sort_from"], m["sort_to"], m["sort_cc"]) == ("joerg.sender", "bob", "carol")
    assert m["sent_date"] == "2024-01-02 09:11:12" and m["message_id"] == "<m0@remote.example>"
    assert m["internal_ok"] == "t"
    # one log line per transaction, correlated with the frontend's session
    line = [ln for ln in env.mc.router_log(0).splitlines() if "queue_id=%s " % r.queue_id in ln][0]
    assert 'msg="message delivered"' in line and 'session="t1"' in line and "copies=4" in line
    # the section map resolves BODY[2] to the base64 text of the html part
    off, size = [int(x) for x in [ln for ln in m["part_map"].split(";") if ln.startswith("[2] ")][0].split()[1:]]
    assert base64.b64decode(data[off:off + size]) == b"<p>htmlonlyword &amp; more \xe9t\xe9</p>"
    # search text: both parts decoded (quoted-printable, base64 + latin-1 + html
    # stripped), kept as text (SEARCH BODY is a substring match); no tsvector
    # computed on the commit path any more
    assert env.one("SELECT strpos(body, 'htmlonlyword') > 0 AND strpos(body, 'café') > 0 "
                   "AND strpos(body, 'été') > 0 AND strpos(body, 'plain') > 0 AND strpos(body, '<p>') = 0 "
                   "AND tsv IS NULL FROM message_text WHERE blob_id = %s" % q(blob_id)) == "t"

    # consecutive UIDs and modseqs in one mailbox
    for n in (1, 2):
        assert env.deliver(["bob@dl.test"], message(n=n)).results[0].code == OK
    assert env.rows("SELECT uid, modseq FROM messages WHERE mailbox_id = %d ORDER BY uid"
                    % env.inbox("bob@dl.test")) == [["1", "2"], ["2", "3"], ["3", "4"]]
    assert env.one("SELECT uidnext FROM mailboxes WHERE id = %d" % env.inbox("bob@dl.test")) == "4"


def test_deliver_results_per_recipient(env):
    """Each recipient gets its own answer: unknown, disabled, over quota, an alias
    loop, a relay attempt, a syntax error, an alias forwarding to a remote address
    (queued), and an authenticated submission to a remote address (queued with its
    submitter and DSN data)."""
    body = message(n=10, extra=b"x" * 600)   # over full@'s 500 byte quota
    r = env.deliver(["erin@dl.test", "nobody@dl.test", "off@dl.test", "full@dl.test", "loopa@dl.test",
                     "someone@remote.example", "no-at-sign", "fwd@dl.test"], body)
    assert [x.code for x in r.results] == [OK, NO_SUCH_USER, NO_SUCH_USER, OVER_QUOTA, NO_SUCH_USER,
                                           RELAY_DENIED, INVALID, OK]
    assert env.one("SELECT count(*) FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id "
                   "WHERE mb.account_id = %d" % env.ids["full@dl.test"]) == "0"
    # the relayed copy starts after the Return-Path line (data_offset), so its size is the data's
    assert env.rows("SELECT rcpt, domain, account_id IS NULL, mail_from, size, data_offset FROM outbound_queue "
                    "WHERE blob_id = %s" % q(sid(body))) == \
        [["someone@remote.example", "remote.example", "t", "sender@remote.example", str(len(body)),
          str(len(stored(body)) - len(body))]]

    bob = env.ids["bob@dl.test"]
    sub = message(n=11)
    envl = env.envelope(["Friend@Elsewhere.Example", "carol@dl.test"], mail_from="bob@dl.test", account_id=bob)
    envl.envid = "ENV-1"
    envl.ret = "hdrs"
    envl.recipients[0].notify = "FAILURE,DELAY"
    envl.recipients[0].orcpt = "rfc822;Friend@Elsewhere.Example"
    r = env.stub.Deliver(iter([pb.DeliverRequest(envelope=envl, data=sub)]), timeout=30)
    assert [x.code for x in r.results] == [OK, OK] and r.results[0].detail == "queued"
    assert env.rows("SELECT rcpt, domain, account_id, mail_from, envid, ret, notify, orcpt, status "
                    "FROM outbound_queue WHERE blob_id = %s" % q(sid(sub, "bob@dl.test"))) == \
        [["friend@elsewhere.example", "elsewhere.example", str(bob), "bob@dl.test", "ENV-1", "HDRS",
          "FAILURE,DELAY", "rfc822;Friend@Elsewhere.Example", "queued"]]
    # the queue row holds a reference: refcount = carol's copy + the queue row
    assert env.one("SELECT refcount FROM blobs WHERE id = %s" % q(sid(sub, "bob@dl.test"))) == "2"
    assert env.one("SELECT array_length(nodes, 1) FROM blobs WHERE id = %s" % q(sid(sub, "bob@dl.test"))) == "2"


def test_idempotent_retry(env):
    """A Deliver sent again with the same queue_id (the frontend's retry after a lost
    answer) returns the first attempt's results and delivers and queues nothing twice."""
    bob = env.ids["bob@dl.test"]
    body = message(n=20)
    first = env.deliver(["dave@dl.test", "x@far.example"], body, account_id=bob, queue_id="fe1.Q-000123")
    again = env.deliver(["dave@dl.test", "x@far.example"], body, account_id=bob, queue_id="fe1.Q-000123")
    assert first.queue_id == again.queue_id == "fe1.Q-000123"
    assert [(x.code, x.detail) for x in first.results] == [(x.code, x.detail) for x in again.results] == \
        [(OK, "delivered"), (OK, "queued")]
    assert env.one("SELECT count(*) FROM messages WHERE blob_id = %s" % q(sid(body))) == "1"
    assert env.one("SELECT count(*) FROM outbound_queue WHERE blob_id = %s" % q(sid(body))) == "1"
    # another id is another transaction: delivered again
    env.deliver(["dave@dl.test"], body, queue_id="fe1.Q-000124")
    assert env.one("SELECT count(*) FROM messages WHERE blob_id = %s" % q(sid(body))) == "2"
    with pytest.raises(grpc.RpcError) as e:
        env.deliver(["dave@dl.test"], body, queue_id="bad id!")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_big_message_and_size_limit(env):
    """A 900 KiB message (parsed off the loop) is stored whole; one byte over
    max_message_size is refused with RESOURCE_EXHAUSTED before the stream ends,
    and nothing of it is stored."""
    big = message(n=30, extra=b"".join(b"line %06d of filler text\r\n" % i for i in range(36000)))
    assert 800 * 1024 < len(big) < MAX_SIZE
    r = env.deliver(["carol@dl.test"], big)
    assert r.results[0].code == OK
    bid = sid(big)
    assert env.one("SELECT size FROM messages WHERE blob_id = %s" % q(bid)) == str(len(stored(big)))
    holder = env.holders(bid)[0]
    assert env.store_get(int(holder[5:]) - 1, bid) == stored(big)

    sent = [0]
    too_big = b"y" * (MAX_SIZE + 1)

    def gen():
        yield pb.DeliverRequest(envelope=env.envelope(["carol@dl.test"]))
        for i in range(0, len(too_big) * 4, CHUNK):   # would go on for 4 MiB
            sent[0] += 1
            yield pb.DeliverRequest(data=too_big[:CHUNK])
    with pytest.raises(grpc.RpcError) as e:
        env.stub.Deliver(gen(), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sent[0] < 64, sent[0]
    assert env.one("SELECT count(*) FROM messages WHERE size > %d" % MAX_SIZE) == "0"


def test_concurrent_deliveries(env):
    """20 Deliver streams at once into one mailbox: UIDs 1..20 with no gap and no
    duplicate, strictly increasing modseqs, every message present once."""
    out, errs = [None] * 20, []

    def one(i):
        try:
            out[i] = env.deliver(["conc@dl.test"], message(n=100 + i, extra=b"z" * (i * 3000)), timeout=60)
        except Exception as ex:  # noqa: BLE001
            errs.append(ex)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errs, errs
    assert all(r.results[0].code == OK for r in out)
    rows = env.rows("SELECT uid, modseq, message_id FROM messages WHERE mailbox_id = %d ORDER BY uid"
                    % env.inbox("conc@dl.test"))
    assert [int(r[0]) for r in rows] == list(range(1, 21))
    modseqs = [int(r[1]) for r in rows]
    assert modseqs == sorted(set(modseqs)) and len(modseqs) == 20
    assert sorted(r[2] for r in rows) == sorted("<m%d@remote.example>" % (100 + i) for i in range(20))
    assert len({r.queue_id for r in out}) == 20


def test_bad_streams(env):
    """Protocol misuse is INVALID_ARGUMENT, and the router carries on."""
    def expect(reqs, code=grpc.StatusCode.INVALID_ARGUMENT):
        with pytest.raises(grpc.RpcError) as e:
            env.stub.Deliver(iter(reqs), timeout=10)
        assert e.value.code() == code
    expect([pb.DeliverRequest(data=b"no envelope first")])
    expect([])
    expect([pb.DeliverRequest(envelope=env.envelope([]))])
    expect([pb.DeliverRequest(envelope=env.envelope(["r%d@dl.test" % i for i in range(1001)]))])
    expect([pb.DeliverRequest(envelope=env.envelope(["bob@dl.test"])), pb.DeliverRequest(data=b"x" * (CHUNK + 1))])
    expect([pb.DeliverRequest(envelope=env.envelope(["bob@dl.test"])),
            pb.DeliverRequest(envelope=env.envelope(["bob@dl.test"]))])
    expect([pb.DeliverRequest(envelope=env.envelope(["bob@dl.test"], received="Received: x\r\n\r\nInjected: y"))])
    expect([pb.DeliverRequest(envelope=env.envelope(["x" * 255 + "@dl.test"]))])
    raw = grpc.insecure_channel(env.mc.router_addr(0))
    with pytest.raises(grpc.RpcError) as e:
        raw.stream_unary("/mail.router.v1.Router/Deliver")(iter([b"\xff\x01garbage"]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    raw.close()
    # all recipients invalid: answered without storing anything
    r = env.deliver(["no-at-sign", "a@@b"], b"Subject: x\r\n\r\nbody\r\n")
    assert [x.code for x in r.results] == [INVALID, INVALID]
    assert env.one("SELECT count(*) FROM blobs WHERE id = %s" % q(sid(b"Subject: x\r\n\r\nbody\r\n"))) == "0"
    assert env.deliver(["erin@dl.test"], message(n=40)).results[0].code == OK


def test_lost_commit_answer_retried_with_same_token(env):
    """The connection carrying the commit breaks while the statement runs (it waits
    on a row lock held by another session, then its backend is terminated): the
    router retries once with the same token and answers OK; exactly one copy."""
    from pgcluster import PG_BIN
    aid = env.ids["dave@dl.test"]
    pg = env.mc.pg
    holder = subprocess.Popen(
        [os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-h", pg.sock_dir(), "-p", str(pg.port_of()),
         "-U", "postgres", "-d", env.mc.db, "-c",
         "BEGIN; SELECT 1 FROM accounts WHERE id = %d FOR UPDATE; SELECT pg_sleep(2.5); COMMIT;" % aid],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)
        body = message(n=60)
        fut = env.stub.Deliver.future(iter([pb.DeliverRequest(envelope=env.envelope(["dave@dl.test"]), data=body)]),
                                      timeout=30)
        killed = "0"
        end = time.monotonic() + 5
        while killed == "0" and time.monotonic() < end:
            killed = env.one("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE (query LIKE '%mail_deliver_message(%' OR query LIKE '%mail_deliver_batch(%') "
                             "AND wait_event_type = 'Lock' "
                             "AND pid <> pg_backend_pid()")
            time.sleep(0.05)
        assert killed == "1"
        r = fut.result(timeout=30)
        assert r.results[0].code == OK
    finally:
        holder.wait(10)
    assert env.one("SELECT count(*) FROM messages WHERE blob_id = %s" % q(sid(body))) == "1"
    assert 'msg="delivery commit retried"' in env.mc.router_log(0)


def test_blob_under_gc_claim(env):
    """A message whose blob (same content, unreferenced) a GC has just claimed for
    deletion: mail_blob_prepare gets 40001 and is tried again until the claim is
    gone (here: dropped after 0.4 s), then the body is stored afresh. A claim that
    stays makes the Deliver fail UNAVAILABLE, never INTERNAL or OK."""
    body = message(n=80)
    bid = sid(body)
    env.mc.psql("SELECT mail_blob_prepare(%s, %d); UPDATE blobs SET gc_claimed_at = clock_timestamp() "
                "WHERE id = %s" % (q(bid), len(stored(body)), q(bid)))
    t = threading.Timer(0.4, lambda: env.mc.psql("UPDATE blobs SET gc_claimed_at = NULL WHERE id = %s" % q(bid)))
    t.start()
    try:
        assert env.deliver(["erin@dl.test"], body).results[0].code == OK
    finally:
        t.join()
    assert env.one("SELECT refcount FROM blobs WHERE id = %s" % q(bid)) == "1"
    assert len(env.holders(bid)) == 2

    stuck = message(n=81)
    stuck_id = sid(stuck)
    env.mc.psql("SELECT mail_blob_prepare(%s, %d); UPDATE blobs SET gc_claimed_at = clock_timestamp() "
                "WHERE id = %s" % (q(stuck_id), len(stored(stuck)), q(stuck_id)))
    with pytest.raises(grpc.RpcError) as e:
        env.deliver(["erin@dl.test"], stuck)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert env.one("SELECT count(*) FROM messages WHERE blob_id = %s" % q(stuck_id)) == "0"
    env.mc.psql("UPDATE blobs SET gc_claimed_at = NULL WHERE id = %s" % q(stuck_id))


def test_cancel_at_every_stage(env):
    """Clients that go away while the body streams in, while it is parsed, stored
    or committed: the router frees everything (the cluster's exit checks ASan), stays
    up, and whatever got stored is whole."""
    big = message(n=70, extra=b"w" * 600000)
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08):
        fut = env.stub.Deliver.future(iter([pb.DeliverRequest(envelope=env.envelope(["erin@dl.test"]))] +
                                           [pb.DeliverRequest(data=big[i:i + CHUNK])
                                            for i in range(0, len(big), CHUNK)]), timeout=30)
        time.sleep(delay)
        fut.cancel()
    hold = threading.Event()

    def gen():
        yield pb.DeliverRequest(envelope=env.envelope(["erin@dl.test"]))
        yield pb.DeliverRequest(data=b"Subject: cancelled\r\n\r\n")
        hold.wait(10)
    fut = env.stub.Deliver.future(gen(), timeout=30)
    time.sleep(0.3)
    fut.cancel()
    hold.set()
    time.sleep(0.5)
    assert env.deliver(["erin@dl.test"], message(n=71)).results[0].code == OK
    sizes = env.rows("SELECT DISTINCT size FROM messages WHERE blob_id = %s" % q(sid(big)))
    assert sizes in ([], [[str(len(stored(big)))]])
    assert env.one("SELECT count(*) FROM messages WHERE subject = 'cancelled'") == "0"


# ---------------------------------------------------------------- Append

def test_append(env):
    """IMAP APPEND with flags, keywords and an internal date: APPENDUID data, the row
    as asked; a missing mailbox, a bad flag, an over-quota declared size (answered
    before the body comes) and a size mismatch are refused."""
    app = env.ids["app@dl.test"]
    body = message(n=50)
    r = env.append(app, "Archive", body, flags=["\\Seen", "\\Flagged", "$Label1", "\\Recent", "$Label1", "Work"],
                   date=1700000000)
    mb = env.inbox("app@dl.test", "Archive")
    uidv = int(env.one("SELECT uidvalidity FROM mailboxes WHERE id = %d" % mb))
    assert (r.code, r.uidvalidity, r.uid) == (OK, uidv, 1)
    assert env.rows("SELECT uid, flags, keywords, extract(epoch FROM internal_date)::bigint, size, "
                    "subject IS NOT NULL, length(envelope) > 0 FROM messages WHERE mailbox_id = %d" % mb) == \
        [["1", "5", "{$Label1,Work}", "1700000000", str(len(body)), "t", "t"]]
    assert env.append(app, "Archive", message(n=51)).uid == 2
    r = env.append(app, "inbox", message(n=52))      # INBOX is case-insensitive
    assert (r.code, r.uid) == (OK, 1) and r.uidvalidity == int(env.one(
        "SELECT uidvalidity FROM mailboxes WHERE id = %d" % env.inbox("app@dl.test")))
    assert abs(int(env.one("SELECT extract(epoch FROM now() - internal_date)::bigint FROM messages "
                           "WHERE mailbox_id = %d" % env.inbox("app@dl.test")))) < 60
    assert env.append(app, "Nope", message(n=53)).code == pb.CODE_NO_SUCH_MAILBOX
    assert env.append(app, "a//b", message(n=53)).code == pb.CODE_NO_SUCH_MAILBOX
    assert env.append(app, "Archive", message(n=53), flags=["\\Bogus"]).code == INVALID
    assert env.append(app, "Archive", message(n=53), flags=["bad keyword"]).code == INVALID
    assert env.one("SELECT count(*) FROM messages WHERE mailbox_id = %d" % mb) == "2"

    # over quota by the declared size: the answer comes while the body is still held back
    hold = threading.Event()

    def gen():
        yield pb.AppendRequest(session=pb.Session(account_id=env.ids["appfull@dl.test"]), mailbox="INBOX",
                               size=5000)
        hold.wait(20)
        yield pb.AppendRequest(data=b"x" * 5000)
    t0 = time.monotonic()
    fut = env.stub.Append.future(gen(), timeout=30)
    try:
        assert fut.result(timeout=10).code == OVER_QUOTA
        assert time.monotonic() - t0 < 10 and not hold.is_set()
    finally:
        hold.set()
    with pytest.raises(grpc.RpcError) as e:
        env.append(app, "Archive", b"0123456789" * 2, size=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        env.append(app, "Archive", b"0123456789", size=20)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        env.append(0, "INBOX", b"x")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert env.one("SELECT count(*) FROM messages WHERE mailbox_id = %d" % mb) == "2"


def test_metrics(env):
    with urllib.request.urlopen(env.mc.metrics_url(0) + "/metrics", timeout=5) as m:
        text = m.read().decode()
    vals = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert vals['deliver_total{result="ok"}'] >= 25
    assert vals['deliver_total{result="too_big"}'] >= 1
    assert vals['append_total{result="ok"}'] >= 3
    assert vals["deliver_bytes_total"] > 900 * 1024
    assert vals['resolve_recipient_total{result="relay_denied"}'] >= 1
    assert vals["deliver_seconds_count"] >= 25
    # where the time went: every delivery answered OK went through each stage
    # once, and the stages split its time (failed calls count up to where they
    # failed, in the stages as in deliver_seconds)
    stages = ("receive", "parse", "prepare", "put", "commit")
    for st in stages:
        assert vals['deliver_stage_seconds_count{stage="%s"}' % st] >= vals['deliver_total{result="ok"}'], st
    assert vals['deliver_stage_seconds_count{stage="commit"}'] == vals['deliver_total{result="ok"}']
    assert 0 < sum(vals['deliver_stage_seconds_sum{stage="%s"}' % st] for st in stages) \
        <= vals["deliver_seconds_sum"] * 1.0001


# ---------------------------------------------------------------- failures

def test_store_down_and_router_killed():
    """R=W=2 on two store nodes. With one node down a Deliver fails UNAVAILABLE and
    nothing is committed in PostgreSQL (no message, no token, no referenced blob).
    A router killed (-9) in the middle of a stream leaves no message behind; after a
    restart delivery works again. A router told to stop (SIGTERM) while a stream is
    half sent lets it finish before it exits."""
    with MailCluster(stores=2, routers=1) as mc:
        e = Env(mc)
        e.account("k@kill.test")
        assert e.deliver(["k@kill.test"], message(n=1)).results[0].code == OK

        mc.kill_store(1)
        body = message(n=2)
        with pytest.raises(grpc.RpcError) as ex:
            e.deliver(["k@kill.test"], body, queue_id="down-000001")
        assert ex.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.one("SELECT count(*) FROM messages") == "1"
        assert e.one("SELECT count(*) FROM delivery_tokens WHERE token LIKE '%down-000001'") == "0"
        assert e.one("SELECT count(*) FROM blobs WHERE id = %s AND refcount > 0" % q(sid(body))) == "0"
        mc.start_store(1)
        end = time.monotonic() + 15
        while True:
            try:
                assert e.deliver(["k@kill.test"], body, queue_id="down-000001").results[0].code == OK
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < end
                time.sleep(0.3)
        assert e.one("SELECT count(*) FROM messages") == "2"

        # kill -9 the router while a stream is half sent
        hold = threading.Event()

        def gen():
            yield pb.DeliverRequest(envelope=e.envelope(["k@kill.test"]))
            yield pb.DeliverRequest(data=b"Subject: half\r\n\r\n" + b"a" * 1000)
            hold.wait(30)
            yield pb.DeliverRequest(data=b"never sent")
        fut = e.stub.Deliver.future(gen(), timeout=60)
        time.sleep(0.5)
        mc.kill_router(0)
        try:
            with pytest.raises(grpc.RpcError) as ex:
                fut.result(timeout=20)
            assert ex.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            hold.set()
        assert e.one("SELECT count(*) FROM messages") == "2"
        assert e.one("SELECT count(*) FROM messages WHERE subject = 'half'") == "0"
        mc.start_router(0)
        stub = mc.router_stub(0)
        assert e.deliver(["k@kill.test"], message(n=3), stub=stub).results[0].code == OK
        assert e.rows("SELECT uid FROM messages ORDER BY uid") == [["1"], ["2"], ["3"]]

        # SIGTERM while a stream is half sent: the router drains, the delivery
        # finishes and is acknowledged, the router exits cleanly (ASan included)
        hold = threading.Event()
        last = message(n=4)

        def gen2():
            yield pb.DeliverRequest(envelope=e.envelope(["k@kill.test"]))
            yield pb.DeliverRequest(data=last[:100])
            hold.wait(30)
            yield pb.DeliverRequest(data=last[100:])
        fut = stub.Deliver.future(gen2(), timeout=30)
        time.sleep(0.3)
        code = []
        stopper = threading.Thread(target=lambda: code.append(mc.stop_router(0)))
        stopper.start()
        time.sleep(0.5)
        hold.set()
        assert fut.result(timeout=20).results[0].code == OK
        stopper.join(30)
        assert code == [0]
        assert e.one("SELECT count(*) FROM messages WHERE blob_id = %s" % q(sid(last))) == "1"


# ---------------------------------------------------------------- group commit

def metric(mc, name):
    text = urllib.request.urlopen(mc.metrics_url(0) + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric %s" % name)


def hold_account(mc, e, address, seconds):
    """another session holding the account's row for a while (psql, in the background)"""
    from pgcluster import PG_BIN
    pg = mc.pg
    return subprocess.Popen(
        [os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-h", pg.sock_dir(), "-p", str(pg.port_of()),
         "-U", "postgres", "-d", mc.db, "-c",
         "BEGIN; SELECT 1 FROM accounts WHERE id = %d FOR UPDATE; SELECT pg_sleep(%f); COMMIT;"
         % (e.ids[address], seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_batch_blocked(e):
    """until a delivery batch waits on a row lock"""
    end = time.monotonic() + 10
    while e.one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%mail_deliver_batch(%' "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()") == "0":
        assert time.monotonic() < end, "the first delivery never waited on the held account"
        time.sleep(0.05)


def uids_by_account(e):
    """[address, uid] of every message, in account order"""
    return e.rows("SELECT a.address, m.uid FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id "
                  "JOIN accounts a ON a.id = mb.account_id ORDER BY a.id")


def batch_delta(mc, b0, items0):
    """group commits and items committed since the counters were b0 and items0"""
    return metric(mc, "deliver_batches_total") - b0, metric(mc, "deliver_batch_items_total") - items0


def deliver_future(e, rcpt, body, timeout=60, stub=None):
    """one Deliver call started, not waited for"""
    return (stub or e.stub).Deliver.future(iter([pb.DeliverRequest(envelope=e.envelope([rcpt])),
                                                 pb.DeliverRequest(data=body)]), timeout=timeout)


def test_group_commit():
    """Deliveries that arrive while a batch is being committed are committed
    together in one transaction (mail_deliver_batch) with each its own result;
    a batch the database refuses is split and committed item by item, so only
    the bad item fails; calls cancelled while queued or while their batch runs
    leave the others alone (and leak nothing: ASan checks the router's exit).
    One worker and one batch in flight make the queueing deterministic: a
    delivery to an account whose row another session holds keeps the one slot
    busy while the rest arrive."""
    with MailCluster(stores=2, routers=1, workers=1, router_args=["--deliver-batch-inflight=1"]) as mc:
        e = Env(mc)
        for i in range(20):
            e.account("g%d@gc.test" % i)

        # 1. nineteen deliveries queue behind one that waits on a held account row
        b0, items0 = metric(mc, "deliver_batches_total"), metric(mc, "deliver_batch_items_total")
        holder = hold_account(mc, e, "g0@gc.test", 1.5)
        try:
            time.sleep(0.3)
            first = deliver_future(e, "g0@gc.test", message(n=1000))
            wait_batch_blocked(e)
            rest = [deliver_future(e, "g%d@gc.test" % i, message(n=1000 + i)) for i in range(1, 20)]
            results = [f.result(timeout=60) for f in [first] + rest]
        finally:
            holder.wait(10)
        assert all(r.results[0].code == OK for r in results)
        assert uids_by_account(e) == [["g%d@gc.test" % i, "1"] for i in range(20)]
        batches, items = batch_delta(mc, b0, items0)
        assert items == 20 and batches <= 4, (batches, items)   # the 19 went together (or nearly)

        # 2. a batch holding one item the database refuses: split, only that one fails
        mc.psql("CREATE FUNCTION gc_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF EXISTS (SELECT 1 FROM new_rows WHERE subject LIKE '%boom%') THEN "
                "RAISE EXCEPTION 'boom refused'; END IF; RETURN NULL; END $$; "
                "CREATE TRIGGER gc_boom AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows "
                "FOR EACH STATEMENT EXECUTE FUNCTION gc_boom();")
        splits0 = metric(mc, "deliver_batch_splits_total")
        holder = hold_account(mc, e, "g0@gc.test", 1.0)
        try:
            time.sleep(0.3)
            first = deliver_future(e, "g0@gc.test", message(n=2000))
            wait_batch_blocked(e)
            good = [deliver_future(e, "g%d@gc.test" % i, message(n=2000 + i)) for i in range(1, 6)]
            bad = deliver_future(e, "g6@gc.test", message(subject="boom", n=2006))
            assert first.result(timeout=60).results[0].code == OK
            assert all(f.result(timeout=60).results[0].code == OK for f in good)
            with pytest.raises(grpc.RpcError) as ex:
                bad.result(timeout=60)
            assert ex.value.code() == grpc.StatusCode.INTERNAL
        finally:
            holder.wait(10)
        assert metric(mc, "deliver_batch_splits_total") == splits0 + 1
        assert 'msg="delivery batch split"' in mc.router_log(0)
        assert e.one("SELECT count(*) FROM messages WHERE subject LIKE '%boom%'") == "0"
        assert e.one("SELECT count(*) FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id "
                     "JOIN accounts a ON a.id = mb.account_id WHERE a.address = 'g6@gc.test'") == "1"
        mc.psql("DROP TRIGGER gc_boom ON messages")

        # 3. calls that give up while queued, and one whose batch is blocked: the
        # others of that batch still get their answers
        holder = hold_account(mc, e, "g0@gc.test", 1.5)
        try:
            time.sleep(0.3)
            first = deliver_future(e, "g0@gc.test", message(n=3000))
            wait_batch_blocked(e)
            quitters = [deliver_future(e, "g%d@gc.test" % i, message(n=3000 + i), timeout=0.4) for i in range(7, 10)]
            for f in quitters:
                with pytest.raises(grpc.RpcError) as ex:
                    f.result(timeout=30)
                assert ex.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert first.result(timeout=60).results[0].code == OK
        finally:
            holder.wait(10)
        for i in (7, 8, 9):   # they left before their batch was sent: nothing of them committed
            assert e.one("SELECT count(*) FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id "
                         "JOIN accounts a ON a.id = mb.account_id WHERE a.address = 'g%d@gc.test'" % i) == "1"
        # a batch [g11, g13, g12] sent when g0 is released, then blocked on the held
        # g11 row; g13's caller gives up meanwhile; g11 and g12 are answered
        holders = [hold_account(mc, e, "g0@gc.test", 1.0), hold_account(mc, e, "g11@gc.test", 2.5)]
        try:
            time.sleep(0.3)
            first = deliver_future(e, "g0@gc.test", message(n=4000))
            wait_batch_blocked(e)
            batch = [deliver_future(e, "g11@gc.test", message(n=4011)), deliver_future(e, "g13@gc.test", message(n=4013), timeout=1.5),
                     deliver_future(e, "g12@gc.test", message(n=4012))]
            assert first.result(timeout=60).results[0].code == OK
            with pytest.raises(grpc.RpcError) as ex:
                batch[1].result(timeout=60)
            assert ex.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert batch[0].result(timeout=60).results[0].code == OK
            assert batch[2].result(timeout=60).results[0].code == OK
        finally:
            for h in holders:
                h.wait(10)
        assert e.deliver(["g14@gc.test"], message(n=5014)).results[0].code == OK

        # 4. one batch mixing the set-based way (which updates the counters itself)
        # with items committed one by one (an account two items share, an alias,
        # the same bytes twice): every counter still matches the rows
        e.alias("team@gc.test", ["g19@gc.test", "g15@gc.test"])
        holder = hold_account(mc, e, "g0@gc.test", 1.5)
        same = message(n=6000)
        try:
            time.sleep(0.3)
            first = deliver_future(e, "g0@gc.test", message(n=6001))
            wait_batch_blocked(e)
            mixed = [deliver_future(e, "g15@gc.test", message(n=6015)), deliver_future(e, "g18@gc.test", message(n=6018)),
                     deliver_future(e, "g18@gc.test", message(n=6019)), deliver_future(e, "team@gc.test", message(n=6020)),
                     deliver_future(e, "g16@gc.test", same), deliver_future(e, "g17@gc.test", same),
                     e.stub.Deliver.future(iter([pb.DeliverRequest(envelope=e.envelope(["g2@gc.test", "g3@gc.test"])),
                                                 pb.DeliverRequest(data=message(n=6023))]), timeout=60)]
            assert first.result(timeout=60).results[0].code == OK
            for f in mixed:
                assert all(r.code == OK for r in f.result(timeout=60).results)
        finally:
            holder.wait(10)
        assert e.one("SELECT refcount FROM blobs WHERE id = '%s'" % sid(same)) == "2"
        assert_counters(e)


def test_group_commit_slots_shared_by_loops():
    """The commit slots belong to the router, not to each worker loop: with
    deliver_batch_inflight=1 and four workers, while one batch waits on a held
    account row, deliveries that arrive on the other loops (their own
    connections; SO_REUSEPORT spreads them) do not start batches of their own.
    They wait in line and are committed once the slot is handed on, each loop's
    queue as one batch."""
    import router_pb2_grpc
    with MailCluster(stores=2, routers=1, workers=4, router_args=["--deliver-batch-inflight=1"]) as mc:
        e = Env(mc)
        for i in range(12):
            e.account("s%d@sl.test" % i)
        holder = hold_account(mc, e, "s0@sl.test", 2.5)
        # one connection per delivery: a channel of its own, not the shared subchannel
        channels = [grpc.insecure_channel(mc.router_addr(0), options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(11)]
        try:
            time.sleep(0.3)
            b0, items0 = metric(mc, "deliver_batches_total"), metric(mc, "deliver_batch_items_total")
            first = deliver_future(e, "s0@sl.test", message(n=7000))
            wait_batch_blocked(e)
            rest = [deliver_future(e, "s%d@sl.test" % i, message(n=7000 + i), stub=router_pb2_grpc.RouterStub(ch))
                    for i, ch in zip(range(1, 12), channels)]
            time.sleep(1.0)
            # the slot is still held: nothing else was committed, no other batch runs
            assert not any(f.done() for f in rest), [f.result() for f in rest if f.done()]
            assert e.one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%mail_deliver_batch(%' "
                         "AND state = 'active' AND pid <> pg_backend_pid()") == "1"
            results = [f.result(timeout=60) for f in [first] + rest]
        finally:
            holder.wait(10)
            for ch in channels:
                ch.close()
        assert all(r.results[0].code == OK for r in results)
        assert uids_by_account(e) == [["s%d@sl.test" % i, "1"] for i in range(12)]
        batches, items = batch_delta(mc, b0, items0)
        # the first alone, then at most one batch per loop for the eleven
        assert items == 12 and batches <= 5, (batches, items)
        assert_counters(e)


def test_batch_functions_of_both_releases(env):
    """mail_deliver_batch(items, texts) takes the search texts beside the items
    (NULL: the item's own body_text); mail_deliver_batch(items), which routers of
    the previous release call with the texts inside the items, still works during
    a rolling upgrade. Both keep the counters."""
    e = env
    for a in ("old@ob.test", "new1@ob.test", "new2@ob.test"):
        e.account(a)

    def item(rcpt, n, text=None):
        it = {"rcpts": [rcpt], "notify": [""], "orcpt": [""], "mail_from": "a@remote.example",
              "blob_id": sha(b"batch-%d" % n), "size": 100 + n, "meta": {"subject": "batch %d" % n},
              "nodes": ["store1", "store2"], "token": "batch-fn-%d" % n}
        if text is not None:
            it["body_text"] = text
        return it

    def call(sql):
        return sorted((r[0], r[1]) for r in e.rows(sql))

    old = [item("old@ob.test", 1, "Hello OLD Router")]
    assert call("SELECT item, status FROM mail_deliver_batch(%s::jsonb)" % q(json.dumps(old))) == [("1", "ok")]
    new = [item("new1@ob.test", 2), item("new2@ob.test", 3, "From The Item")]
    assert call("SELECT item, status FROM mail_deliver_batch(%s::jsonb, ARRAY['Beside The ITEMS', NULL])"
                % q(json.dumps(new))) == [("1", "ok"), ("2", "ok")]
    texts = dict(e.rows("SELECT blob_id, body FROM message_text WHERE blob_id IN ('%s', '%s', '%s')"
                        % (sha(b"batch-1"), sha(b"batch-2"), sha(b"batch-3"))))
    assert texts == {sha(b"batch-1"): "hello old router", sha(b"batch-2"): "beside the items",
                     sha(b"batch-3"): "from the item"}
    assert_counters(e)



def test_ascii_texts_lowered_bytewise(env):
    """An item flagged "text_ascii" (the router's mark of an all-ASCII search
    text) is lower-cased byte by byte, in the "C" collation, since the database's
    lower() maps ASCII the same way here; an unflagged text, or the text inside
    an item, goes through lower() as before. Through Deliver, an ASCII body and a
    non-ASCII one are both stored lower-cased as lower() would store them."""
    e = env
    for a in ("asc1@ob.test", "asc2@ob.test", "asc3@ob.test"):
        e.account(a)
    # the test database's ctype (C.UTF-8) folds the ASCII letters as "C" does
    assert e.one("SELECT lower('ABCDEFGHIJKLMNOPQRSTUVWXYZ') = 'abcdefghijklmnopqrstuvwxyz'") == "t"

    def item(rcpt, n, flag):
        it = {"rcpts": [rcpt], "notify": [""], "orcpt": [""], "mail_from": "a@remote.example",
              "blob_id": sha(b"ascii-%d" % n), "size": 100 + n, "meta": {"subject": "ascii %d" % n},
              "nodes": ["store1", "store2"], "token": "ascii-fn-%d" % n}
        if flag:
            it["text_ascii"] = True
        return it

    # the flag is what picks the byte loop: a (lying) flagged text keeps its
    # non-ASCII capitals, the same text unflagged has them folded
    items = [item("asc1@ob.test", 1, True), item("asc2@ob.test", 2, False), item("asc3@ob.test", 3, True)]
    rows = e.rows("SELECT item, status FROM mail_deliver_batch(%s::jsonb, ARRAY['Plain ASCII Text, OK?', "
                  "'\u00c4RGER Mit Umlaut', '\u00c4RGER Flagged Anyway'])" % q(json.dumps(items)))
    assert sorted((r[0], r[1]) for r in rows) == [("1", "ok"), ("2", "ok"), ("3", "ok")]
    texts = dict(e.rows("SELECT blob_id, body FROM message_text WHERE blob_id IN ('%s', '%s', '%s')"
                        % (sha(b"ascii-1"), sha(b"ascii-2"), sha(b"ascii-3"))))
    assert texts == {sha(b"ascii-1"): "plain ascii text, ok?", sha(b"ascii-2"): "\u00e4rger mit umlaut",
                     sha(b"ascii-3"): "\u00c4rger flagged anyway"}
    assert_counters(e)

    # through the router: every printable ASCII character, and a UTF-8 body
    printable = bytes(range(32, 127))
    ascii_body = (b"From: a@remote.example\r\nSubject: ascii\r\nMIME-Version: 1.0\r\n"
                  b"Content-Type: text/plain; charset=us-ascii\r\n\r\nMiXeD CaSe " + printable + b"\r\n")
    utf8_body = ("From: a@remote.example\r\nSubject: utf8\r\nMIME-Version: 1.0\r\n"
                 "Content-Type: text/plain; charset=utf-8\r\n\r\nGR\u00dcSSE aus K\u00d6LN, \u03a3\u039f\u03a6\u0399\u0391\r\n"
                 ).encode("utf-8")
    for body in (ascii_body, utf8_body):
        assert e.deliver(["asc1@ob.test"], body).results[0].code == OK
    def text_of(body):  # hex: the text has '|' and line breaks, psql's separators
        return bytes.fromhex(e.one("SELECT encode(convert_to(body, 'UTF8'), 'hex') FROM message_text "
                                   "WHERE blob_id = %s" % q(sid(body)))).decode("utf-8")
    want = ("MiXeD CaSe " + printable.decode() + "\r\n").translate(
        {c: c + 32 for c in range(ord("A"), ord("Z") + 1)})
    assert text_of(ascii_body) == want
    assert text_of(utf8_body) == "gr\u00fcsse aus k\u00f6ln, \u03c3\u03bf\u03c6\u03b9\u03b1\r\n"


def assert_counters(e):
    """The counters the delivery path keeps (mailbox counts and bytes, account
    usage, blob refcounts) equal what the rows say."""
    assert e.rows("SELECT mb.id FROM mailboxes mb LEFT JOIN (SELECT mailbox_id, count(*) AS n, "
                  "count(*) FILTER (WHERE flags & 1 = 0) AS unseen, count(*) FILTER (WHERE flags & 8 <> 0) AS del, "
                  "sum(size) AS bytes FROM messages GROUP BY mailbox_id) m ON m.mailbox_id = mb.id "
                  "WHERE (mb.message_count, mb.unseen_count, mb.deleted_count, mb.total_bytes) <> "
                  "(coalesce(m.n, 0), coalesce(m.unseen, 0), coalesce(m.del, 0), coalesce(m.bytes, 0))") == []
    assert e.rows("SELECT a.id FROM accounts a LEFT JOIN (SELECT mb.account_id, count(*) AS n, sum(m.size) AS bytes "
                  "FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id GROUP BY mb.account_id) u "
                  "ON u.account_id = a.id WHERE (a.used_messages, a.used_bytes) <> "
                  "(coalesce(u.n, 0), coalesce(u.bytes, 0))") == []
    assert e.rows("SELECT b.id FROM blobs b LEFT JOIN (SELECT blob_id, count(*) AS n FROM "
                  "(SELECT blob_id FROM messages UNION ALL SELECT blob_id FROM outbound_queue) r GROUP BY blob_id) c "
                  "ON c.blob_id = b.id WHERE b.refcount <> coalesce(c.n, 0) "
                  "OR (b.refcount > 0) = (b.unreferenced_since IS NOT NULL)") == []


def test_html_text_for_search(env):
    """The search text of an HTML part: inline tags join the letters they split,
    block tags separate words, comments, <style> and <script> leave nothing,
    entities are decoded; the text is stored lower-cased."""
    html = (b"<html><head><style>p { color: red }</style></head><body>"
            b"<p>Hel<b>lo</b> Wor<SPAN class=x>ld</SPAN></p><p>next</p>paragraph<br>line"
            b"<!-- a secret comment --><script>var hidden = 1;</script>Tom &amp; Jerry"
            b"<div>unterminated <b tag")
    body = (b"From: a@remote.example\r\nSubject: html\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html + b"\r\n")
    assert env.deliver(["erin@dl.test"], body, queue_id="html-000001").results[0].code == OK
    text = env.one("SELECT body FROM message_text WHERE blob_id = %s" % q(sid(body)))
    assert "hello world" in text and "next paragraph" in text and "tom & jerry" in text, text
    for gone in ("color", "secret", "hidden", "<", "nextparagraph", "paragraphline"):
        assert gone not in text, (gone, text)
    assert "unterminated" in text


def test_prepare_batch_split():
    """The blob prepares of deliveries that arrive together go as one statement;
    one blob of such a batch under a GC claim (40001) makes the router prepare
    the blobs one by one: the others go on at once, the claimed one is retried
    until the claim is gone, and every delivery is acknowledged."""
    from pgcluster import PG_BIN
    with MailCluster(stores=2, routers=1, workers=1, router_args=["--deliver-batch-inflight=1"]) as mc:
        e = Env(mc)
        for i in range(4):
            e.account("p%d@pb.test" % i)
        pg = mc.pg
        bx, by = message(n=7001), message(n=7002)
        x, y = sid(bx), sid(by)
        mc.psql("SELECT mail_blob_prepare(%s, %d), mail_blob_prepare(%s, %d); "
                "UPDATE blobs SET gc_claimed_at = clock_timestamp() WHERE id = %s"
                % (q(x), len(stored(bx)), q(y), len(stored(by)), q(y)))
        holder = subprocess.Popen(
            [os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-h", pg.sock_dir(), "-p", str(pg.port_of()),
             "-U", "postgres", "-d", mc.db, "-c",
             "BEGIN; SELECT 1 FROM blobs WHERE id = %s FOR UPDATE; SELECT pg_sleep(1.0); COMMIT;" % q(x)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        unclaim = threading.Timer(1.3, lambda: mc.psql("UPDATE blobs SET gc_claimed_at = NULL WHERE id = %s" % q(y)))
        unclaim.start()
        try:
            time.sleep(0.3)

            def send(rcpt, body):
                return e.stub.Deliver.future(iter([pb.DeliverRequest(envelope=e.envelope([rcpt])),
                                                   pb.DeliverRequest(data=body)]), timeout=60)
            first = send("p0@pb.test", bx)   # its prepare waits on the held row
            end = time.monotonic() + 10
            while e.one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%mail_blob_prepare%' "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()") == "0":
                assert time.monotonic() < end
                time.sleep(0.05)
            rest = [send("p1@pb.test", message(n=7003)), send("p2@pb.test", by), send("p3@pb.test", message(n=7004))]
            assert all(f.result(timeout=60).results[0].code == OK for f in [first] + rest)
        finally:
            holder.wait(10)
            unclaim.join()
        assert 'msg="blob prepare batch split"' in mc.router_log(0)
        assert e.one("SELECT refcount FROM blobs WHERE id = %s" % q(y)) == "1"
        assert len(e.holders(y)) == 2
