"""Message operations of mail-router (rt_message.c, rt_fetch.c, rt_search.c):
FetchMeta, FetchBody, Store, Copy/Move, Expunge and Search, driven with python
grpcio against a real cluster (PostgreSQL, two store nodes, one router).

Messages are made here, not through the Deliver RPC: the helper computes what
a delivery stores (the part map in mime_sections_export's format, search
fields, a header block) and calls the schema's mail_deliver, and puts the body
on both store nodes with python BlobStore.Put calls. Expected bytes of body
sections are written out literally or sliced by python from the message, so
the tests do not trust the part map they fed in.

Run with /usr/bin/python3 -m pytest; MAIL_BUILD_DIR names the build."""
import base64
import calendar
import email
import email.header
import email.utils
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import gen_python  # noqa: E402
from mailcluster import MailCluster  # noqa: E402
from pgcluster import PG_BIN  # noqa: E402

import grpc  # noqa: E402

gen_python("router.proto")
gen_python("store.proto")
import router_pb2 as pb  # noqa: E402
import store_pb2  # noqa: E402

SEEN, ANSWERED, FLAGGED, DELETED, DRAFT = 1, 2, 4, 8, 16
STAR = 0xFFFFFFFF
OK = pb.CODE_OK


# ---------------------------------------------------------------- helpers

