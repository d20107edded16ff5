"""mail-store driven by the stock python grpcio client (run with /usr/bin/python3).

Each test talks to a real mail-store process on loopback ports and checks
what is on disk where that is the point (one file per blob, nothing left in
tmp/, the quarantine). Every daemon is stopped with SIGTERM and must exit 0,
which under the sanitizer build also means no leak and no UB report."""
import hashlib
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import Daemon, binary, free_port, gen_python

gen_python("store.proto")
import grpc  # noqa: E402
import store_pb2 as pb  # noqa: E402
import store_pb2_grpc as pbg  # noqa: E402

CHUNK = 64 * 1024


class Store:
    """One mail-store process with its own data dir and ports."""

    def __init__(self, tmp, name="s", extra=()):
        self.dir = os.path.join(tmp, name)
        self.port = free_port()
        self.mport = free_port()
        self.argv = [binary("store", "mail-store"), "--listen=127.0.0.1:%d" % self.port,
                     "--metrics-listen=127.0.0.1:%d" % self.mport, "--data-dir=" + self.dir,
                     "--workers=2", "--shutdown-timeout=2s"] + list(extra)
        self.log = os.path.join(tmp, name + ".log")
        self.daemon = None
        self.channel = None

    def start(self):
        self.daemon = Daemon(self.argv, self.log, self.port).start()
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % self.port)
        self.stub = pbg.BlobStoreStub(self.channel)
        return self

    def stop(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        rc = self.daemon.stop()
        assert rc == 0, "mail-store exited %s; log:\n%s" % (rc, self.daemon.log_text()[-4000:])

    def kill9(self):
        self.daemon.kill9()  # first: closing the channel would cancel the calls cleanly
        self.channel.close()
        self.channel = None

    def http(self, path):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.mport, path), timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name):
        _, text = self.http("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def path(self, blob_id):
        return os.path.join(self.dir, "blobs", blob_id[:2], blob_id[2:4], blob_id)

    def files(self, sub):
        d = os.path.join(self.dir, sub)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    # --- calls
    def put(self, data, expected_id="", size_hint=0, chunk=CHUNK, timeout=30):
        def reqs():
            first = True
            for i in range(0, max(len(data), 1), chunk):
                if first:
                    yield pb.PutRequest(expected_id=expected_id, size_hint=size_hint,
                                        data=data[i:i + chunk])
                    first = False
                else:
                    yield pb.PutRequest(data=data[i:i + chunk])
        return self.stub.Put(reqs(), timeout=timeout)

    def get(self, blob_id, offset=0, length=0, timeout=30):
        size = None
        parts = []
        for m in self.stub.Get(pb.GetRequest(id=blob_id, offset=offset, length=length),
                               timeout=timeout):
            if size is None:
                size = m.size
            assert len(m.data) <= CHUNK
            parts.append(m.data)
        return size, b"".join(parts)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def code_of(excinfo):
    return excinfo.value.code()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(str(tmp_path_factory.mktemp("store"))).start()
    yield s
    s.stop()


@pytest.fixture
def fresh(tmpdir_short):
    started = []

    def make(name="f", extra=()):
        s = Store(tmpdir_short, name, extra).start()
        started.append(s)
        return s
    yield make
    for s in started:
        if s.daemon.proc.poll() is None:
            s.stop()


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 30 * 1024 * 1024])
def test_round_trip(store, size):
    data = os.urandom(size)
    r = store.put(data, size_hint=size)
    assert r.id == sha(data)
    assert r.size == size
    assert not r.existed
    got_size, got = store.get(r.id)
    assert got_size == size
    assert got == data
    st = store.stub.Stat(pb.StatRequest(id=r.id))
    assert st.exists and st.size == size
    assert os.path.exists(store.path(r.id))
    assert store.files("tmp") == []


