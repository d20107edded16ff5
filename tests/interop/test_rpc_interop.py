"""gRPC interop: our runtime (proto/rpc_*.c) against stock gRPC (Debian's
python3-grpcio), both ways. Run with /usr/bin/python3 -m pytest.

  python grpcio client -> rpc_echo_server (C): unary, client/server streaming,
      deadlines, error status with non-ASCII/percent text, metadata, message
      size limit, 100 concurrent calls, TLS with ALPN h2; plus curl and raw
      sockets for what grpcio never sends (415, bad frames, garbage).
  rpc_echo_client (C) -> a python grpcio Echo server: the same scenarios,
      TLS, a server killed mid-call (UNAVAILABLE, then reconnect), a response
      without grpc-status, nothing listening, keepalive on a frozen peer.
  graceful drain (rpc_echo_server --daemon, SIGTERM as in the services): the
      replies of running and of just-finished calls reach a grpcio client
      whole with OK, over h2c and TLS, and the server then exits by itself;
      a peer that never answers the drain PING does not hold it up.

This file is also the python Echo server: `python3 test_rpc_interop.py serve
--port=N [--tls-cert=F --tls-key=F]` (run as a subprocess so that it can be
killed with SIGKILL)."""
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO = "mail.test.v1.Echo"

# scenarios of rpc_echo_client that every healthy server must pass
SCENARIOS = ["unary", "client_stream", "server_stream", "server_stream_big",
             "client_stream_big", "deadline", "error", "big", "too_big",
             "reply_too_big", "concurrent", "cancel", "unimplemented"]

ERROR_TEXT = "bad thing: 100% d\u00e9j\u00e0 vu \u2713 \"q\" %41\ttab"


# ---------------------------------------------------------------- python server

def _status_code(n):
    import grpc
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c
    return grpc.StatusCode.UNKNOWN


def serve(argv):
    """The python grpcio Echo server (subprocess mode)."""
    from concurrent import futures
    import grpc
    import echo_pb2
    import echo_pb2_grpc

    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))

    def pause(req, ctx):
        end = time.monotonic() + req.delay_ms / 1000.0
        while time.monotonic() < end and ctx.is_active():
            time.sleep(0.005)

    def fail(code, message, ctx):
        if code:
            ctx.abort(_status_code(code), message)

    def md(ctx):
        return dict(ctx.invocation_metadata()).get("x-test", "")

    class Echo(echo_pb2_grpc.EchoServicer):
        def Unary(self, req, ctx):
            pause(req, ctx)
            fail(req.fail_code, req.fail_message, ctx)
            return echo_pb2.EchoReply(payload=req.payload, count=1, metadata=md(ctx))

        def ClientStream(self, reqs, ctx):
            parts, n, code, msg = [], 0, 0, ""
            for r in reqs:
                parts.append(r.payload)
                n += 1
                if r.fail_code:
                    code, msg = r.fail_code, r.fail_message
            fail(code, msg, ctx)
            return echo_pb2.EchoReply(payload=b"".join(parts), count=n, metadata=md(ctx))

        def ServerStream(self, req, ctx):
            pause(req, ctx)
            fail(req.fail_code, req.fail_message, ctx)
            for i in range(req.count):
                yield echo_pb2.EchoReply(payload=req.payload, count=i, metadata=md(ctx))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    addr = "127.0.0.1:%s" % opts["port"]
    if "tls-cert" in opts:
        with open(opts["tls-cert"], "rb") as f:
            cert = f.read()
        with open(opts["tls-key"], "rb") as f:
            key = f.read()
        server.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
    else:
        server.add_insecure_port(addr)
    server.start()
    signal.signal(signal.SIGTERM, lambda *a: server.stop(0))
    print("ready", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2:]))
    sys.exit("usage: test_rpc_interop.py serve --port=N [--tls-cert=F --tls-key=F]")


# ----------------------------------------------------------------- fixtures

import pytest  # noqa: E402
from conftest import BUILD, GEN, Daemon, binary, free_port, gen_python, wait_port  # noqa: E402