def lit(v):
    """An SQL literal."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def bytea(b):
    return "'\\x%s'::bytea" % b.hex()


def uidset(*spec):
    """uidset(1, (3, 5), (7, STAR)) -> UidSet"""
    s = pb.UidSet()
    for x in spec:
        a, b = (x, x) if isinstance(x, int) else x
        s.ranges.add(first=a, last=b)
    return s


def uids_of(s):
    """A UidSet as a list of uids."""
    out = []
    for r in s.ranges:
        out.extend(range(r.first, r.last + 1))
    return out


def day(y, m, d):
    return calendar.timegm((y, m, d, 0, 0, 0))


def _header_end(raw, start, end):
    i = start
    while i < end:
        j = raw.find(b"\n", i, end)
        if j < 0:
            return end
        if raw[i:j + 1] in (b"\r\n", b"\n"):
            return j + 1
        i = j + 1
    return end


def _ctype(header):
    text = re.sub(rb"\r?\n[ \t]", b" ", header)
    m = re.search(rb"(?im)^content-type[ \t]*:[ \t]*([^;\r\n]+)(.*)$", text)
    if not m:
        return b"text/plain", None
    b = re.search(rb'(?i)boundary="?([^";\r\n]+)"?', m.group(2))
    return m.group(1).strip().lower(), (b.group(1) if b else None)


def _parse(raw, start, end):
    he = _header_end(raw, start, end)
    node = {"h": (start, he - start), "b": (he, end - he), "children": [], "kind": "leaf"}
    ct, boundary = _ctype(raw[start:he])
    if ct.startswith(b"multipart/") and boundary:
        node["kind"] = "multipart"
        delim, pos, parts = b"--" + boundary, he, []
        while pos < end:
            j = raw.find(b"\n", pos, end)
            line_end = end if j < 0 else j + 1
            line = raw[pos:line_end].rstrip(b"\r\n")
            if line.startswith(delim):
                cut = pos
                if cut > he and raw[cut - 1:cut] == b"\n":
                    cut -= 2 if raw[cut - 2:cut] == b"\r\n" else 1
                if parts:
                    parts[-1][1] = cut
                if line[len(delim):len(delim) + 2] == b"--":
                    break
                parts.append([line_end, end])
            pos = line_end
        node["children"] = [_parse(raw, s, e) for s, e in parts]
    elif ct == b"message/rfc822":
        node["kind"] = "message"
        node["children"] = [_parse(raw, he, end)]
    return node


def part_map(raw):
    """The section table a delivery stores (router/mime.h mime_sections_export:
    "[SECTION] OFFSET SIZE" lines), for well-formed messages."""
    out = []

    def line(sect, suffix, rng):
        out.append("[%s%s%s] %d %d\n" % (sect, "." if sect and suffix else "", suffix, rng[0], rng[1]))

    root = _parse(raw, 0, len(raw))
    line("", "", (0, len(raw)))
    line("", "HEADER", root["h"])
    line("", "TEXT", root["b"])

    def walk(node, sect, base):
        if sect is not None:
            line(sect, "", node["b"])
            line(sect, "MIME", node["h"])
            if node["kind"] == "message":
                line(sect, "HEADER", node["children"][0]["h"])
                line(sect, "TEXT", node["children"][0]["b"])
        if node["kind"] == "multipart":
            for k, c in enumerate(node["children"], 1):
                s = "%s.%d" % (base, k) if base else str(k)
                walk(c, s, s)
        elif node["kind"] == "message":
            inner = node["children"][0]
            walk(inner, None if inner["kind"] == "multipart" else sect + ".1", sect)

    walk(root, None if root["kind"] == "multipart" else "1", "")
    return "".join(out)


def decoded(v):
    if v is None:
        return None
    return str(email.header.make_header(email.header.decode_header(v)))


def base_subject(s):
    s = s or ""
    while True:
        t = re.sub(r"(?i)^\s*(re|fwd?)\s*:\s*", "", s)
        if t == s:
            return s.strip()
        s = t


class Cluster:
    """The module's cluster and the helpers that provision it."""

    def __init__(self, mc):
        self.mc = mc
        self.stub = mc.router_stub(0)
        self.n = 0

    def sql(self, text):
        """Run SQL through psql's stdin (no argv length limit); rows of strings."""
        pg = self.mc.pg
        argv = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                "-h", pg.sock_dir("primary"), "-p", str(pg.port_of("primary")), "-U", "postgres",
                "-d", self.mc.db, "-f", "-"]
        p = subprocess.run(argv, input=text.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        return [line.split("|") for line in p.stdout.decode().splitlines() if line]

    def one(self, text):
        r = self.sql(text)
        assert len(r) == 1 and len(r[0]) == 1, r
        return r[0][0]

    def account(self, quota_bytes=0):
        """A fresh account: (account id, INBOX id)."""
        self.n += 1
        addr = "user%d@msg.test" % self.n
        self.sql("INSERT INTO domains (name) VALUES ('msg.test') ON CONFLICT DO NOTHING")
        acct = int(self.one(
            "INSERT INTO accounts (domain_id, address, password_hash, quota_bytes) SELECT id, %s, "
            "'{SHA512-CRYPT}x', %d FROM domains WHERE name = 'msg.test' RETURNING id" % (lit(addr), quota_bytes)))
        return acct, self.mailbox(acct, "INBOX")

    def mailbox(self, acct, name, create=False):
        if create:
            self.sql("SELECT * FROM mail_mailbox_create(%d, %s)" % (acct, lit(name)))
        return int(self.one("SELECT id FROM mailboxes WHERE account_id = %d AND name = %s" % (acct, lit(name))))

    def put(self, data):
        """Store the body on both store nodes; returns its blob id."""
        bid = hashlib.sha256(data).hexdigest()
        for i in range(self.mc.n_stores):
            chunks = [data[o:o + 65536] for o in range(0, len(data), 65536)] or [b""]
            reqs = [store_pb2.PutRequest(expected_id=bid if k == 0 else "", data=c) for k, c in enumerate(chunks)]
            r = self.mc.store_stub(i).Put(iter(reqs), timeout=60)
            assert r.id == bid
        return bid

    def deliver_sql(self, acct, raw, mailbox="INBOX", flags=0, keywords=(), idate="2024-01-01T00:00:00Z",
                    envelope=None, body=None, bodystructure=None, body_text=None, blob=None, with_map=True):
        """The mail_deliver call a delivery of raw makes (search fields from the header)."""
        msg = email.message_from_bytes(raw)
        he = _header_end(raw, 0, len(raw))
        subject = decoded(msg.get("Subject"))
        sent = msg.get("Date")
        sent_iso = None
        if sent:
            sent_iso = email.utils.parsedate_to_datetime(sent).isoformat()

        def first_addr(field):
            v = msg.get(field)
            if not v:
                return None
            return email.utils.getaddresses([v])[0][1].lower()

        meta = {
            "envelope": base64.b64encode(envelope if envelope is not None else b"(ENV " + raw[:20] + b")").decode(),
            "body": base64.b64encode(body if body is not None else b"(BODY)").decode(),
            "bodystructure": base64.b64encode(bodystructure if bodystructure is not None else b"(BS)").decode(),
            "subject": subject, "base_subject": base_subject(subject) if subject is not None else None,
            "from": decoded(msg.get("From")), "to": decoded(msg.get("To")), "cc": decoded(msg.get("Cc")),
            "sort_from": first_addr("From"), "sort_to": first_addr("To"), "sort_cc": first_addr("Cc"),
            "sent_date": sent_iso, "message_id": msg.get("Message-ID"),
        }
        if with_map:
            meta["part_map"] = base64.b64encode(part_map(raw).encode()).decode()
        meta = {k: v for k, v in meta.items() if v is not None}
        if body_text is None:
            body_text = raw[he:he + 100000].decode("utf-8", "replace").replace("\0", "")
        blob = blob or hashlib.sha256(raw).hexdigest()
        kw = "ARRAY[%s]::text[]" % ",".join(lit(k) for k in keywords) if keywords else "NULL"
        return ("SELECT status, mailbox_id, uid, modseq FROM mail_deliver(ARRAY[%d]::bigint[], %s, %s, %d, %s, %d, "
                "%s, %s::jsonb, %s, %s, ARRAY['store1','store2'], NULL)"
                % (acct, lit(mailbox), lit(blob), len(raw), lit(idate), flags, kw, lit(json.dumps(meta)),
                   bytea(raw[:he]), lit(body_text)))

    def deliver(self, acct, raw, put=True, **kw):
        """Deliver one message; returns (uid, modseq)."""
        if put:
            self.put(raw)
        r = self.sql(self.deliver_sql(acct, raw, **kw))
        assert r[0][0] == "ok", r
        return int(r[0][2]), int(r[0][3])

    def bulk(self, mb, n, envelope="'(ENV ' || g || ')'", bodystructure="''", body="''", size="100 + g",
             flags="0", keywords="'{}'::text[]", idate="'2024-01-01T00:00:00Z'::timestamptz + g * interval '1 minute'"):
        """n messages in ONE insert (mail_deliver once per message is quadratic in
        one transaction: every call rewrites the same account and mailbox rows);
        the expressions may use g, 1..n."""
        blob = hashlib.sha256(b"bulk %d" % mb).hexdigest()
        self.sql("INSERT INTO blobs (id, size) VALUES (%s, 1) ON CONFLICT DO NOTHING;"
                 "INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size, blob_id,"
                 " envelope, body, bodystructure, header_block)"
                 " SELECT %d, g, 1 + g, %s, %s, %s, %s, %s, convert_to(%s, 'UTF8'), convert_to(%s, 'UTF8'),"
                 " convert_to(%s, 'UTF8'), '\\x5375626a6563743a20780d0a0d0a'::bytea FROM generate_series(1, %d) g;"
                 "UPDATE mailboxes SET uidnext = %d, highestmodseq = %d WHERE id = %d"
                 % (lit(blob), mb, flags, keywords, idate, size, lit(blob), envelope, body, bodystructure, n,
                    n + 1, n + 1, mb))
        return blob

    def hms(self, mb):
        return int(self.one("SELECT highestmodseq FROM mailboxes WHERE id = %d" % mb))


def sess(acct):
    return pb.Session(account_id=acct, client_ip="127.0.0.1", session_id="t")


@pytest.fixture(scope="module")
def cl():
    with MailCluster(stores=2, routers=1) as mc:
        yield Cluster(mc)


def fetch_body(cl, acct, mb, uid, section="", offset=0, length=0):
    """(total, data, missing, chunk sizes) of one FetchBody."""
    chunks = list(cl.stub.FetchBody(pb.FetchBodyRequest(session=sess(acct), mailbox_id=mb, uid=uid,
                                                        section=section, offset=offset, length=length),
                                    timeout=60))
    assert chunks, "no chunk at all"
    return chunks[0].total, b"".join(c.data for c in chunks), chunks[0].missing, [len(c.data) for c in chunks]


def rpc_error(fn):
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    return ei.value.code()


NESTED = (b'From: "Alice Example" <alice@example.test>\r\n'
          b'To: Bob <bob@example.test>\r\n'
          b'Subject: Re: Quarterly report\r\n'
          b'Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n'
          b'MIME-Version: 1.0\r\n'
          b'Content-Type: multipart/mixed; boundary="outer"\r\n'
          b'\r\n'
          b'preamble\r\n'
          b'--outer\r\n'
          b'Content-Type: text/plain; charset=us-ascii\r\n'
          b'\r\n'
          b'Hello body text with unicorns.\r\n'
          b'--outer\r\n'
          b'Content-Type: multipart/alternative; boundary="inner"\r\n'
          b'\r\n'
          b'--inner\r\n'
          b'Content-Type: text/plain\r\n'
          b'\r\n'
          b'plain alternative\r\n'
          b'--inner\r\n'
          b'Content-Type: text/html\r\n'
          b'\r\n'
          b'<p>html alternative</p>\r\n'
          b'--inner--\r\n'
          b'--outer\r\n'
          b'Content-Type: message/rfc822\r\n'
          b'\r\n'
          b'From: nested@example.test\r\n'
          b'Subject: nested message\r\n'
          b'\r\n'
          b'nested body line\r\n'
          b'--outer--\r\n'
          b'epilogue\r\n')


# ---------------------------------------------------------------- FetchMeta

def test_fetch_meta_thousand_in_one_call_and_changedsince(cl):
    """1,000 messages' flags, dates, sizes and IMAP strings in ONE FetchMeta
    reply; CHANGEDSINCE returns exactly the messages a Store changed."""
    acct, inbox = cl.account()
    blob = cl.bulk(inbox, 1000, bodystructure="'(BS ' || g || ')'", body="'(B ' || g || ')'",
                   flags="CASE WHEN g % 3 = 0 THEN 1 ELSE 0 END",
                   keywords="CASE WHEN g % 5 = 0 THEN ARRAY['$Work'] ELSE '{}' END")
    t0 = time.monotonic()
    r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset((1, STAR)),
                                              envelope=True, bodystructure=True, body=True), timeout=30)
    print("FetchMeta of 1000 messages: %.1f ms" % ((time.monotonic() - t0) * 1000))
    assert r.code == OK and not r.more and len(r.messages) == 1000
    base = calendar.timegm((2024, 1, 1, 0, 0, 0))
    for g, m in enumerate(r.messages, 1):
        assert m.uid == g and m.size == 100 + g and m.internal_date == base + 60 * g
        assert m.envelope == b"(ENV %d)" % g and m.bodystructure == b"(BS %d)" % g and m.body == b"(B %d)" % g
        assert m.flags == (SEEN if g % 3 == 0 else 0)
        assert list(m.keywords) == (["$Work"] if g % 5 == 0 else [])
        assert m.blob_id == blob and m.modseq == 1 + g and not m.headers
    # without the strings, and a sparse set
    r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox,
                                              uids=uidset((7, 9), 500, (998, STAR))), timeout=30)
    assert [m.uid for m in r.messages] == [7, 8, 9, 500, 998, 999, 1000]
    assert all(m.envelope == b"" and m.bodystructure == b"" for m in r.messages)
    # reversed range bounds are a range too
    r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset((12, 10))))
    assert [m.uid for m in r.messages] == [10, 11, 12]
    # CHANGEDSINCE
    before = cl.hms(inbox)
    s = cl.stub.Store(pb.StoreRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(5, 7),
                                      mode=pb.StoreRequest.ADD, flags=FLAGGED))
    assert s.code == OK and [m.uid for m in s.changed] == [5, 7]
    r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset((1, STAR)),
                                              changed_since=before))
    assert [(m.uid, m.modseq, m.flags) for m in r.messages] == [(5, before + 1, FLAGGED), (7, before + 1, FLAGGED)]
    # another account's session never sees the mailbox
    other, _ = cl.account()
    r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(other), mailbox_id=inbox, uids=uidset((1, STAR))))
    assert r.code == pb.CODE_NO_SUCH_MAILBOX and not r.messages
    r = cl.stub.FetchMeta(pb.FetchMetaRequest(mailbox_id=inbox, uids=uidset((1, STAR))))
    assert r.code == pb.CODE_INVALID