def test_ranges(store):
    data = os.urandom(3 * CHUNK + 100)
    bid = store.put(data).id
    cases = [(0, 1), (CHUNK - 1, 2), (CHUNK, CHUNK), (2 * CHUNK - 1, CHUNK + 2),
             (100, 0), (3 * CHUNK, 0), (3 * CHUNK + 50, 1000), (len(data), 0)]
    for off, ln in cases:
        size, got = store.get(bid, off, ln)
        assert size == len(data)
        end = len(data) if ln == 0 else min(len(data), off + ln)
        assert got == data[off:end], (off, ln)
    with pytest.raises(grpc.RpcError) as e:
        store.get(bid, len(data) + 1)
    assert code_of(e) == grpc.StatusCode.OUT_OF_RANGE


def test_concurrent_same_blob(store):
    data = os.urandom(200 * 1024)
    bid = sha(data)
    barrier = threading.Barrier(8)
    results, errors = [], []

    def one():
        barrier.wait()
        try:
            results.append(store.put(data))
        except grpc.RpcError as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 8
    assert all(r.id == bid and r.size == len(data) for r in results)
    assert sum(1 for r in results if not r.existed) >= 1
    leaf = os.path.dirname(store.path(bid))
    assert [f for f in os.listdir(leaf) if f == bid] == [bid]
    assert store.files("tmp") == []
    assert store.get(bid)[1] == data


def test_expected_id_mismatch(store):
    data = os.urandom(5000)
    wrong = sha(b"something else")
    with pytest.raises(grpc.RpcError) as e:
        store.put(data, expected_id=wrong)
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    for bid in (wrong, sha(data)):
        assert not store.stub.Stat(pb.StatRequest(id=bid)).exists
        assert not os.path.exists(store.path(bid))
    assert store.files("tmp") == []
    # the right expected id is accepted
    assert store.put(data, expected_id=sha(data)).id == sha(data)


def test_bad_requests(store):
    with pytest.raises(grpc.RpcError) as e:
        store.put(os.urandom(CHUNK + 1), chunk=CHUNK + 1)
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert store.files("tmp") == []
    for bad in ("", "abc", "A" * 64, "g" * 64, "0" * 65, "../" + "0" * 61):
        with pytest.raises(grpc.RpcError) as e:
            store.get(bad)
        assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT, bad
        with pytest.raises(grpc.RpcError) as e:
            store.stub.Stat(pb.StatRequest(id=bad))
        assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT, bad
        with pytest.raises(grpc.RpcError) as e:
            store.stub.Delete(pb.DeleteRequest(id=bad))
        assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT, bad
    with pytest.raises(grpc.RpcError) as e:
        store.put(b"x", expected_id="XYZ")
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        store.stub.List(pb.ListRequest(after="nothex"))
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        store.get("0" * 64)
    assert code_of(e) == grpc.StatusCode.NOT_FOUND


def test_max_blob_size(fresh):
    s = fresh("small", ["--max-blob-size=100K"])
    with pytest.raises(grpc.RpcError) as e:
        s.put(os.urandom(1000), size_hint=200 * 1024)
    assert code_of(e) == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as e:
        s.put(os.urandom(150 * 1024))
    assert code_of(e) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert s.files("tmp") == []
    assert s.put(os.urandom(100 * 1024)).size == 100 * 1024


def test_corrupt_file_detected(store):
    data = os.urandom(3 * CHUNK)
    bid = store.put(data).id
    before = store.metric("store_corrupt_total")
    path = store.path(bid)
    with open(path, "r+b") as f:
        f.seek(CHUNK + 1234)
        b = f.read(1)
        f.seek(CHUNK + 1234)
        f.write(bytes([b[0] ^ 0x01]))
    # a range in an intact block is still served correctly
    assert store.get(bid, 10, 100)[1] == data[10:110]
    received = []
    with pytest.raises(grpc.RpcError) as e:
        for m in store.stub.Get(pb.GetRequest(id=bid), timeout=10):
            received.append(m.data)
    assert code_of(e) == grpc.StatusCode.DATA_LOSS
    # no byte of the bad block was sent
    assert b"".join(received) == data[:len(b"".join(received))]
    assert len(b"".join(received)) <= CHUNK
    assert store.metric("store_corrupt_total") == before + 1
    assert not os.path.exists(path)
    assert bid in store.files("quarantine")
    assert not store.stub.Stat(pb.StatRequest(id=bid)).exists
    # a repair re-put brings it back
    r = store.put(data, expected_id=bid)
    assert not r.existed
    assert store.get(bid)[1] == data