@pytest.fixture(scope="session")
def pb():
    gen_python("echo.proto")
    import grpc  # noqa: F401
    import echo_pb2
    import echo_pb2_grpc
    return echo_pb2, echo_pb2_grpc


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """A self-signed certificate for localhost (and 127.0.0.1)."""
    d = tmp_path_factory.mktemp("certs")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def start_c_server(tmp_path, *extra, name="c-server"):
    port = free_port()
    d = Daemon([binary("tests", "rpc_echo_server"), "--listen=127.0.0.1:%d" % port] + list(extra),
               str(tmp_path / (name + ".log")), port=port)
    d.start()
    return d


def stop_c_server(d):
    rc = d.stop()
    assert rc == 0, "C server exited %s (sanitizer error or leak?):\n%s" % (rc, d.log_text()[-4000:])


class PyServer:
    """The python grpcio Echo server in a subprocess."""

    def __init__(self, log_path, port=None, tls=None):
        self.port = port or free_port()
        self.log_path = log_path
        self.tls = tls
        self.proc = None

    def start(self):
        argv = [sys.executable, os.path.abspath(__file__), "serve", "--port=%d" % self.port]
        if self.tls:
            argv += ["--tls-cert=" + self.tls[0], "--tls-key=" + self.tls[1]]
        env = dict(os.environ, PYTHONPATH=GEN)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL, env=env)
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", "python server did not start: %r" % line
        wait_port(self.port, 10, self.proc)
        return self

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def c_server(tmp_path_factory):
    d = start_c_server(tmp_path_factory.mktemp("csrv"))
    yield d
    stop_c_server(d)


@pytest.fixture(scope="module")
def py_server(pb, tmp_path_factory):
    s = PyServer(str(tmp_path_factory.mktemp("pysrv") / "py-server.log")).start()
    yield s
    s.stop()


@pytest.fixture
def stub(pb, c_server):
    import grpc
    echo_pb2, echo_pb2_grpc = pb
    ch = grpc.insecure_channel("127.0.0.1:%d" % c_server.port)
    yield echo_pb2_grpc.EchoStub(ch)
    ch.close()


def run_client(target, *scenarios, extra=(), timeout=90):
    """rpc_echo_client: returns (rc, output); every check line is printed."""
    p = subprocess.run([binary("tests", "rpc_echo_client"), "--target=" + target]
                       + list(extra) + list(scenarios),
                       capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    print(out)
    return p.returncode, out


def assert_client_ok(rc, out, scenarios):
    assert rc == 0, out
    assert not [l for l in out.splitlines() if l.startswith("FAIL")], out
    for sc in scenarios:
        assert ("ok %s:" % sc) in out, "scenario %s did not run:\n%s" % (sc, out)


# ------------------------------------------------- python client -> C server

def test_py_unary_and_metadata(pb, stub):
    echo_pb2, _ = pb
    md = [("x-test", "v1 with spaces, symbols !#$%&*+"), ("x-blob-bin", b"\x00\xff\x10binary")]
    rep = stub.Unary(echo_pb2.EchoRequest(payload=b"hello from python"), metadata=md, timeout=5)
    assert rep.payload == b"hello from python"
    assert rep.count == 1
    assert rep.metadata == "v1 with spaces, symbols !#$%&*+"
    rep = stub.Unary(echo_pb2.EchoRequest(), timeout=5)  # empty message
    assert rep.payload == b"" and rep.metadata == ""


def test_py_client_stream(pb, stub):
    echo_pb2, _ = pb
    parts = [b"one", b"", b"two", b"three" * 1000]
    rep = stub.ClientStream(iter([echo_pb2.EchoRequest(payload=p) for p in parts]), timeout=5)
    assert rep.payload == b"".join(parts)
    assert rep.count == 4


def test_py_server_stream(pb, stub):
    echo_pb2, _ = pb
    reps = list(stub.ServerStream(echo_pb2.EchoRequest(payload=b"s", count=10), timeout=5))
    assert [r.count for r in reps] == list(range(10))
    assert all(r.payload == b"s" for r in reps)
    # 200 x 64 KiB: stream flow control and on_writable back-pressure in the server
    chunk = bytes(range(256)) * 256
    n = 0
    for i, r in enumerate(stub.ServerStream(echo_pb2.EchoRequest(payload=chunk, count=200), timeout=30)):
        assert r.count == i and r.payload == chunk
        n += 1
    assert n == 200


def test_py_big_message(pb, stub):
    echo_pb2, _ = pb
    payload = os.urandom(3 << 20)
    rep = stub.Unary(echo_pb2.EchoRequest(payload=payload), timeout=20)
    assert rep.payload == payload


def test_py_deadline_expires(pb, stub, c_server):
    import grpc
    echo_pb2, _ = pb
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        stub.Unary(echo_pb2.EchoRequest(payload=b"late", delay_ms=3000), timeout=0.3)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 1.5
    # the server-side handler was cancelled (on_cancel ran), not left running
    deadline = time.monotonic() + 3
    while "echo call cancelled" not in c_server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "echo call cancelled" in c_server.log_text()
    assert stub.Unary(echo_pb2.EchoRequest(payload=b"ok"), timeout=5).payload == b"ok"


def test_server_enforces_grpc_timeout(c_server):
    """curl has no deadline of its own: the DEADLINE_EXCEEDED comes from our server."""
    req = bytes([0x0a, 0x01, ord("x"), 0x18, 0xb8, 0x17])  # payload "x", delay_ms 3000
    body = b"\x00" + struct.pack(">I", len(req)) + req
    t0 = time.monotonic()
    p = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
                        "-H", "content-type: application/grpc", "-H", "te: trailers",
                        "-H", "grpc-timeout: 200m", "--data-binary", "@-",
                        "http://127.0.0.1:%d/%s/Unary" % (c_server.port, ECHO)],
                       input=body, capture_output=True, timeout=10)
    elapsed = time.monotonic() - t0
    headers = p.stdout.decode().lower()
    assert "grpc-status: 4" in headers, headers
    assert 0.15 < elapsed < 2.0