def test_fetch_meta_pages_by_count_and_bytes(cl):
    """Past 10,000 messages or ~3 MiB a reply says `more` and the next call
    (from the UID after the last one) continues; every reply fits 4 MiB."""
    acct, inbox = cl.account()
    cl.bulk(inbox, 10050)
    r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset((1, STAR))))
    assert r.code == OK and r.more and len(r.messages) == 10000 and r.messages[-1].uid == 10000
    r2 = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset((10001, STAR))))
    assert not r2.more and [m.uid for m in r2.messages] == list(range(10001, 10051))

    big, mb = cl.account()
    bs = "x" * 4000
    cl.bulk(mb, 2000, bodystructure="g || %s" % lit(bs))
    seen, calls, nxt = [], 0, 1
    while True:
        r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(big), mailbox_id=mb, uids=uidset((nxt, STAR)),
                                                  bodystructure=True))
        calls += 1
        assert r.code == OK and r.ByteSize() <= 3 * 1024 * 1024 + 64 * 1024
        seen += [m.uid for m in r.messages]
        assert all(m.bodystructure == (b"%d" % m.uid) + bs.encode() for m in r.messages)
        if not r.more:
            break
        nxt = r.messages[-1].uid + 1
    assert seen == list(range(1, 2001)) and calls >= 3, calls


def test_fetch_meta_header_fields(cl):
    """BODY[HEADER.FIELDS (...)] and .NOT from the stored header block:
    case-insensitive names, every occurrence, folded lines kept, block order,
    the blank line at the end; 8-bit IMAP strings come back byte for byte."""
    acct, inbox = cl.account()
    raw = (b"Received: from a\r\n by b\r\n"
           b"Subject: hello\r\n"
           b"X-Custom: first value\r\n"
           b"x-custom: second\r\n folded value\r\n"
           b"From: a@example.test\r\n"
           b"\r\n"
           b"body\r\n")
    env = b'("Mon" "caf\xe9 \xff")'
    uid, _ = cl.deliver(acct, raw, put=False, envelope=env, idate="2024-05-05T10:00:00.900Z")
    r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(uid)))
    assert r.messages[0].internal_date == calendar.timegm((2024, 5, 5, 10, 0, 0))  # seconds, not rounded

    def hdr(names, nott=False):
        r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(uid),
                                                  headers=names, headers_not=nott, envelope=True))
        assert r.code == OK and len(r.messages) == 1
        assert r.messages[0].envelope == env
        return r.messages[0].headers

    assert hdr(["X-CUSTOM", "subject"]) == (b"Subject: hello\r\nX-Custom: first value\r\n"
                                            b"x-custom: second\r\n folded value\r\n\r\n")
    assert hdr(["x-custom", "RECEIVED"], nott=True) == b"Subject: hello\r\nFrom: a@example.test\r\n\r\n"
    assert hdr(["X-None"]) == b"\r\n"
    assert hdr(["received"]) == b"Received: from a\r\n by b\r\n\r\n"
    for bad in (["Bad:Name"], ["with space"], [""]):
        r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(uid),
                                                  headers=bad))
        assert r.code == pb.CODE_INVALID


# ---------------------------------------------------------------- FetchBody

def nested_sections(prefix=b""):
    """BODY[section] of NESTED for every section it has, written out; prefix:
    header lines stored in front of it (the Return-Path a Deliver adds)."""
    raw = prefix + NESTED
    hend = raw.index(b"\r\n\r\n") + 4
    inner_msg = (b"From: nested@example.test\r\nSubject: nested message\r\n\r\nnested body line")
    return {
        "": raw,
        "HEADER": raw[:hend],
        "TEXT": raw[hend:],
        "1": b"Hello body text with unicorns.",
        "1.MIME": b"Content-Type: text/plain; charset=us-ascii\r\n\r\n",
        "2": (b"--inner\r\nContent-Type: text/plain\r\n\r\nplain alternative\r\n--inner\r\n"
              b"Content-Type: text/html\r\n\r\n<p>html alternative</p>\r\n--inner--"),
        "2.MIME": b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n',
        "2.1": b"plain alternative",
        "2.1.MIME": b"Content-Type: text/plain\r\n\r\n",
        "2.2": b"<p>html alternative</p>",
        "2.2.MIME": b"Content-Type: text/html\r\n\r\n",
        "3": inner_msg,
        "3.MIME": b"Content-Type: message/rfc822\r\n\r\n",
        "3.HEADER": b"From: nested@example.test\r\nSubject: nested message\r\n\r\n",
        "3.TEXT": b"nested body line",
        "3.1": b"nested body line",
        "3.header": b"From: nested@example.test\r\nSubject: nested message\r\n\r\n",
        "text": raw[hend:],
    }


def test_fetch_body_sections_and_partial(cl):
    """Whole message, HEADER, TEXT, nested parts, MIME headers of parts, the
    header and text of an attached message, partial ranges - byte for byte."""
    acct, inbox = cl.account()
    uid, _ = cl.deliver(acct, NESTED)
    raw = NESTED
    want = nested_sections()
    for section, data in want.items():
        total, got, missing, _ = fetch_body(cl, acct, inbox, uid, section)
        assert not missing and total == len(data) and got == data, section
    # partial <offset.length>, as python slices them
    for section, off, ln in (("", 0, 10), ("", 100, 57), ("TEXT", 5, 0), ("2.2", 3, 5), ("3.TEXT", 7, 1000),
                             ("1", 30, 5), ("1", 29, 5), ("", len(raw) + 10, 4)):
        data = want[section][off:off + ln] if ln else want[section][off:]
        total, got, missing, _ = fetch_body(cl, acct, inbox, uid, section, off, ln)
        assert not missing and total == len(data) and got == data, (section, off, ln)
    # a part that does not exist: one empty chunk flagged missing
    for section in ("4", "2.3", "1.1", "1.HEADER", "2.TEXT"):
        total, got, missing, _ = fetch_body(cl, acct, inbox, uid, section)
        assert missing and total == 0 and got == b"", section
    # bad section syntax, no such message, someone else's mailbox
    for section in ("0", "1..2", "1.", "HEADER.FIELDS (From)", "MIME", "x", "01"):
        assert rpc_error(lambda: fetch_body(cl, acct, inbox, uid, section)) == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error(lambda: fetch_body(cl, acct, inbox, uid + 1)) == grpc.StatusCode.NOT_FOUND
    other, _ = cl.account()
    assert rpc_error(lambda: fetch_body(cl, other, inbox, uid)) == grpc.StatusCode.NOT_FOUND


def vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(cl, name):
    import urllib.request
    with urllib.request.urlopen(cl.mc.metrics_url(0) + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_fetch_body_30mib_streamed_with_backpressure(cl):
    """A 30 MiB body streams in chunks of at most 64 KiB with the total in the
    first; while the client does not read, the router pauses the blob read
    instead of buffering the body: what it has streamed stays far below the
    body's size."""
    acct, inbox = cl.account()
    head = b"Subject: big\r\nContent-Type: application/octet-stream\r\n\r\n"
    raw = head + random.Random(30).randbytes(30 * 1024 * 1024 - len(head))
    uid, _ = cl.deliver(acct, raw)
    pid = cl.mc.routers[0].proc.pid
    sent0, paused0 = metric(cl, "message_fetch_body_bytes_total"), metric(cl, "message_fetch_body_paused_total")
    rss0 = vmrss_kib(pid)
    it = cl.stub.FetchBody(pb.FetchBodyRequest(session=sess(acct), mailbox_id=inbox, uid=uid), timeout=120)
    first = next(it)
    assert first.total == len(raw) and 0 < len(first.data) <= 65536
    time.sleep(2.0)  # a router without back-pressure would have read the whole body by now
    rss1 = vmrss_kib(pid)
    sent1, paused1 = metric(cl, "message_fetch_body_bytes_total"), metric(cl, "message_fetch_body_paused_total")
    h = hashlib.sha256(first.data)
    n, count = len(first.data), 1
    for c in it:
        assert c.total == 0 and 0 < len(c.data) <= 65536
        h.update(c.data)
        n += len(c.data)
        count += 1
    print("30 MiB body: %d chunks; while the client stalled the router streamed %.1f MiB, RSS %d -> %d KiB"
          % (count, (sent1 - sent0) / 1048576, rss0, rss1))
    assert n == len(raw) and h.digest() == hashlib.sha256(raw).digest()
    assert metric(cl, "message_fetch_body_bytes_total") - sent0 == len(raw)
    assert paused1 > paused0
    # what the client's window and the sockets hold, not the body (RSS is only
    # printed: under ASan it counts freed chunks in the allocator's quarantine)
    assert sent1 - sent0 < 12 * 1024 * 1024, sent1 - sent0
    # a range of it, from the middle
    total, got, _, _ = fetch_body(cl, acct, inbox, uid, "TEXT", 20 * 1024 * 1024 + 3, 100000)
    off = len(head) + 20 * 1024 * 1024 + 3
    assert total == 100000 and got == raw[off:off + 100000]


def test_fetch_body_fallback_and_data_loss(cl):
    """With one store node down the body comes from the other replica; a body
    that is on no node at all is DATA_LOSS."""
    acct, inbox = cl.account()
    raw = b"Subject: replicated\r\n\r\n" + b"0123456789abcdef" * 8192
    uid, _ = cl.deliver(acct, raw)
    lost = b"Subject: never stored\r\n\r\nnothing\r\n"
    uid2, _ = cl.deliver(acct, lost, put=False)
    assert rpc_error(lambda: fetch_body(cl, acct, inbox, uid2)) == grpc.StatusCode.DATA_LOSS
    cl.mc.kill_store(0)
    try:
        total, got, _, _ = fetch_body(cl, acct, inbox, uid)
        assert total == len(raw) and got == raw
        total, got, _, _ = fetch_body(cl, acct, inbox, uid, "TEXT", 1000, 5000)
        assert got == raw[raw.index(b"\r\n\r\n") + 4 + 1000:][:5000]
        # the copy may be on the dead node: not a loss, unavailable
        assert rpc_error(lambda: fetch_body(cl, acct, inbox, uid2)) == grpc.StatusCode.UNAVAILABLE
    finally:
        cl.mc.start_store(0)


def test_through_deliver_rpc(cl):
    """End to end with the router's own Deliver:
    what it stores - part map, header block, IMAP strings, search fields, the
    full-text index - serves FetchBody sections, FetchMeta and Search."""
    acct, inbox = cl.account()
    uid = _deliver_rpc(cl, acct, NESTED)
    # the final delivery put the Return-Path (RFC 5321 4.4) in front of what was sent
    rp = b"Return-Path: <sender@example.test>\r\n"
    for section, data in nested_sections(rp).items():
        total, got, missing, _ = fetch_body(cl, acct, inbox, uid, section)
        assert not missing and got == data and total == len(data), section
    m = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(uid), envelope=True,
                                              bodystructure=True, body=True, headers=["subject", "From"])).messages[0]
    assert m.size == len(rp + NESTED) and m.envelope.startswith(b'("Mon, 01 Jan 2024 10:00:00 +0000" "Re: Quarterly')
    assert m.bodystructure.startswith(b'(("text" "plain"') and m.body.startswith(b'(("text" "plain"')
    assert m.headers == b'From: "Alice Example" <alice@example.test>\r\nSubject: Re: Quarterly report\r\n\r\n'
    for key in (K("HEADER", name="subject", value="QUARTERLY"), K("HEADER", name="from", value="alice@"),
                K("SENTON", number=day(2024, 1, 1)), K("BODY", value="unicorns"), K("TEXT", value="Quarterly")):
        r = search(cl, acct, inbox, key)
        assert r.code == OK and list(r.uids) == [uid], key


# ---------------------------------------------------------------- Store

def test_store_modes_and_unchangedsince(cl):
    """ADD / REMOVE / REPLACE of flags and keywords: each change takes one new
    modseq (the mailbox's highest + 1), unchanged messages keep theirs;
    UNCHANGEDSINCE leaves newer messages alone and reports them MODIFIED."""
    acct, inbox = cl.account()
    for i in range(5):
        cl.deliver(acct, b"Subject: s%d\r\n\r\nx\r\n" % i, put=False)

    def state():
        r = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=inbox, uids=uidset((1, STAR))))
        return {m.uid: (m.modseq, m.flags, list(m.keywords)) for m in r.messages}

    def store(uids, mode, flags=0, keywords=(), **kw):
        return cl.stub.Store(pb.StoreRequest(session=sess(acct), mailbox_id=inbox, uids=uids, mode=mode,
                                             flags=flags, keywords=keywords, **kw))

    s0, h0 = state(), cl.hms(inbox)
    r = store(uidset((1, 3)), pb.StoreRequest.ADD, SEEN, ["$Label1"])
    assert r.code == OK and [m.uid for m in r.changed] == [1, 2, 3] and not r.modified.ranges
    assert all(m.modseq == h0 + 1 and m.flags == SEEN and list(m.keywords) == ["$Label1"] for m in r.changed)
    s1 = state()
    assert s1[4] == s0[4] and s1[5] == s0[5] and cl.hms(inbox) == h0 + 1
    # adding what is there changes nothing: no new modseq
    r = store(uidset((1, 2)), pb.StoreRequest.ADD, SEEN)
    assert r.code == OK and not r.changed and cl.hms(inbox) == h0 + 1 and state() == s1
    # REMOVE on a mixed set changes only the ones that had it
    r = store(uidset((2, 4)), pb.StoreRequest.REMOVE, SEEN, ["$Label1"])
    assert [m.uid for m in r.changed] == [2, 3] and all(m.flags == 0 and not m.keywords for m in r.changed)
    assert all(m.modseq == h0 + 2 for m in r.changed) and state()[4] == s0[4]
    # REPLACE
    r = store(uidset(1, 5), pb.StoreRequest.REPLACE, FLAGGED | ANSWERED, ["b", "a", "b"])
    assert [(m.uid, m.flags, list(m.keywords), m.modseq) for m in r.changed] == \
        [(1, FLAGGED | ANSWERED, ["a", "b"], h0 + 3), (5, FLAGGED | ANSWERED, ["a", "b"], h0 + 3)]
    # UNCHANGEDSINCE: 1 and 5 changed at h0+3; 2 and 3 at h0+2; 4 still at its delivery modseq
    r = store(uidset((1, 5)), pb.StoreRequest.ADD, DRAFT, unchanged_since=h0 + 2)
    assert r.code == pb.CODE_MODIFIED and uids_of(r.modified) == [1, 5]
    assert [m.uid for m in r.changed] == [2, 3, 4] and all(m.modseq == h0 + 4 for m in r.changed)
    st = state()
    assert st[1][0] == h0 + 3 and st[1][1] == FLAGGED | ANSWERED
    # UNCHANGEDSINCE 0 fails for every message (RFC 7162)
    r = store(uidset((1, 5)), pb.StoreRequest.ADD, SEEN, unchanged_since=0, unchanged_since_set=True)
    assert r.code == pb.CODE_MODIFIED and uids_of(r.modified) == [1, 2, 3, 4, 5] and not r.changed
    assert state() == st
    # refused: bad keyword, \Recent, no session; someone else's mailbox
    for kw, flags in ((["bad word"], 0), (["a(b"], 0), (["\\Seen"], 0), ([], 32)):
        assert store(uidset(1), pb.StoreRequest.ADD, flags, kw).code == pb.CODE_INVALID
    other, _ = cl.account()
    r = cl.stub.Store(pb.StoreRequest(session=sess(other), mailbox_id=inbox, uids=uidset(1),
                                      mode=pb.StoreRequest.ADD, flags=DELETED))
    assert r.code == pb.CODE_NO_SUCH_MAILBOX and state() == st