def test_kill9_during_put(fresh):
    s = fresh("k9")
    data = os.urandom(20 * CHUNK)
    bid = sha(data)
    release = threading.Event()

    def half():
        for i in range(10):
            yield pb.PutRequest(data=data[i * CHUNK:(i + 1) * CHUNK])
        release.wait(20)
    fut = s.stub.Put.future(half(), timeout=30)
    tmpdir = os.path.join(s.dir, "tmp")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = os.listdir(tmpdir)
        if names and os.path.getsize(os.path.join(tmpdir, names[0])) >= 10 * CHUNK:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the half put never reached the store's temp file")
    s.kill9()
    release.set()
    with pytest.raises(grpc.RpcError):
        fut.result()
    assert os.listdir(tmpdir) != []          # the dead process left its temp file
    assert not os.path.exists(s.path(bid))   # but no blob
    s.start()
    assert s.files("tmp") == []
    assert not s.stub.Stat(pb.StatRequest(id=bid)).exists
    with pytest.raises(grpc.RpcError) as e:
        s.get(bid)
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    r = s.put(data)
    assert r.id == bid and not r.existed
    assert s.get(bid)[1] == data


def test_stat_delete_list(fresh):
    s = fresh("list")
    ids = sorted(s.put(b"blob %d" % i).id for i in range(30))
    # paging
    seen, after, pages = [], "", 0
    while True:
        r = s.stub.List(pb.ListRequest(after=after, limit=7))
        pages += 1
        seen += [b.id for b in r.blobs]
        for b in r.blobs:
            assert b.size == len(b"blob %d" % 0) or b.size == len(b"blob 10")
        if not r.more:
            break
        after = r.blobs[-1].id
        assert pages < 10
    assert seen == ids
    assert pages == 5
    assert [b.id for b in s.stub.List(pb.ListRequest()).blobs] == ids  # default limit
    assert list(s.stub.List(pb.ListRequest(after=ids[-1])).blobs) == []
    # stat / delete
    st = s.stub.Stat(pb.StatRequest(id=ids[5]))
    assert st.exists and st.size in (6, 7)
    assert s.stub.Delete(pb.DeleteRequest(id=ids[5])).existed
    assert not s.stub.Delete(pb.DeleteRequest(id=ids[5])).existed
    assert not s.stub.Stat(pb.StatRequest(id=ids[5])).exists
    assert not os.path.exists(s.path(ids[5]))
    r = s.stub.List(pb.ListRequest(after=ids[4], limit=1))
    assert [b.id for b in r.blobs] == [ids[6]] and r.more
    assert s.metric("store_blobs") == 29


def test_disk_nearly_full(fresh):
    s = fresh("full", ["--min-free=1000T"])
    with pytest.raises(grpc.RpcError) as e:
        s.put(b"hello")
    assert code_of(e) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert s.files("tmp") == []
    status, body = s.http("/readyz")
    assert status == 503 and "data_dir" in body
    assert s.http("/healthz")[0] == 200


def test_http_endpoints(store):
    store.put(b"for the metrics")
    status, _ = store.http("/healthz")
    assert status == 200
    status, _ = store.http("/readyz")
    assert status == 200
    status, text = store.http("/metrics")
    assert status == 200
    assert 'store_requests_total{method="put"}' in text
    assert store.metric('store_requests_total{method="put"}') >= 1
    assert store.metric("store_put_bytes_total") >= len(b"for the metrics")
    assert store.metric("store_disk_free_bytes") > 0
    assert store.metric("store_disk_total_bytes") >= store.metric("store_disk_free_bytes")
    assert store.metric("store_blobs") >= 1
    assert store.metric("store_fsync_batch_size_count") >= 1
    assert "store_request_seconds_bucket" in text


