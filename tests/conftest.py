"""Shared fixtures for the python tests (run with /usr/bin/python3 -m pytest).

MAIL_BUILD_DIR points at the CMake build to test (make test sets build-asan).
Helpers here start real daemons on free loopback ports and stop them."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("MAIL_BUILD_DIR", os.path.join(ROOT, "build-asan"))
GEN = os.path.join(BUILD, "pygen")  # python protobuf/grpc modules generated here

# ASan: fail on leaks and errors in the daemons we start; UBSan: print stacks
os.environ.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1:exitcode=23")
os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1:exitcode=24")


def binary(*parts):
    """Path of a built program, e.g. binary('store', 'mail-store')."""
    p = os.path.join(BUILD, *parts)
    if not os.path.exists(p):
        pytest.fail("not built: %s" % p)
    return p


_ports_given = set()


def free_port():
    """A TCP port free on 127.0.0.1 right now, and never handed out before by this
    process: the kernel may give the port it just released to the next bind(0),
    and two daemons told the same port fail (seen: two store nodes given one port
    by consecutive calls)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def wait_port(port, timeout=15.0, proc=None):
    """Wait until 127.0.0.1:port accepts connections (or proc dies)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("port %d not listening after %.0fs" % (port, timeout))


class Daemon:
    """A daemon process started with flags; stderr (its log) goes to a file."""

    def __init__(self, argv, log_path, port=None, env=None):
        self.argv = argv
        self.log_path = log_path
        self.port = port
        self.env = dict(os.environ, **(env or {}))
        self.proc = None

    def start(self, timeout=15.0):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, env=self.env)
        if self.port:
            try:
                wait_port(self.port, timeout, self.proc)
            except (RuntimeError, TimeoutError) as e:
                # the daemon's own words on why it did not come up
                raise type(e)("%s; %s ends with:\n%s" % (e, self.log_path, self.log_text()[-3000:])) from None
        return self

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout=20.0):
        """SIGTERM and wait; returns the exit code (sanitizer errors fail it)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def gen_python(proto_rel):
    """Generate python modules for proto/<proto_rel> into GEN (idempotent)."""
    os.makedirs(GEN, exist_ok=True)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
                    "--python_out=" + GEN, "--grpc_python_out=" + GEN,
                    os.path.join(ROOT, "proto", proto_rel)], check=True)
    if GEN not in sys.path:
        sys.path.insert(0, GEN)


@pytest.fixture
def tmpdir_short(tmp_path_factory):
    """A short temp dir (Unix socket paths are limited to ~107 bytes)."""
    import tempfile
    import shutil
    d = tempfile.mkdtemp(prefix="mt", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)