def test_py_error_status_and_message(pb, stub):
    import grpc
    echo_pb2, _ = pb
    with pytest.raises(grpc.RpcError) as ei:
        stub.Unary(echo_pb2.EchoRequest(fail_code=9, fail_message=ERROR_TEXT), timeout=5)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ei.value.details() == ERROR_TEXT
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.ServerStream(echo_pb2.EchoRequest(count=3, fail_code=5, fail_message="gone"), timeout=5))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND and ei.value.details() == "gone"


def test_py_message_over_max_refused(pb, stub):
    import grpc
    echo_pb2, _ = pb
    with pytest.raises(grpc.RpcError) as ei:
        stub.Unary(echo_pb2.EchoRequest(payload=b"\0" * (5 << 20)), timeout=10)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in ei.value.details()
    # the connection is fine afterwards
    assert stub.Unary(echo_pb2.EchoRequest(payload=b"next"), timeout=5).payload == b"next"


def test_py_unimplemented(pb, c_server):
    import grpc
    with grpc.insecure_channel("127.0.0.1:%d" % c_server.port) as ch:
        call = ch.unary_unary("/%s/Nope" % ECHO)
        with pytest.raises(grpc.RpcError) as ei:
            call(b"", timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_py_100_concurrent_threads(pb, stub):
    from concurrent import futures
    echo_pb2, _ = pb
    barrier = threading.Barrier(100)

    def one(i):
        barrier.wait(10)
        rep = stub.Unary(echo_pb2.EchoRequest(payload=b"t%d" % i, delay_ms=50),
                         metadata=[("x-test", "m%d" % i)], timeout=20)
        return rep.payload == b"t%d" % i and rep.metadata == "m%d" % i

    with futures.ThreadPoolExecutor(100) as ex:
        results = list(ex.map(one, range(100)))
    assert all(results)
    # and 300 futures in flight on the one channel
    futs = [stub.Unary.future(echo_pb2.EchoRequest(payload=b"f%d" % i), timeout=20) for i in range(300)]
    assert [f.result().payload for f in futs] == [b"f%d" % i for i in range(300)]


def test_py_tls_alpn_h2(pb, certs, tmp_path):
    import grpc
    echo_pb2, echo_pb2_grpc = pb
    cert, key = certs
    d = start_c_server(tmp_path, "--tls-cert=" + cert, "--tls-key=" + key, name="c-tls")
    try:
        with open(cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        with grpc.secure_channel("localhost:%d" % d.port, creds) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            rep = stub.Unary(echo_pb2.EchoRequest(payload=b"secret"), metadata=[("x-test", "tls")], timeout=5)
            assert rep.payload == b"secret" and rep.metadata == "tls"
            assert len(list(stub.ServerStream(echo_pb2.EchoRequest(payload=b"z", count=50), timeout=5))) == 50
        # what was negotiated: ALPN h2
        p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % d.port, "-alpn", "h2",
                            "-CAfile", cert, "-servername", "localhost"],
                           input=b"", capture_output=True, timeout=10)
        assert b"ALPN protocol: h2" in p.stdout, p.stdout[-2000:]
        # a plaintext h2c client is refused, the server survives it
        with grpc.insecure_channel("127.0.0.1:%d" % d.port) as ch:
            with pytest.raises(grpc.RpcError) as ei:
                echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(), timeout=2)
            assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        stop_c_server(d)