def test_command_line(tmpdir_short):
    exe = binary("store", "mail-store")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    for key in ("--data-dir", "--min-free", "--max-blob-size", "--sync-mode", "--listen",
                "--metrics-listen", "--tls-cert"):
        assert key in r.stdout
    r = subprocess.run([exe, "--check-config", "--data-dir=" + tmpdir_short], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([exe, "--check-config", "--data-dir=/x", "--no-such-key=1"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "no-such-key" in r.stderr
    r = subprocess.run([exe, "--check-config"], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "data_dir" in r.stderr
    r = subprocess.run([exe, "--check-config", "--data-dir=/x", "--sync-mode=fast"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "sync_mode" in r.stderr
    cfg = os.path.join(tmpdir_short, "store.conf")
    with open(cfg, "w") as f:
        f.write("data_dir = /x\nbogus_key = 1\n")
    r = subprocess.run([exe, "--config", cfg, "--check-config"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode != 0 and "bogus_key" in r.stderr


def test_sigterm_with_put_in_flight(fresh):
    s = fresh("term", ["--shutdown-timeout=1s"])
    s.put(b"settled")
    release = threading.Event()

    def stalled():
        yield pb.PutRequest(data=b"x" * 1000)
        release.wait(20)
    fut = s.stub.Put.future(stalled(), timeout=30)
    deadline = time.monotonic() + 10
    while not s.files("tmp") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.files("tmp") != []
    t0 = time.monotonic()
    s.daemon.proc.send_signal(signal.SIGTERM)
    assert s.daemon.proc.wait(15) == 0, s.daemon.log_text()[-3000:]
    assert time.monotonic() - t0 < 10
    release.set()
    with pytest.raises(grpc.RpcError):
        fut.result()
    assert "draining" in s.daemon.log_text()
    s.channel.close()
    s.channel = None
    # the cancelled put left nothing behind; a restart is clean
    s.start()
    assert s.files("tmp") == []
    assert s.stub.Stat(pb.StatRequest(id=sha(b"settled"))).exists


def test_tls_and_reload(fresh, tmpdir_short):
    cert = os.path.join(tmpdir_short, "cert.pem")
    key = os.path.join(tmpdir_short, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    s = fresh("tls", ["--tls-cert=" + cert, "--tls-key=" + key])
    with open(cert, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())

    def tls_stub():
        ch = grpc.secure_channel("127.0.0.1:%d" % s.port, creds,
                                 options=[("grpc.ssl_target_name_override", "localhost")])
        return ch, pbg.BlobStoreStub(ch)
    ch, stub = tls_stub()
    data = os.urandom(100000)
    r = stub.Put(iter([pb.PutRequest(data=data[:CHUNK]), pb.PutRequest(data=data[CHUNK:])]),
                 timeout=10)
    assert r.id == sha(data)
    assert b"".join(m.data for m in stub.Get(pb.GetRequest(id=r.id), timeout=10)) == data
    ch.close()
    # plaintext h2c is not served on a TLS listener
    with pytest.raises(grpc.RpcError) as e:
        s.stub.Stat(pb.StatRequest(id=r.id), timeout=3)
    assert code_of(e) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # SIGHUP reloads the certificate; new connections still work
    s.daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "tls=reloaded" not in s.daemon.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "tls=reloaded" in s.daemon.log_text()
    ch, stub = tls_stub()
    assert stub.Stat(pb.StatRequest(id=r.id), timeout=10).exists
    ch.close()


def test_put_deadline_cleans_up(store):
    release = threading.Event()

    def stalled():
        yield pb.PutRequest(data=b"y" * 5000)
        release.wait(10)
    with pytest.raises(grpc.RpcError) as e:
        store.stub.Put(stalled(), timeout=0.5)
    release.set()
    assert code_of(e) == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while store.files("tmp") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.files("tmp") == []
    assert not store.stub.Stat(pb.StatRequest(id=sha(b"y" * 5000))).exists