# ---------------------------------------------------------------- Copy / Move

def test_copy_and_move(cl):
    """COPY and MOVE give COPYUID data: the destination's UIDVALIDITY and the
    source and new UIDs in corresponding order; MOVE expunges the sources."""
    acct, inbox = cl.account()
    for i in range(6):
        cl.deliver(acct, b"Subject: c%d\r\n\r\nbody %d\r\n" % (i, i), put=False, flags=SEEN if i == 2 else 0)
    arch = cl.mailbox(acct, "Archive", create=True)
    uidv = int(cl.one("SELECT uidvalidity FROM mailboxes WHERE id = %d" % arch))
    r = cl.stub.Copy(pb.CopyRequest(session=sess(acct), mailbox_id=inbox, uids=uidset((2, 4)),
                                    destination="Archive"))
    assert r.code == OK and r.uidvalidity == uidv
    assert uids_of(r.source_uids) == [2, 3, 4] and uids_of(r.dest_uids) == [1, 2, 3]
    assert cl.one("SELECT count(*) FROM messages WHERE mailbox_id = %d" % inbox) == "6"
    assert cl.sql("SELECT uid, flags FROM messages WHERE mailbox_id = %d ORDER BY uid" % arch) == \
        [["1", "0"], ["2", str(SEEN)], ["3", "0"]]
    # MOVE of a sparse set: new uids continue, sources gone
    r = cl.stub.Copy(pb.CopyRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(1, (5, 6), 9),
                                    destination="Archive", move=True))
    assert r.code == OK and uids_of(r.source_uids) == [1, 5, 6] and uids_of(r.dest_uids) == [4, 5, 6]
    assert cl.sql("SELECT uid FROM messages WHERE mailbox_id = %d ORDER BY uid" % inbox) == [["2"], ["3"], ["4"]]
    fm = cl.stub.FetchMeta(pb.FetchMetaRequest(session=sess(acct), mailbox_id=arch, uids=uidset((1, STAR))))
    assert [m.uid for m in fm.messages] == [1, 2, 3, 4, 5, 6]
    # nothing matched: OK without data
    r = cl.stub.Copy(pb.CopyRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(100), destination="Archive"))
    assert r.code == OK and not r.source_uids.ranges
    # destination missing (the frontend says [TRYCREATE]); INBOX in any case
    r = cl.stub.Copy(pb.CopyRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(2), destination="Nope"))
    assert r.code == pb.CODE_NO_SUCH_MAILBOX
    r = cl.stub.Copy(pb.CopyRequest(session=sess(acct), mailbox_id=arch, uids=uidset(1), destination="inbox"))
    assert r.code == OK and uids_of(r.dest_uids) == [7]
    # over quota: a copy adds usage, a move does not
    cl.sql("UPDATE accounts SET quota_bytes = used_bytes + 5 WHERE id = %d" % acct)
    r = cl.stub.Copy(pb.CopyRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(2), destination="Archive"))
    assert r.code == pb.CODE_OVER_QUOTA
    r = cl.stub.Copy(pb.CopyRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(2), destination="Archive",
                                    move=True))
    assert r.code == OK and uids_of(r.dest_uids) == [7]
    # another account cannot copy out of this mailbox, nor name a bad destination
    other, _ = cl.account()
    r = cl.stub.Copy(pb.CopyRequest(session=sess(other), mailbox_id=inbox, uids=uidset(3), destination="INBOX"))
    assert r.code == pb.CODE_NO_SUCH_MAILBOX
    r = cl.stub.Copy(pb.CopyRequest(session=sess(acct), mailbox_id=inbox, uids=uidset(3), destination="a//b"))
    assert r.code == pb.CODE_INVALID


# ---------------------------------------------------------------- Expunge

def test_expunge_all_and_uid_set(cl):
    """EXPUNGE removes every \\Deleted message, UID EXPUNGE only those in the
    set; the reply has the expunged UIDs and the new HIGHESTMODSEQ. POP3's
    UPDATE expunges a set whatever its flags."""
    acct, inbox = cl.account()
    for i in range(8):
        cl.deliver(acct, b"Subject: e%d\r\n\r\nx\r\n" % i, put=False, flags=DELETED if i in (1, 3, 5, 6) else 0)
    # uids 2, 4, 6, 7 are \Deleted
    h = cl.hms(inbox)

    def expunge(uids=None, **kw):
        return cl.stub.Expunge(pb.ExpungeRequest(session=sess(acct), mailbox_id=inbox, uids=uids, **kw))

    r = expunge(uidset((1, 4), 7))
    assert r.code == OK and uids_of(r.expunged) == [2, 4, 7] and r.highestmodseq == h + 1 == cl.hms(inbox)
    r = expunge()
    assert uids_of(r.expunged) == [6] and r.highestmodseq == h + 2
    r = expunge()
    assert r.code == OK and not r.expunged.ranges and r.highestmodseq == h + 2 == cl.hms(inbox)
    r = expunge(uidset(1, 3), ignore_deleted=True)
    assert uids_of(r.expunged) == [1, 3] and r.highestmodseq == h + 3
    assert cl.sql("SELECT uid FROM messages WHERE mailbox_id = %d ORDER BY uid" % inbox) == [["5"], ["8"]]
    assert cl.sql("SELECT uid, modseq FROM expunged WHERE mailbox_id = %d ORDER BY uid" % inbox) == \
        [[str(u), str(m)] for u, m in ((1, h + 3), (2, h + 1), (3, h + 3), (4, h + 1), (6, h + 2), (7, h + 1))]
    assert expunge(ignore_deleted=True).code == pb.CODE_INVALID
    other, _ = cl.account()
    r = cl.stub.Expunge(pb.ExpungeRequest(session=sess(other), mailbox_id=inbox, uids=uidset(5),
                                          ignore_deleted=True))
    assert r.code == pb.CODE_NO_SUCH_MAILBOX and cl.one("SELECT count(*) FROM messages WHERE mailbox_id = %d"
                                                        % inbox) == "2"


# ---------------------------------------------------------------- Search

def K(op, *children, **kw):
    return pb.SearchKey(op=getattr(pb.SearchKey, op), children=list(children), **kw)


@pytest.fixture(scope="module")
def corpus(cl):
    """Five messages with distinct subjects, senders, dates, sizes, flags,
    keywords, a custom header and body words."""
    acct, inbox = cl.account()
    msgs = [
        (b"From: Alice <alice@example.test>\r\nTo: zed@example.test\r\nCc: yan@example.test\r\n"
         b"Subject: Quarterly report\r\nDate: Wed, 10 Jan 2024 09:00:00 +0000\r\nX-Tag: alpha beta\r\n\r\n"
         b"the unicorns are galloping\r\n", SEEN, ["$Important"], "2024-02-01T12:00:00Z"),
        (b"From: bob@example.test\r\nTo: xavier@example.test\r\nCc: zoe@example.test\r\n"
         b"Subject: Re: lunch 100% _special_ \\ O'Brien\r\nDate: Fri, 05 Jan 2024 09:00:00 +0000\r\n\r\n"
         b"pizza pasta\r\n", 0, [], "2024-02-02T12:00:00Z"),
        (b"From: carol@example.test\r\nTo: yvonne@example.test\r\nSubject: Fwd: Quarterly numbers\r\n"
         b"X-Tag: gamma\r\n\r\nnumbers unicorns\r\n", FLAGGED | DELETED, ["work"], "2024-02-03T12:00:00Z"),
        (b"From: Dave <dave@example.test>\r\nTo: walter@example.test\r\nSubject: =?UTF-8?Q?z=C3=A9bra?=\r\n"
         b"Date: Fri, 01 Mar 2024 09:00:00 +0000\r\nX-Priority: 1\r\n\r\nhello world\r\n" + b"pad " * 250,
         ANSWERED, ["work", "$Important"], "2024-02-04T12:00:00Z"),
        (b"From: eve@example.test\r\nSubject: misc\r\nDate: Sat, 02 Mar 2024 09:00:00 +0000\r\n\r\n"
         b"percent 50% and under_score\r\n", 0, [], "2024-02-05T12:00:00Z"),
    ]
    for raw, flags, kws, idate in msgs:
        cl.deliver(acct, raw, put=False, flags=flags, keywords=kws, idate=idate)
    return acct, inbox