def test_py_multi_worker_server_and_stop_with_calls_in_flight(pb, tmp_path):
    """One rpc_server shared by 3 worker threads (SO_REUSEPORT listeners);
    then SIGTERM while calls run: rpc_server_close_all cancels them (on_cancel
    frees the handlers' state) and the server exits 0 under ASan."""
    import grpc
    from concurrent import futures
    echo_pb2, echo_pb2_grpc = pb
    d = start_c_server(tmp_path, "--workers=3", name="c-workers")
    # a local subchannel pool each: 8 TCP connections, spread by SO_REUSEPORT
    channels = [grpc.insecure_channel("127.0.0.1:%d" % d.port,
                                      options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(8)]
    try:
        stubs = [echo_pb2_grpc.EchoStub(ch) for ch in channels]

        def work(i):
            stub = stubs[i % len(stubs)]
            rep = stub.Unary(echo_pb2.EchoRequest(payload=b"w%d" % i), timeout=10)
            reps = list(stub.ServerStream(echo_pb2.EchoRequest(payload=b"s", count=20), timeout=10))
            return rep.payload == b"w%d" % i and len(reps) == 20

        with futures.ThreadPoolExecutor(16) as ex:
            assert all(ex.map(work, range(64)))
        slow = [stubs[i].Unary.future(echo_pb2.EchoRequest(payload=b"z", delay_ms=5000), timeout=20)
                for i in range(len(stubs))]
        slow += [stubs[i].ServerStream(echo_pb2.EchoRequest(payload=b"z", count=5, delay_ms=5000), timeout=20)
                 for i in range(len(stubs))]
        time.sleep(0.3)
        stop_c_server(d)
        for f in slow[:len(stubs)]:
            with pytest.raises(grpc.RpcError) as ei:
                f.result(timeout=10)
            assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                       grpc.StatusCode.INTERNAL)
        log = d.log_text()
        assert "workers=3" in log
        assert log.count("echo call cancelled") >= 2 * len(stubs), log[-3000:]
        # connections were spread over the workers' threads
        assert len({l.split("thr=")[1].split()[0] for l in log.splitlines()
                    if "echo call cancelled" in l}) >= 2, log[-3000:]
    finally:
        for ch in channels:
            ch.close()
        if d.proc.poll() is None:
            stop_c_server(d)


def test_non_grpc_content_type_is_415(c_server):
    # no body: curl would otherwise race our RST_STREAM(NO_ERROR) that follows an early answer
    p = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
                        "-X", "POST", "-H", "content-type: text/plain",
                        "http://127.0.0.1:%d/%s/Unary" % (c_server.port, ECHO)],
                       capture_output=True, text=True, timeout=10)
    assert p.stdout.lower().startswith("http/2 415"), p.stdout


def _curl_grpc(port, body):
    p = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
                        "-H", "content-type: application/grpc", "-H", "te: trailers",
                        "--data-binary", "@-", "http://127.0.0.1:%d/%s/Unary" % (port, ECHO)],
                       input=body, capture_output=True, timeout=10)
    return p.stdout.decode().lower()


