"""router/blobs.c (the blob placement layer) against three real mail-store processes.

The C side is tests/interop/blob_check: one long-lived blob_cluster driven by
commands on stdin, so node health carries over while a test kills, restarts or
corrupts nodes between commands. What a command claims is checked again here,
independently: placement by recomputing the rendezvous formula, replicas by
asking each node directly with python grpcio (Stat/Get), bytes by SHA-256.
The helper must exit 0 at the end (under ASan: no leak, no error), and so must
every store that was not killed on purpose. Run with /usr/bin/python3."""
import hashlib
import os
import queue
import re
import subprocess
import threading
import time

import pytest

from conftest import Daemon, binary, free_port, gen_python

gen_python("store.proto")
import grpc  # noqa: E402
import store_pb2 as pb  # noqa: E402
import store_pb2_grpc as pbg  # noqa: E402

CHUNK = 64 * 1024
MiB = 1024 * 1024


def sha(data):
    return hashlib.sha256(data).hexdigest()


def rendezvous(names, blob_id):
    """The documented placement order: SHA-256("<name>\\n<id>")[:8] big-endian, highest first."""
    def score(n):
        return int.from_bytes(hashlib.sha256((n + "\n" + blob_id).encode()).digest()[:8], "big")
    return sorted(names, key=lambda n: (-score(n), n))