def search(cl, acct, mb, key, sort=()):
    r = cl.stub.Search(pb.SearchRequest(session=sess(acct), mailbox_id=mb, key=key, sort=list(sort)), timeout=30)
    return r


def test_search_criteria(cl, corpus):
    acct, mb = corpus

    def s(key):
        r = search(cl, acct, mb, key)
        assert r.code == OK, r
        return list(r.uids)

    assert s(K("ALL")) == [1, 2, 3, 4, 5]
    assert s(K("UID", uids=uidset((2, 3), 5))) == [2, 3, 5]
    assert s(K("FLAG", flag=SEEN)) == [1]
    assert s(K("NOT", K("FLAG", flag=SEEN))) == [2, 3, 4, 5]
    assert s(K("FLAG", flag=DELETED)) == [3]
    assert s(K("FLAG", flag=FLAGGED | DELETED)) == [3]
    assert s(K("KEYWORD", name="work")) == [3, 4]
    assert s(K("KEYWORD", name="$Important")) == [1, 4]
    # header substrings, case-insensitive; decoded fields and the raw block
    assert s(K("HEADER", name="Subject", value="quarterly")) == [1, 3]
    assert s(K("HEADER", name="SUBJECT", value="zébra")) == [4]
    assert s(K("HEADER", name="from", value="BOB@")) == [2]
    assert s(K("HEADER", name="To", value="y")) == [3]
    assert s(K("HEADER", name="cc", value="yan")) == [1]
    assert s(K("HEADER", name="X-Tag", value="BETA")) == [1]
    assert s(K("HEADER", name="x-tag", value="")) == [1, 3]
    assert s(K("HEADER", name="X-Priority", value="1")) == [4]
    assert s(K("HEADER", name="Date", value="Mar 2024")) == [4, 5]
    # body: a case-insensitive substring (RFC 9051 6.4.4), not words
    assert s(K("BODY", value="unicorns")) == [1, 3]
    assert s(K("BODY", value="UNICORNS ARE gallop")) == [1]
    assert s(K("BODY", value="galloping UNICORNS")) == []
    assert s(K("BODY", value="icorn")) == [1, 3]
    assert s(K("BODY", value="zebra")) == []
    assert s(K("BODY", value="")) == [1, 2, 3, 4, 5]
    assert s(K("TEXT", value="pizza")) == [2]
    assert s(K("TEXT", value="zébra")) == [4]
    assert s(K("TEXT", value="X-Priority")) == [4]
    # dates: internal date and the Date header (internal date without one)
    assert s(K("BEFORE", number=day(2024, 2, 2))) == [1]
    assert s(K("ON", number=day(2024, 2, 2))) == [2]
    assert s(K("SINCE", number=day(2024, 2, 4))) == [4, 5]
    assert s(K("SENTBEFORE", number=day(2024, 1, 6))) == [2]
    assert s(K("SENTON", number=day(2024, 1, 10))) == [1]
    assert s(K("SENTSINCE", number=day(2024, 2, 1))) == [3, 4, 5]
    # sizes
    assert s(K("LARGER", number=800)) == [4]
    assert s(K("SMALLER", number=800)) == [1, 2, 3, 5]
    # combinations and nesting
    assert s(K("OR", K("FLAG", flag=SEEN), K("KEYWORD", name="work"))) == [1, 3, 4]
    assert s(K("NOT", K("OR", K("FLAG", flag=SEEN), K("KEYWORD", name="work")))) == [2, 5]
    assert s(K("AND", K("OR", K("HEADER", name="subject", value="quarterly"), K("BODY", value="pizza")),
               K("NOT", K("FLAG", flag=DELETED)))) == [1, 2]
    assert s(K("NOT", K("NOT", K("AND", K("KEYWORD", name="work"), K("LARGER", number=800))))) == [4]
    assert s(K("OR", K("OR", K("UID", uids=uidset(1)), K("UID", uids=uidset(5))),
               K("AND", K("SINCE", number=day(2024, 2, 3)), K("NOT", K("HEADER", name="from", value="dave"))))) \
        == [1, 3, 5]
    assert s(K("AND")) == [1, 2, 3, 4, 5]
    # MODSEQ and the matches' highest modseq
    h = cl.hms(mb)
    st = cl.stub.Store(pb.StoreRequest(session=sess(acct), mailbox_id=mb, uids=uidset(2),
                                       mode=pb.StoreRequest.ADD, flags=DRAFT))
    assert st.changed[0].modseq == h + 1
    r = search(cl, acct, mb, K("MODSEQ", number=h + 1))
    assert list(r.uids) == [2] and r.highestmodseq == h + 1
    r = search(cl, acct, mb, K("UID", uids=uidset(1, 3)))
    assert r.highestmodseq == max(int(x[0]) for x in cl.sql(
        "SELECT modseq FROM messages WHERE mailbox_id = %d AND uid IN (1, 3)" % mb))
    cl.stub.Store(pb.StoreRequest(session=sess(acct), mailbox_id=mb, uids=uidset(2),
                                  mode=pb.StoreRequest.REMOVE, flags=DRAFT))


def test_search_special_characters_are_literal(cl, corpus):
    """' % _ \\ in search strings match themselves (bound parameters, strpos
    rather than LIKE)."""
    acct, mb = corpus

    def s(key):
        r = search(cl, acct, mb, key)
        assert r.code == OK
        return list(r.uids)

    subj = lambda v: K("HEADER", name="subject", value=v)  # noqa: E731
    assert s(subj("100%")) == [2]
    assert s(subj("%")) == [2]
    assert s(subj("_special_")) == [2]
    assert s(subj("_")) == [2]
    assert s(subj("\\")) == [2]
    assert s(subj("O'Brien")) == [2]
    assert s(subj("'")) == [2]
    assert s(subj("Quarterly%numbers")) == []
    assert s(subj("l_nch")) == []
    assert s(subj("'; DROP TABLE messages; --")) == []
    assert s(K("TEXT", value="50%")) == [5]
    assert s(K("TEXT", value="under_score")) == [5]
    assert s(K("HEADER", name="X-Tag", value="%")) == []
    assert s(K("KEYWORD", name="w%")) == []
    # the body the same way: no LIKE pattern, no escape character
    assert s(K("BODY", value="50% and")) == [5]
    assert s(K("BODY", value="%")) == [5]
    assert s(K("BODY", value="r_s")) == [5]
    assert s(K("BODY", value="_")) == [5]
    assert s(K("BODY", value="under%score")) == []
    assert s(K("BODY", value="p_zza")) == []
    assert s(K("BODY", value="\\")) == []
    assert s(K("TEXT", value="\\")) == [2]
    assert s(K("BODY", value="'")) == []
    assert cl.one("SELECT count(*) FROM messages WHERE mailbox_id = %d" % mb) == "5"