def test_bad_frames_from_peer(pb, stub, c_server):
    echo_pb2, _ = pb
    # a length prefix claiming 100 MB: refused at once (nothing buffered, no waiting for the bytes)
    h = _curl_grpc(c_server.port, b"\x00" + struct.pack(">I", 100 << 20) + b"0123456789")
    assert "grpc-status: 8" in h, h
    # a flag byte that is neither 0 nor 1
    h = _curl_grpc(c_server.port, b"\x07\x00\x00\x00\x01x")
    assert "grpc-status: 13" in h, h
    # compressed without negotiation
    h = _curl_grpc(c_server.port, b"\x01\x00\x00\x00\x01x")
    assert "grpc-status: 12" in h, h
    # protobuf garbage: the handler refuses it, nothing aborts
    h = _curl_grpc(c_server.port, b"\x00\x00\x00\x00\x03\xff\xff\xff")
    assert "grpc-status: 3" in h, h
    # a truncated message at end of stream
    h = _curl_grpc(c_server.port, b"\x00\x00\x00\x00\x09abc")
    assert "grpc-status: 13" in h, h
    # raw garbage and HTTP/1 on the h2c port: connection dropped, server fine
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096),
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512)):
        with socket.create_connection(("127.0.0.1", c_server.port), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
    assert stub.Unary(echo_pb2.EchoRequest(payload=b"alive"), timeout=5).payload == b"alive"
    assert c_server.proc.poll() is None


# ------------------------------------------------- C client -> python server

def test_c_client_vs_python_server(py_server):
    rc, out = run_client("127.0.0.1:%d" % py_server.port, *SCENARIOS)
    assert_client_ok(rc, out, SCENARIOS)


def test_c_client_vs_c_server(c_server):
    rc, out = run_client("127.0.0.1:%d" % c_server.port, *SCENARIOS)
    assert_client_ok(rc, out, SCENARIOS)


def test_c_client_tls_vs_python_server(pb, certs, tmp_path):
    s = PyServer(str(tmp_path / "py-tls.log"), tls=certs).start()
    try:
        rc, out = run_client("127.0.0.1:%d" % s.port, "unary", "server_stream", "error", "big",
                             extra=["--tls-ca=" + certs[0], "--authority=localhost:%d" % s.port])
        assert_client_ok(rc, out, ["unary", "server_stream", "error", "big"])
    finally:
        s.stop()


def test_c_client_tls_vs_c_server(certs, tmp_path):
    d = start_c_server(tmp_path, "--tls-cert=" + certs[0], "--tls-key=" + certs[1], name="c-tls")
    try:
        # name checked against the IP SAN here (no --authority)
        rc, out = run_client("127.0.0.1:%d" % d.port, "unary", "client_stream_big", "concurrent",
                             extra=["--tls-ca=" + certs[0]])
        assert_client_ok(rc, out, ["unary", "client_stream_big", "concurrent"])
        # a certificate that does not match the name: the handshake fails -> UNAVAILABLE
        rc, out = run_client("127.0.0.1:%d" % d.port, "unavailable",
                             extra=["--tls-ca=" + certs[0], "--authority=wrong.example:%d" % d.port])
        assert_client_ok(rc, out, ["unavailable"])
        assert "certificate verify failed" in out
    finally:
        stop_c_server(d)


def test_c_client_refuses_tls_without_h2(certs):
    """A TLS server that negotiates no ALPN (openssl s_server): the client
    must not speak HTTP/2 to it; the call fails UNAVAILABLE."""
    port = free_port()
    srv = subprocess.Popen(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", certs[0],
                            "-key", certs[1], "-www", "-quiet"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 10, srv)
        rc, out = run_client("127.0.0.1:%d" % port, "unavailable", extra=["--tls-ca=" + certs[0]])
        assert_client_ok(rc, out, ["unavailable"])
        assert "ALPN h2" in out
    finally:
        srv.kill()
        srv.wait()


def test_c_client_nothing_listening():
    rc, out = run_client("127.0.0.1:%d" % free_port(), "unavailable")
    assert_client_ok(rc, out, ["unavailable"])


def _orchestrate(argv, actions, timeout=60):
    """Runs rpc_echo_client, doing actions[what]() at each "READY what" line."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    end = time.monotonic() + timeout
    for line in p.stdout:
        lines.append(line)
        if line.startswith("READY "):
            actions[line.split()[1]]()
        assert time.monotonic() < end, "".join(lines)
    rc = p.wait(10)
    out = "".join(lines)
    print(out)
    return rc, out


@pytest.mark.parametrize("kind", ["python", "c"])
def test_c_client_server_killed_then_restarted(pb, tmp_path, kind):
    port = free_port()
    if kind == "python":
        srv = [PyServer(str(tmp_path / "py.log"), port=port).start()]
        restart = lambda: srv.__setitem__(0, PyServer(str(tmp_path / "py.log"), port=port).start())  # noqa: E731
    else:
        def mk():
            d = Daemon([binary("tests", "rpc_echo_server"), "--listen=127.0.0.1:%d" % port],
                       str(tmp_path / "c.log"), port=port)
            return d.start()
        srv = [mk()]
        restart = lambda: srv.__setitem__(0, mk())  # noqa: E731

    def restart_later():
        # restart only after the client has seen the port closed for a while
        time.sleep(0.5)
        restart()

    try:
        rc, out = _orchestrate([binary("tests", "rpc_echo_client"), "--target=127.0.0.1:%d" % port,
                                "reconnect"],
                               {"kill": lambda: srv[0].kill9(), "restart": restart_later})
        assert_client_ok(rc, out, ["reconnect"])
        assert "call in flight when the server died: 14" in out
        assert "unavailable)" in out
    finally:
        if kind == "python":
            srv[0].stop()
        else:
            stop_c_server(srv[0])


def test_c_client_keepalive_detects_frozen_server(tmp_path):
    d = start_c_server(tmp_path)
    try:
        rc, out = _orchestrate([binary("tests", "rpc_echo_client"), "--target=127.0.0.1:%d" % d.port,
                                "keepalive"],
                               {"stop": lambda: d.proc.send_signal(signal.SIGSTOP),
                                "cont": lambda: d.proc.send_signal(signal.SIGCONT)})
        assert_client_ok(rc, out, ["keepalive"])
    finally:
        d.proc.send_signal(signal.SIGCONT)
        stop_c_server(d)


def _drain_lines(d, n, timeout=5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = [l for l in d.log_text().splitlines() if "echo server draining" in l]
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError("no drain line %d in:\n%s" % (n, d.log_text()[-3000:]))


def test_c_client_server_drain(tmp_path):
    """rpc_server_drain: the call in flight finishes, new calls move to a new
    connection, and the drained connection closes once idle."""
    d = start_c_server(tmp_path)
    try:
        def count():
            d.proc.send_signal(signal.SIGUSR1)
            lines = _drain_lines(d, 2)
            # the drained connection is gone; only the new one remains
            assert lines[1].endswith("conns=1"), lines
        rc, out = _orchestrate([binary("tests", "rpc_echo_client"), "--target=127.0.0.1:%d" % d.port,
                                "drain"],
                               {"drain": lambda: d.proc.send_signal(signal.SIGUSR1), "count": count})
        assert_client_ok(rc, out, ["drain"])
        assert _drain_lines(d, 1)[0].endswith("conns=1")
    finally:
        stop_c_server(d)


def test_py_client_server_drain(pb, tmp_path):
    import grpc
    echo_pb2, echo_pb2_grpc = pb
    d = start_c_server(tmp_path)
    try:
        with grpc.insecure_channel("127.0.0.1:%d" % d.port) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            assert stub.Unary(echo_pb2.EchoRequest(payload=b"a"), timeout=5).payload == b"a"
            fut = stub.Unary.future(echo_pb2.EchoRequest(payload=b"slow", delay_ms=1000), timeout=10)
            time.sleep(0.2)
            d.proc.send_signal(signal.SIGUSR1)
            _drain_lines(d, 1)
            time.sleep(0.2)
            assert stub.Unary(echo_pb2.EchoRequest(payload=b"b"), timeout=5).payload == b"b"
            assert fut.result().payload == b"slow"
    finally:
        stop_c_server(d)


def _raw_h2_server_without_status(sock, done):
    """Answers the first request with HEADERS(:status 200, content-type grpc,
    END_STREAM) and no grpc-status, by hand (HPACK: 0x88 = :status 200)."""
    try:
        conn, _ = sock.accept()
        conn.settimeout(5)
        buf = b""
        while len(buf) < 24:
            buf += conn.recv(65536)
        buf = buf[24:]
        conn.sendall(struct.pack(">I", 0)[1:] + b"\x04\x00" + struct.pack(">I", 0))  # SETTINGS
        answered = False
        while True:
            while len(buf) < 9:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            length = struct.unpack(">I", b"\x00" + buf[:3])[0]
            ftype, flags, sid = buf[3], buf[4], struct.unpack(">I", buf[5:9])[0] & 0x7fffffff
            while len(buf) < 9 + length:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf[9 + length:]
            if ftype == 4 and not flags & 1:
                conn.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")  # SETTINGS ack
            if ftype == 1 and not answered:
                block = b"\x88" + b"\x0f\x10" + bytes([16]) + b"application/grpc"
                conn.sendall(struct.pack(">I", len(block))[1:] + b"\x01\x05" + struct.pack(">I", sid) + block)
                answered = True
    except OSError:
        pass
    finally:
        done.set()


def test_c_client_response_without_grpc_status():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    done = threading.Event()
    t = threading.Thread(target=_raw_h2_server_without_status, args=(sock, done), daemon=True)
    t.start()
    try:
        rc, out = run_client("127.0.0.1:%d" % sock.getsockname()[1], "no_status")
        assert_client_ok(rc, out, ["no_status"])
        assert "grpc-status" in out
    finally:
        sock.close()


# ------------------------------------- graceful drain under lib/daemon (SIGTERM)
#
# rpc_echo_server --daemon runs the Echo service the way the mail daemons
# run theirs: SIGTERM drains. Every reply of a call that was running, or had
# just finished, must reach the client whole with its status before the
# connection closes, and the process must then exit on its own, well before
# its shutdown_timeout (the connections, not a timer, end the drain).

DRAIN_TIMEOUT_S = 30  # the servers' shutdown_timeout: reaching it is a failure


def start_daemon_server(tmp_path, *extra, name="c-daemon"):
    return start_c_server(tmp_path, "--daemon", "--shutdown-timeout=%ds" % DRAIN_TIMEOUT_S,
                          *extra, name=name)


def wait_drained(d, t0, limit=10.0):
    """The drained server exits 0 by itself within limit seconds of t0."""
    try:
        rc = d.proc.wait(max(0.1, limit - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        pytest.fail("server still running %.1fs after the drain began:\n%s"
                    % (time.monotonic() - t0, d.log_text()[-4000:]))
    took = time.monotonic() - t0
    log = d.log_text()
    assert rc == 0, "server exited %s:\n%s" % (rc, log[-4000:])
    assert "drain timed out" not in log, log[-4000:]
    assert "echo call cancelled" not in log, log[-4000:]
    assert "echo worker closing connections" not in log, log[-4000:]
    return took


def _channel(d, tls, certs):
    import grpc
    if not tls:
        return grpc.insecure_channel("127.0.0.1:%d" % d.port)
    with open(certs[0], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel("localhost:%d" % d.port, creds)


def _tls_args(tls, certs):
    return ["--tls-cert=" + certs[0], "--tls-key=" + certs[1]] if tls else []


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_py_sigterm_lets_running_calls_answer(pb, certs, tmp_path, tls):
    """SIGTERM while a slow unary call (2 MiB reply) and a slow server stream
    (100 x 64 KiB) run: both complete with OK, then the server exits 0."""
    import grpc
    from concurrent import futures
    echo_pb2, echo_pb2_grpc = pb
    d = start_daemon_server(tmp_path, "--workers=1", *_tls_args(tls, certs))
    big = os.urandom(2 << 20)
    chunk = bytes(range(256)) * 256
    try:
        with _channel(d, tls, certs) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            assert stub.Unary(echo_pb2.EchoRequest(payload=b"warm"), timeout=5).payload == b"warm"
            unary = stub.Unary.future(echo_pb2.EchoRequest(payload=big, delay_ms=1200), timeout=20)

            def stream():
                call = stub.ServerStream(echo_pb2.EchoRequest(payload=chunk, count=100, delay_ms=1200),
                                         timeout=20)
                reps = list(call)
                return reps, call.code()

            with futures.ThreadPoolExecutor(1) as ex:
                sfut = ex.submit(stream)
                time.sleep(0.5)  # both calls are running on the server now
                t0 = time.monotonic()
                d.proc.send_signal(signal.SIGTERM)
                rep = unary.result(timeout=20)
                reps, code = sfut.result(timeout=20)
            assert rep.payload == big and rep.count == 1
            assert code == grpc.StatusCode.OK
            assert [r.count for r in reps] == list(range(100))
            assert all(r.payload == chunk for r in reps)
        took = wait_drained(d, t0)
        assert took >= 0.5, "exited before the calls could finish (%.2fs)" % took
        assert "why=SIGTERM" in d.log_text()
    finally:
        if d.proc.poll() is None:
            d.kill9()


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
@pytest.mark.parametrize("kind", ["small", "big", "stream"])
def test_py_drain_begins_as_reply_finishes(pb, certs, tmp_path, kind, tls):
    """The server drains (daemon_stop) the instant the handler has finished
    the call, its reply still queued in the runtime: no linger anywhere, and
    the client still gets the whole reply and OK."""
    import grpc
    echo_pb2, echo_pb2_grpc = pb
    d = start_daemon_server(tmp_path, "--workers=1", *_tls_args(tls, certs))
    md = [("x-stop-after", "1")]
    try:
        with _channel(d, tls, certs) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            assert stub.Unary(echo_pb2.EchoRequest(payload=b"warm"), timeout=5).payload == b"warm"
            t0 = time.monotonic()
            if kind == "stream":
                chunk = os.urandom(64 << 10)
                call = stub.ServerStream(echo_pb2.EchoRequest(payload=chunk, count=64),
                                         metadata=md, timeout=20)
                reps = list(call)
                assert call.code() == grpc.StatusCode.OK
                assert [r.count for r in reps] == list(range(64))
                assert all(r.payload == chunk for r in reps)
            else:
                payload = b"just finished" if kind == "small" else os.urandom(3 << 20)
                rep, call = stub.Unary.with_call(echo_pb2.EchoRequest(payload=payload),
                                                 metadata=md, timeout=20)
                assert call.code() == grpc.StatusCode.OK
                assert rep.payload == payload and rep.count == 1
        wait_drained(d, t0)
        log = d.log_text()
        assert "echo stop after finish" in log and "why=stop" in log, log[-3000:]
    finally:
        if d.proc.poll() is None:
            d.kill9()


def _h2_frames(data):
    """(type, flags, stream_id, payload) of each whole HTTP/2 frame in data."""
    frames = []
    while len(data) >= 9:
        length = struct.unpack(">I", b"\x00" + data[:3])[0]
        if len(data) < 9 + length:
            break
        sid = struct.unpack(">I", data[5:9])[0] & 0x7fffffff
        frames.append((data[3], data[4], sid, data[9:9 + length]))
        data = data[9 + length:]
    return frames


def test_drain_does_not_wait_for_a_silent_peer(tmp_path):
    """A peer that never answers the drain PING and never closes: the final
    GOAWAY goes anyway, the connection ends with a FIN (not a reset) and the
    server exits in seconds, not at its shutdown_timeout."""
    d = start_daemon_server(tmp_path, "--workers=1")
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            time.sleep(0.3)  # the server has our SETTINGS and we have its own
            t0 = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            took = wait_drained(d, t0, limit=15.0)
            assert took < DRAIN_TIMEOUT_S / 3
            data = b""
            s.settimeout(5)
            while True:
                got = s.recv(65536)  # a reset would raise ConnectionResetError here
                if not got:
                    break
                data += got
        frames = _h2_frames(data)
        goaways = [struct.unpack(">I", f[3][:4])[0] & 0x7fffffff for f in frames if f[0] == 7]
        assert goaways == [0x7fffffff, 0], frames  # the notice, then the final one
        assert any(f[0] == 6 and not f[1] & 1 for f in frames), frames  # the drain PING
    finally:
        if d.proc.poll() is None:
            d.kill9()