class Store:
    """One mail-store process with its own data dir and ports (restartable)."""

    def __init__(self, tmp, name):
        self.name = name
        self.dir = os.path.join(tmp, name)
        self.port = free_port()
        self.mport = free_port()
        self.log = os.path.join(tmp, name + ".log")
        self.daemon = None
        self.channel = None
        self.killed = False

    def start(self):
        argv = [binary("store", "mail-store"), "--listen=127.0.0.1:%d" % self.port,
                "--metrics-listen=127.0.0.1:%d" % self.mport, "--data-dir=" + self.dir,
                "--workers=2", "--shutdown-timeout=2s", "--min-free=0"]
        self.daemon = Daemon(argv, self.log, self.port).start()
        self.killed = False
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % self.port)
        self.stub = pbg.BlobStoreStub(self.channel)
        return self

    @property
    def pid(self):
        return self.daemon.proc.pid

    def kill9(self):
        self.daemon.kill9()
        self.killed = True
        self.channel.close()
        self.channel = None

    def stop(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.killed or self.daemon is None:
            return
        rc = self.daemon.stop()
        assert rc == 0, "%s exited %s; log:\n%s" % (self.name, rc, self.daemon.log_text()[-3000:])

    def addr(self):
        return "%s=127.0.0.1:%d" % (self.name, self.port)

    def path(self, blob_id):
        return os.path.join(self.dir, "blobs", blob_id[:2], blob_id[2:4], blob_id)

    def has(self, blob_id):
        return self.stub.Stat(pb.StatRequest(id=blob_id), timeout=5).exists

    def get(self, blob_id):
        return b"".join(m.data for m in self.stub.Get(pb.GetRequest(id=blob_id), timeout=10))

    def delete(self, blob_id):
        return self.stub.Delete(pb.DeleteRequest(id=blob_id), timeout=5).existed

    def get_calls(self):
        """store_requests_total{method="get"} from /metrics."""
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.mport, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('store_requests_total{method="get"}'):
                    return float(line.split()[-1])
        return 0.0

    def flip_byte(self, blob_id, offset):
        with open(self.path(blob_id), "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0x40]))


RESULT_RE = re.compile(r'([A-Za-z][\w-]*)=("(?:[^"\\]|\\.)*"|\S*)')


class Result(dict):
    def __init__(self, line):
        super().__init__((k, v.strip('"')) for k, v in RESULT_RE.findall(line))
        self.line = line
        self.ok = line.startswith("ok ")


class Checker:
    """tests/interop/blob_check on the given stores; cmd() runs one command."""

    def __init__(self, tmp, stores, *flags):
        self.errlog = open(os.path.join(tmp, "blob_check.%d.log" % time.monotonic_ns()), "w+")
        argv = [binary("tests", "blob_check"), "--nodes=" + ",".join(s.addr() for s in stores)]
        self.proc = subprocess.Popen(argv + list(flags), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errlog, text=True)
        self.lines = queue.Queue()
        self.events = []
        self.closed = False
        threading.Thread(target=self._reader, daemon=True).start()
        assert self._line(15).startswith("ready"), "blob_check did not start"

    def _reader(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _line(self, timeout):
        line = self.lines.get(timeout=timeout)
        assert line is not None, "blob_check exited; log:\n" + self.log()
        return line

    def log(self):
        self.errlog.flush()
        self.errlog.seek(0)
        return self.errlog.read()[-4000:]

    def cmd(self, line, timeout=30):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        while True:
            out = self._line(timeout)
            if out.startswith("event "):
                self.events.append(Result(out))
                continue
            if out.startswith("ok ") or out.startswith("FAIL "):
                return Result(out)

    def ok(self, line, timeout=30):
        r = self.cmd(line, timeout)
        assert r.ok, "%s\n-> %s\nlog:\n%s" % (line, r.line, self.log())
        return r

    def close(self):
        self.closed = True
        self.proc.stdin.close()
        rc = self.proc.wait(30)
        tail = []
        while True:
            line = self.lines.get(timeout=5)
            if line is None:
                break
            tail.append(line)
        assert rc == 0, "blob_check exited %s (%s); log:\n%s" % (rc, tail, self.log())
        assert any(t.startswith("done ") and "failures=0" in t for t in tail), tail
        self.errlog.close()


@pytest.fixture
def stores(tmp_path):
    ss = [Store(str(tmp_path), "store%d" % i) for i in (1, 2, 3)]
    for s in ss:
        s.start()
    yield ss
    for s in ss:
        s.stop()


@pytest.fixture
def checker(tmp_path, stores):
    made = []

    def make(*flags, nodes=None):
        c = Checker(str(tmp_path), nodes or stores, *flags)
        made.append(c)
        return c
    yield make
    for c in made:  # tests close theirs (and check the exit); this is for failures
        if not c.closed:
            c.proc.kill()
            c.proc.wait()


def blob_file(tmp_path, data, name=None):
    p = os.path.join(str(tmp_path), name or ("b%s" % sha(data)[:12]))
    with open(p, "wb") as f:
        f.write(data)
    return p


def by_name(stores):
    return {s.name: s for s in stores}


def names(stores):
    return [s.name for s in stores]


# ----------------------------------------------------------------------------- config


def test_store_nodes_parse():
    """The store_nodes config value: names unique, addresses host:port, errors say why."""
    def parse(*items):
        p = subprocess.run([binary("tests", "blob_check")] + ["--parse=" + s for s in items],
                           capture_output=True, text=True, timeout=10)
        return p.returncode, p.stdout.splitlines()
    rc, out = parse("store1=127.0.0.1:7201, store2=127.0.0.1:7202,s-3.b_x=[::1]:7203",
                    "a=store-a.example:1")
    assert rc == 0 and out == ["ok n=3 store1=127.0.0.1:7201 store2=127.0.0.1:7202 s-3.b_x=[::1]:7203",
                               "ok n=1 a=store-a.example:1"]
    bad = [("", "no store nodes"), ("store1", "name=host:port"),
           ("a=127.0.0.1:7201,a=127.0.0.2:7201", "name a listed twice"),
           ("a=127.0.0.1:7201,b=127.0.0.1:7201", "address 127.0.0.1:7201 listed twice"),
           ("a=127.0.0.1", "bad address"), ("a=127.0.0.1:0", "bad address"),
           ("a=127.0.0.1:65536", "bad address"), ("a b=h:1", "bad store node name"),
           ("a=h:1,,b=h:2", "empty item"), ("=h:1", "bad store node name"),
           ("a=[zz]:1", "bad address"), ("a=h:1,", "empty item")]
    rc, out = parse(*[b for b, _ in bad])
    assert rc == 1 and len(out) == len(bad)
    for (item, why), line in zip(bad, out):
        assert line.startswith("error ") and why in line, (item, line)


# ----------------------------------------------------------------------------- writes


def test_put_lands_on_rendezvous_nodes(tmp_path, stores, checker):
    """R=2: every put is acknowledged by exactly the two rendezvous nodes (recomputed
    here), exactly those two hold the blob, and the cluster reads it back."""
    c = checker("--replicas=2", "--quorum=2")
    used = set()
    sizes = [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 300 * 1024, MiB + 7] + [5000 + i for i in range(12)]
    for size in sizes:
        data = os.urandom(size)
        bid = sha(data)
        want = rendezvous(names(stores), bid)[:2]
        r = c.ok("put " + blob_file(tmp_path, data))
        assert r["id"] == bid
        assert sorted(r["nodes"].split(",")) == sorted(want), (size, r.line, want)
        assert r["place"].split(",") == want
        for s in stores:
            assert s.has(bid) == (s.name in want), (s.name, size)
        g = c.ok("get %s sha=%s bytes=%d" % (bid, bid, size))
        assert g["fallbacks"] == "0" and g["size"] == str(size)
        used.update(want)
    assert used == set(names(stores))
    p = c.ok("place " + bid)
    assert p["rank"].split(",") == rendezvous(names(stores), bid)
    c.close()


def test_put_same_content_is_idempotent(tmp_path, stores, checker):
    """The same bytes put again (and 8 times at once) succeed with the same id, say
    existed, and leave exactly one file per replica and no temp files."""
    c = checker()
    data = os.urandom(700 * 1024)
    bid = sha(data)
    f = blob_file(tmp_path, data)
    first = c.ok("put " + f)
    assert first["existed"] == "0"
    again = c.ok("put " + f)
    assert again["id"] == bid and again["existed"] == "1"
    assert sorted(again["nodes"].split(",")) == sorted(first["nodes"].split(","))
    many = c.ok("put %s n=8" % f)
    assert many["n"] == "8" and many["bad"] == "0"
    holders = [s for s in stores if s.has(bid)]
    assert sorted(s.name for s in holders) == sorted(first["nodes"].split(","))
    for s in holders:
        leaf = os.path.dirname(s.path(bid))
        assert os.listdir(leaf) == [bid]
        assert os.listdir(os.path.join(s.dir, "tmp")) == []
        assert s.get(bid) == data
    # an id that is not the content's: every node refuses it, nothing is stored
    wrong = sha(b"other bytes")
    r = c.ok("put %s id=%s expect=INVALID_ARGUMENT" % (f, wrong))
    assert "does not match" in r["err"]
    assert not any(s.has(wrong) for s in stores)
    c.ok("put %s id=NOT-HEX expect=INVALID_ARGUMENT" % f)
    c.close()
    # two store calls per node at a time: the other puts wait in the node's queue
    q = checker("--max-inflight=2")
    data = os.urandom(300 * 1024)
    r = q.ok("put %s n=16" % blob_file(tmp_path, data))
    assert r["n"] == "16" and r["bad"] == "0"
    assert sorted(r["nodes"].split(",")) == sorted(rendezvous(names(stores), sha(data))[:2])
    q.close()


def test_put_w1_answers_at_one_copy_and_finishes_in_background(tmp_path, stores, checker):
    """R=2, W=1: the callback comes at the first fsync'd copy (the caller then frees
    its buffer); the second copy still lands, from the cluster's own copy of the
    bytes, and is reported through the copy hook."""
    c = checker("--replicas=2", "--quorum=1")
    for _ in range(3):
        data = os.urandom(3 * MiB + 17)
        bid = sha(data)
        r = c.ok("put " + blob_file(tmp_path, data), timeout=60)
        c.ok("wait-background ms=20000")
        acked = r["nodes"].split(",")
        late = [e["node"] for e in c.events if e["id"] == bid]
        assert sorted(acked + late) == sorted(rendezvous(names(stores), bid)[:2]), (acked, late)
        for n in acked + late:
            assert by_name(stores)[n].get(bid) == data
    c.close()


def test_put_cancelled_midway(tmp_path, stores, checker):
    """A cancelled put calls back never; the store calls are cancelled and the nodes
    drop their temp files."""
    c = checker()
    data = os.urandom(8 * MiB)
    c.ok("put %s cancel-ms=40" % blob_file(tmp_path, data))
    end = time.monotonic() + 5
    while any(os.listdir(os.path.join(s.dir, "tmp")) for s in stores) and time.monotonic() < end:
        time.sleep(0.05)
    assert not any(os.listdir(os.path.join(s.dir, "tmp")) for s in stores)
    assert not any(s.has(sha(data)) for s in stores)
    c.ok("put " + blob_file(tmp_path, data[:1000]))  # the cluster goes on
    c.close()


def test_quorum_not_reachable_is_unavailable(tmp_path, stores, checker):
    """W=2 with one live node: UNAVAILABLE, exactly one callback, never OK - both
    when the cluster still believes the dead nodes are up and once it knows."""
    c = checker("--replicas=2", "--quorum=2")
    w1 = checker("--replicas=2", "--quorum=1")
    s1, s2, s3 = stores
    c.ok("put " + blob_file(tmp_path, os.urandom(1000)))  # connections are up
    s2.kill9()
    s3.kill9()
    for i in range(3):
        r = c.cmd("put %s expect=UNAVAILABLE" % blob_file(tmp_path, os.urandom(50 * 1024 + i)))
        assert r.ok and r["status"] == "UNAVAILABLE" and r["bad"] == "0", r.line
    c.ok("wait store2 down ms=5000")
    c.ok("wait store3 down ms=5000")
    t0 = time.monotonic()
    data = os.urandom(80 * 1024)
    r = c.ok("put %s expect=UNAVAILABLE" % blob_file(tmp_path, data))
    assert "too few live store nodes" in r["err"]
    assert time.monotonic() - t0 < 2.0  # no store call: it knows they are down
    # W=1 still writes, to the one node alive, and says which
    r = w1.ok("put " + blob_file(tmp_path, data))
    assert r["nodes"] == "store1"
    assert s1.get(sha(data)) == data
    c.ok("metrics")
    c.close()
    w1.close()


def test_put_with_one_node_down_reaches_r_on_live_nodes(tmp_path, stores, checker):
    """A node dies unnoticed: puts whose placement includes it go to the next live
    node in rendezvous order instead, and still end with 2 fsync'd copies."""
    c = checker()
    c.ok("put " + blob_file(tmp_path, b"warm up the connections"))
    dead = stores[2]
    live = [s for s in stores if s is not dead]
    blobs = []
    while len(blobs) < 6:  # blobs whose ideal placement includes the dead node
        data = os.urandom(120 * 1024)
        if dead.name in rendezvous(names(stores), sha(data))[:2]:
            blobs.append(data)
    dead.kill9()
    for data in blobs:
        bid = sha(data)
        r = c.ok("put " + blob_file(tmp_path, data))
        assert sorted(r["nodes"].split(",")) == sorted(names(live)), r.line
        for s in live:
            assert s.get(bid) == data
    c.ok("wait %s down ms=3000" % dead.name)
    assert "blob node down" in c.log()
    c.close()


# ----------------------------------------------------------------------------- reads


def test_read_falls_back_when_first_replica_killed(tmp_path, stores, checker):
    c = checker()
    data = os.urandom(600 * 1024)
    bid = sha(data)
    r = c.ok("put " + blob_file(tmp_path, data))
    first, second = rendezvous(names(stores), bid)[:2]
    by_name(stores)[first].kill9()
    g = c.ok("get %s hint=%s,%s sha=%s bytes=%d min-fallbacks=1" % (bid, first, second, bid, len(data)))
    assert g["last"] == second
    g = c.ok("get %s sha=%s" % (bid, bid))  # rendezvous order, no hint
    assert g["last"] == second
    assert r.ok
    c.close()


def test_read_falls_back_on_corrupt_copy_and_repairs_it(tmp_path, stores, checker):
    """A flipped byte on the first replica: that node answers DATA_LOSS mid-stream, the
    read continues on the second replica from the same byte, and the corrupt copy is
    restored in the background (python Stat/Get on that node then succeed)."""
    c = checker()
    data = os.urandom(5 * CHUNK + 1234)
    bid = sha(data)
    c.ok("put " + blob_file(tmp_path, data))
    first, second = rendezvous(names(stores), bid)[:2]
    bad = by_name(stores)[first]
    bad.flip_byte(bid, 3 * CHUNK + 10)  # blocks 0-2 stream fine, block 3 is corrupt
    g = c.ok("get %s hint=%s,%s sha=%s bytes=%d min-fallbacks=1" % (bid, first, second, bid, len(data)))
    assert g["last"] == second
    c.ok("wait-background ms=10000")
    assert bad.has(bid)
    assert bad.get(bid) == data
    assert any(e["id"] == bid and e["node"] == first for e in c.events), c.events
    m = c.ok("metrics")
    assert int(m["repair"]) == 1 and int(m["fallback"]) >= 1
    assert "blob repaired" in c.log()
    # a copy that is simply missing is repaired the same way; a read without a
    # hint goes in rendezvous order and repairs only the rendezvous nodes
    assert bad.delete(bid)
    g = c.ok("get %s sha=%s min-fallbacks=1" % (bid, bid))
    assert g["last"] == second
    c.ok("wait-background ms=10000")
    assert bad.get(bid) == data
    assert int(c.ok("metrics")["repair"]) == 2
    third = [s for s in stores if s.name not in (first, second)][0]
    assert not third.has(bid)
    c.close()


def test_replica_killed_during_large_streaming_read(tmp_path, stores, checker):
    """8 MiB read: after 1 MiB has been delivered the node streaming it is killed;
    the rest comes from the other replica and the reassembled bytes match."""
    c = checker()
    data = os.urandom(8 * MiB)
    bid = sha(data)
    c.ok("put " + blob_file(tmp_path, data), timeout=60)
    order = rendezvous(names(stores), bid)[:2]
    pids = ",".join("%s:%d" % (s.name, s.pid) for s in stores)
    g = c.ok("get %s hint=%s sha=%s bytes=%d kill-after=%d pids=%s min-fallbacks=1"
             % (bid, ",".join(order), bid, len(data), MiB, pids), timeout=60)
    assert g["killed"] == order[0] and g["last"] == order[1]
    by_name(stores)[order[0]].killed = True
    by_name(stores)[order[0]].daemon.proc.wait(5)
    c.close()


def test_slow_reader_back_pressure(tmp_path, stores, checker):
    """A reader that pauses every 512 KiB: the cluster holds a bounded buffer, drops
    its store call and resumes with range reads - the bytes still come out right."""
    c = checker("--get-buffer=131072", "--log-level=debug")
    data = os.urandom(4 * MiB + 99)
    bid = sha(data)
    c.ok("put " + blob_file(tmp_path, data), timeout=60)
    first = rendezvous(names(stores), bid)[0]
    before = by_name(stores)[first].get_calls()
    g = c.ok("get %s sha=%s bytes=%d pause-every=524288 pause-ms=100" % (bid, bid, len(data)), timeout=60)
    assert g["fallbacks"] == "0" and g["last"] == first
    assert by_name(stores)[first].get_calls() - before >= 3  # resumed with range reads
    assert "store call dropped" in c.log()
    # a cancelled read: no callback afterwards (checked by the helper)
    c.ok("get %s cancel-after=300000 expect=CANCELLED" % bid)
    c.close()


def test_range_reads(tmp_path, stores, checker):
    c = checker()
    data = os.urandom(MiB + 123)
    bid = sha(data)
    c.ok("put " + blob_file(tmp_path, data))
    n = len(data)
    for off, ln in [(0, 1), (1, 100), (CHUNK - 1, 2), (CHUNK, CHUNK), (500000, 300000),
                    (n - 10, 0), (n - 10, 1000), (0, n), (12345, 0)]:
        want = data[off:off + ln] if ln else data[off:]
        g = c.ok("get %s offset=%d length=%d sha=%s bytes=%d" % (bid, off, ln, sha(want), len(want)))
        assert g["size"] == str(n)
    c.ok("get %s offset=%d sha=%s bytes=0" % (bid, n, sha(b"")))
    c.ok("get %s offset=%d expect=OUT_OF_RANGE" % (bid, n + 1))
    c.ok("get %s expect=NOT_FOUND" % ("ab" * 32))
    c.ok("get not-an-id expect=INVALID_ARGUMENT")
    # a range read whose first replica lost its copy falls back and repairs it
    first, second = rendezvous(names(stores), bid)[:2]
    assert by_name(stores)[first].delete(bid)
    want = data[200000:200000 + 70000]
    g = c.ok("get %s offset=200000 length=70000 sha=%s min-fallbacks=1" % (bid, sha(want)))
    assert g["last"] == second
    c.ok("wait-background ms=10000")
    assert by_name(stores)[first].get(bid) == data
    c.close()


# ----------------------------------------------------------------------------- repair primitives


def test_copy_between_nodes(tmp_path, stores, checker):
    """blob_copy streams a 5 MiB blob from one node into another (verified there by
    expected_id); copying again says existed; missing source is NOT_FOUND."""
    c = checker()
    data = os.urandom(5 * MiB + 3)
    bid = sha(data)
    c.ok("put " + blob_file(tmp_path, data), timeout=60)
    src, _, dst = rendezvous(names(stores), bid)
    target = by_name(stores)[dst]
    assert not target.has(bid)
    r = c.ok("copy %s %s %s existed=0 size=%d" % (bid, src, dst, len(data)), timeout=60)
    assert target.has(bid) and sha(target.get(bid)) == bid
    c.ok("copy %s %s %s existed=1" % (bid, src, dst))
    c.ok("stat %s %s exists=1 size=%d" % (bid, dst, len(data)))
    c.ok("copy %s %s %s expect=NOT_FOUND" % ("cd" * 32, src, dst))
    c.ok("copy %s %s %s expect=INVALID_ARGUMENT" % (bid, src, src))
    c.ok("copy %s %s nosuchnode expect=INVALID_ARGUMENT" % (bid, src))
    # the empty blob too
    c.ok("put " + blob_file(tmp_path, b"", "empty"))
    e = sha(b"")
    holders = rendezvous(names(stores), e)
    c.ok("copy %s %s %s existed=0 size=0" % (e, holders[0], holders[2]))
    assert by_name(stores)[holders[2]].has(e)
    assert r.ok
    c.close()


def test_stat_delete_list(tmp_path, stores, checker):
    c = checker()
    ids = []
    for i in range(5):
        data = os.urandom(1000 + i)
        c.ok("put " + blob_file(tmp_path, data))
        ids.append(sha(data))
    s1 = stores[0].name
    mine = sorted(i for i in ids if s1 in rendezvous(names(stores), i)[:2])
    lst = c.ok("list %s count=%d" % (s1, len(mine)))
    assert (lst["ids"].split(",") if mine else [""]) == (mine or [""])
    if mine:
        c.ok("stat %s %s exists=1" % (mine[0], s1))
        c.ok("delete %s %s existed=1" % (mine[0], s1))
        c.ok("stat %s %s exists=0" % (mine[0], s1))
        c.ok("delete %s %s existed=0" % (mine[0], s1))
        c.ok("list %s after=%s count=%d" % (s1, mine[0], len(mine) - 1))
    c.ok("list %s limit=1 count=%d" % (s1, min(1, max(len(mine) - 1, 0))))
    c.ok("stat %s nosuchnode expect=INVALID_ARGUMENT" % ids[0])
    c.ok("stat xyz %s expect=INVALID_ARGUMENT" % s1)
    c.close()


# ----------------------------------------------------------------------------- health


def test_hung_node(tmp_path, stores, checker):
    """A node that stops answering (SIGSTOP; its socket still accepts): a read moves on
    when its stream stalls, a put placed on it times out there and goes to the next
    node, and the probe marks it down - then up again after SIGCONT."""
    import signal as sig
    c = checker("--stall-ms=500", "--call-timeout-ms=1000")
    data = os.urandom(300 * 1024)
    bid = sha(data)
    c.ok("put " + blob_file(tmp_path, data))
    first, second = rendezvous(names(stores), bid)[:2]
    hung = by_name(stores)[first]
    os.kill(hung.pid, sig.SIGSTOP)
    try:
        t0 = time.monotonic()
        g = c.ok("get %s hint=%s,%s sha=%s min-fallbacks=1" % (bid, first, second, bid))
        assert g["last"] == second
        assert time.monotonic() - t0 < 5
        while True:
            other = os.urandom(2000)
            if first in rendezvous(names(stores), sha(other))[:2]:
                break
        r = c.ok("put " + blob_file(tmp_path, other))
        assert first not in r["nodes"].split(",")
        c.ok("wait %s down ms=3000" % first)
    finally:
        os.kill(hung.pid, sig.SIGCONT)
    c.ok("wait %s up ms=5000" % first)
    c.close()


def test_node_health_down_and_back_up(tmp_path, stores, checker):
    """A killed node is marked down by the probe, a restarted one up again; then
    writes placed on it go there again."""
    c = checker("--probe-ms=200")
    s = stores[0]
    c.ok("wait %s up" % s.name)
    s.kill9()
    r = c.ok("wait %s down ms=3000" % s.name)
    assert int(r["elapsed_ms"]) < 3000 and r["gauge"] == "0"  # blob_node_up{node=...}
    # while it is down, a per-node call fails fast and writes avoid it
    c.ok("stat %s %s expect=UNAVAILABLE" % ("00" * 32, s.name))
    while True:
        data = os.urandom(4096)
        if s.name in rendezvous(names(stores), sha(data))[:2]:
            break
    r = c.ok("put " + blob_file(tmp_path, data))
    assert s.name not in r["nodes"].split(",")
    s.start()
    r = c.ok("wait %s up ms=5000" % s.name)
    assert r["gauge"] == "1"
    data = data + b"x"
    while s.name not in rendezvous(names(stores), sha(data))[:2]:
        data = os.urandom(4096)
    r = c.ok("put " + blob_file(tmp_path, data))
    assert s.name in r["nodes"].split(",")
    assert s.has(sha(data))
    assert "blob node up" in c.log() and "blob node down" in c.log()
    c.close()