def _body_mailbox(cl, texts):
    """A fresh account whose INBOX holds one message per body text (stored as
    the delivery stores it: message_text.body); returns (account, mailbox)."""
    acct, inbox = cl.account()
    for i, text in enumerate(texts, 1):
        raw = (b"From: t@example.test\r\nSubject: body %d\r\nX-Label: label-%d\r\n\r\n" % (i, i)
               + text.encode("utf-8"))
        uid, _ = cl.deliver(acct, raw, put=False, body_text=text)
        assert uid == i
    return acct, inbox


def _deliver_without_text(cl, acct, raw):
    """mail_deliver with p_body_text NULL (no message_text row is written);
    returns the UID."""
    q = cl.deliver_sql(acct, raw, body_text="")
    tail = ", '', ARRAY['store1','store2'], NULL)"
    assert q.endswith(tail), q
    r = cl.sql(q[:-len(tail)] + ", NULL, ARRAY['store1','store2'], NULL)")
    assert r[0][0] == "ok", r
    return int(r[0][2])


def _uids(cl, acct, mb, key):
    r = search(cl, acct, mb, key)
    assert r.code == OK, r
    return list(r.uids)


def test_search_body_substring_case_insensitive(cl):
    """BODY is a case-insensitive substring of the body text (RFC 9051 6.4.4):
    inside words, across a space, ASCII and non-ASCII letters folded by the
    database's lower() (UTF-8 database, C.UTF-8 ctype)."""
    acct, mb = _body_mailbox(cl, [
        "hello world\r\n",
        "Hello, World!\r\nsecond line\r\n",
        "Ärger im Büro, ΣΟΦΙΑ und ПРИВЕТ\r\n",
        "kein ärger, nur BÜROKRATIE\r\n",
        "nothing to see\r\n",
    ])
    s = lambda v: _uids(cl, acct, mb, K("BODY", value=v))  # noqa: E731
    assert s("ell") == [1, 2]
    assert s("lo wor") == [1]
    assert s("lo, wor") == [2]
    assert s("HELLO WORLD") == [1]
    assert s("hElLo") == [1, 2]
    assert s("world!") == [2]
    assert s("line\r\n") == [2]
    assert s("ÄRGER") == [3, 4]
    assert s("ärger") == [3, 4]
    assert s("büro") == [3, 4]
    assert s("BÜROK") == [4]
    assert s("σοφια") == [3]
    assert s("привет") == [3]
    assert s("rger im b") == [3]
    assert s("hello  world") == []
    assert s("helloworld") == []
    assert s("nothing to see here") == []
    assert s("") == [1, 2, 3, 4, 5]
    # headers are not the body; the whole string, not its words
    assert s("label-1") == []
    assert s("world hello") == []
    # combined with other keys, in any order
    assert _uids(cl, acct, mb, K("NOT", K("BODY", value="ell"))) == [3, 4, 5]
    assert _uids(cl, acct, mb, K("AND", K("BODY", value="ell"), K("UID", uids=uidset((2, 5))))) == [2]
    assert _uids(cl, acct, mb, K("AND", K("UID", uids=uidset((2, 5))), K("BODY", value="ell"))) == [2]
    assert _uids(cl, acct, mb, K("OR", K("BODY", value="ärger"), K("UID", uids=uidset(5)))) == [3, 4, 5]
    assert _uids(cl, acct, mb, K("OR", K("UID", uids=uidset(5)), K("BODY", value="ärger"))) == [3, 4, 5]
    assert _uids(cl, acct, mb, K("AND", K("BODY", value="ärger"), K("BODY", value="kein"))) == [4]
    assert _uids(cl, acct, mb, K("OR", K("BODY", value="привет"), K("HEADER", name="x-label", value="-5"),
                                 K("NOT", K("BODY", value="o")))) == [3, 5]


def test_search_text_headers_or_body(cl):
    """TEXT: the raw header block, the decoded fields, or the body, each as a
    case-insensitive substring; a message without body text matches by its
    headers only."""
    acct, mb = _body_mailbox(cl, ["alpha bravo\r\n", "charlie delta\r\n"])
    # no text row at all (what a delivery stores for a message without a text part)
    raw = b"From: t@example.test\r\nSubject: =?UTF-8?Q?K=C3=A4se?= only\r\nX-Label: label-3\r\n\r\n"
    assert _deliver_without_text(cl, acct, raw) == 3
    assert cl.one("SELECT count(*) FROM message_text WHERE blob_id = %s" % lit(hashlib.sha256(raw).hexdigest())) \
        == "0"
    t = lambda v: _uids(cl, acct, mb, K("TEXT", value=v))  # noqa: E731
    b = lambda v: _uids(cl, acct, mb, K("BODY", value=v))  # noqa: E731
    assert t("LABEL-") == [1, 2, 3]              # raw header block
    assert t("abel-2") == [2]
    assert t("subject: body") == [1, 2]
    assert t("käse") == [3]                        # decoded subject
    assert t("KÄSE ONLY") == [3]
    assert t("rlie del") == [2]                    # body
    assert t("BRAVO") == [1]
    assert t("x-label: label-1\r\n\r\nalpha") == []  # header and body are separate texts
    assert t("") == [1, 2, 3]
    assert b("") == [1, 2, 3]
    assert b("label") == [] and b("käse") == []
    assert t("nowhere") == []


def test_search_old_rows_word_match(cl):
    """A row stored before migration 0006 (tsvector, no body text) is still
    found by whole words, any order, any case; a substring inside a word is
    not (no text to scan). New rows in the same mailbox use the substring."""
    acct, mb = _body_mailbox(cl, ["the unicorns are galloping\r\n"])
    raw = b"From: t@example.test\r\nSubject: old\r\n\r\nThe Unicorns are galloping home\r\n"
    blob = hashlib.sha256(raw).hexdigest()
    assert _deliver_without_text(cl, acct, raw) == 2
    cl.sql("INSERT INTO message_text (blob_id, tsv) VALUES (%s, to_tsvector('simple', %s))"
           % (lit(blob), lit("The Unicorns are galloping home")))
    assert cl.one("SELECT body IS NULL AND tsv IS NOT NULL FROM message_text WHERE blob_id = %s" % lit(blob)) == "t"
    s = lambda v: _uids(cl, acct, mb, K("BODY", value=v))  # noqa: E731
    assert s("galloping") == [1, 2]
    assert s("UNICORNS") == [1, 2]
    assert s("home galloping") == [2]              # old row: every word, any order
    assert s("gallop") == [1]                      # old row: whole words only
    assert s("are gall") == [1]
    assert s("") == [1, 2]
    assert _uids(cl, acct, mb, K("TEXT", value="home")) == [2]
    assert _uids(cl, acct, mb, K("NOT", K("BODY", value="home"))) == [1]


def _deliver_rpc(cl, acct, raw):
    """Deliver raw through the router's Deliver RPC (the real body_text path);
    returns its UID in the account's INBOX."""
    addr = cl.one("SELECT address FROM accounts WHERE id = %d" % acct)
    env = pb.Envelope(mail_from="sender@example.test", recipients=[pb.Recipient(address=addr)],
                      session=pb.Session(client_ip="127.0.0.1", session_id="t"))
    end = time.monotonic() + 15
    while True:
        try:
            r = cl.stub.Deliver(iter([pb.DeliverRequest(envelope=env), pb.DeliverRequest(data=raw)]), timeout=30)
            break
        except grpc.RpcError as e:
            # a store node restarted by an earlier test may not be seen up yet
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > end:
                raise
            time.sleep(0.5)
    assert r.code == OK and [x.code for x in r.results] == [OK], r
    return int(cl.one("SELECT max(uid) FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id"
                      " WHERE mb.account_id = %d AND mb.name = 'INBOX'" % acct))


def test_search_body_decoded_through_deliver(cl):
    """Bodies delivered through Deliver are searched in decoded form:
    quoted-printable (soft line breaks joined, =XX bytes as UTF-8), base64,
    latin-1 converted, HTML without its tags and with entities decoded; a
    message without a text part matches no BODY string but the empty one."""
    acct, mb = cl.account()
    qp = (b"From: a@example.test\r\nSubject: qp\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
          b"Le caf=C3=A9 olym=\r\npique est ferm=C3=A9 =3D closed\r\n")
    b64text = "Geheimer Satz mit Übergröße\r\n".encode("utf-8")
    b64 = (b"From: a@example.test\r\nSubject: b64\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(b64text).replace(b"\n", b"\r\n"))
    html = (b"From: a@example.test\r\nSubject: html\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n"
            b"--b\r\nContent-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(b"<html><body><p class=\"x\">Fish &amp; Chips for \xc9ric</p>"
                                 b"<div>tagsoup</div></body></html>").replace(b"\n", b"\r\n")
            + b"--b--\r\n")
    image = (b"From: a@example.test\r\nSubject: picture only\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             + base64.encodebytes(b"\x89PNG\r\n\x1a\nnot really a picture").replace(b"\n", b"\r\n"))
    uids = [_deliver_rpc(cl, acct, raw) for raw in (qp, b64, html, image)]
    assert uids == [1, 2, 3, 4]
    s = lambda v: _uids(cl, acct, mb, K("BODY", value=v))  # noqa: E731
    # quoted-printable
    assert s("café olympique") == [1]
    assert s("CAFÉ OLYMP") == [1]
    assert s("fermé = closed") == [1]
    assert s("=C3=A9") == [] and s("olym=") == [] and s("=3D") == []
    # base64
    assert s("geheimer satz") == [2]
    assert s("ÜBERGRÖSSE") == []                   # no multi-character folding (ß)
    assert s("übergröße") == [2] and s("ÜBERGRÖẞE") == [2]
    assert s(base64.b64encode(b64text)[:12].decode()) == []
    # html (base64, latin-1): text without tags, entities decoded
    assert s("fish & chips for éric") == [3]
    assert s("TAGSOUP") == [3]
    assert s("&amp;") == [] and s("<p") == [] and s("class=") == [] and s("div") == []
    # no text part
    assert s("PNG") == [] and s("really") == [] and s("iVBOR") == []
    assert s("") == [1, 2, 3, 4]
    assert _uids(cl, acct, mb, K("TEXT", value="PICTURE ONLY")) == [4]
    assert _uids(cl, acct, mb, K("TEXT", value="olympique")) == [1]


def test_search_sort(cl, corpus):
    acct, mb = corpus

    def s(*sort, key=None):
        r = search(cl, acct, mb, key or K("ALL"), sort)
        assert r.code == OK
        return list(r.uids)

    # base subjects: Quarterly report, lunch..., Quarterly numbers, zébra, misc
    assert s("SUBJECT") == [2, 5, 3, 1, 4]
    assert s("REVERSE SUBJECT") == [4, 1, 3, 5, 2]
    assert s("ARRIVAL") == [1, 2, 3, 4, 5]
    assert s("REVERSE ARRIVAL") == [5, 4, 3, 2, 1]
    assert s("DATE") == [2, 1, 3, 4, 5]  # 3 has no Date: its internal date
    assert s("reverse date") == [5, 4, 3, 1, 2]
    assert s("FROM") == [1, 2, 3, 4, 5]
    assert s("REVERSE FROM") == [5, 4, 3, 2, 1]
    assert s("TO") == [5, 4, 2, 3, 1]  # "" < walter < xavier < yvonne < zed
    assert s("CC") == [3, 4, 5, 1, 2]  # no Cc first, then by uid; yan < zoe
    sizes = [(int(sz), int(u)) for u, sz in cl.sql("SELECT uid, size FROM messages WHERE mailbox_id = %d" % mb)]
    assert s("SIZE") == [u for _, u in sorted(sizes)]
    assert s("REVERSE SIZE") == [u for _, u in sorted(sizes, key=lambda x: (-x[0], x[1]))]
    # ties keep UID order; several keys
    assert s("SUBJECT", "REVERSE DATE", key=K("KEYWORD", name="work")) == [3, 4]
    cl.sql("UPDATE messages SET base_subject = 'same' WHERE mailbox_id = %d" % mb)
    try:
        assert s("SUBJECT") == [1, 2, 3, 4, 5]
        assert s("SUBJECT", "REVERSE DATE") == [5, 4, 3, 1, 2]
    finally:
        for uid, b in ((1, "Quarterly report"), (2, "lunch 100% _special_ \\ O'Brien"), (3, "Quarterly numbers"),
                       (4, "zébra"), (5, "misc")):
            cl.sql("UPDATE messages SET base_subject = %s WHERE mailbox_id = %d AND uid = %d" % (lit(b), mb, uid))
    r = search(cl, acct, mb, K("ALL"), ["BOGUS"])
    assert r.code == pb.CODE_INVALID


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _raw_search(cl, acct, mb, key_bytes):
    """A SearchRequest built byte by byte (python's protobuf will not build
    a 10,000-deep message)."""
    ch = grpc.insecure_channel(cl.mc.router_addr(0))
    call = ch.unary_unary("/mail.router.v1.Router/Search", request_serializer=lambda b: b,
                          response_deserializer=pb.SearchReply.FromString)
    session = sess(acct).SerializeToString()
    req = (b"\x0a" + _varint(len(session)) + session + b"\x10" + _varint(mb)
           + b"\x1a" + _varint(len(key_bytes)) + key_bytes)
    try:
        return call(req, timeout=30)
    finally:
        ch.close()


def _nested_not(depth):
    k = b""  # ALL
    for _ in range(depth - 1):
        k = b"\x08\x03\x12" + _varint(len(k)) + k  # NOT { k }
    return k


def test_search_hostile_trees_refused(cl, corpus):
    """Trees past the depth (64) or node (1000) bounds are refused cleanly -
    the 10,000-deep one before protobuf-c recursed into it - and the router
    carries on."""
    acct, mb = corpus
    # within bounds: 64 levels (63 NOTs around ALL: nothing), 63 levels (62 NOTs: all)
    r = _raw_search(cl, acct, mb, _nested_not(64))
    assert r.code == OK and list(r.uids) == []
    r = _raw_search(cl, acct, mb, _nested_not(63))
    assert r.code == OK and list(r.uids) == [1, 2, 3, 4, 5]
    for depth in (65, 1000, 10000):
        r = _raw_search(cl, acct, mb, _nested_not(depth))
        assert r.code == pb.CODE_INVALID and not r.uids, depth
    # 1,001 nodes: AND of 1,000 ALLs
    r = _raw_search(cl, acct, mb, b"\x08\x01" + b"\x12\x00" * 1000)
    assert r.code == pb.CODE_INVALID
    r = _raw_search(cl, acct, mb, b"\x08\x01" + b"\x12\x00" * 999)
    assert r.code == OK and list(r.uids) == [1, 2, 3, 4, 5]
    # 100,000 nodes: larger than any request the router reads
    with pytest.raises(grpc.RpcError) as ei:
        _raw_search(cl, acct, mb, b"\x08\x01" + b"\x12\x00" * 100000)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # malformed bytes, bad operands
    with pytest.raises(grpc.RpcError) as ei:
        _raw_search(cl, acct, mb, b"\x12\x05\x08")
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for key in (K("NOT"), K("NOT", K("ALL"), K("ALL")), K("OR"), K("FLAG", flag=0), K("FLAG", flag=32),
                K("HEADER", name="", value="x"), K("HEADER", name="a:b", value="x"),
                K("HEADER", name="subject", value="x" * 1001), K("LARGER", number=-1),
                K("BEFORE", number=10 ** 15), K("AND", K("ALL"), K("KEYWORD", name="\xff".encode("latin-1")
                                                                                  .decode("latin-1") * 201))):
        r = search(cl, acct, mb, key)
        assert r.code == pb.CODE_INVALID, key
    # someone else's mailbox
    other, _ = cl.account()
    assert search(cl, other, mb, K("ALL")).code == pb.CODE_NO_SUCH_MAILBOX
    # still serving
    assert list(search(cl, acct, mb, K("BODY", value="pizza")).uids) == [2]
    assert "panic" not in cl.mc.router_log(0).lower()
