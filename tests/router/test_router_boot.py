"""The router process: starts against a fresh database (migrations applied),
reports ready once PostgreSQL and a store write quorum are reachable, creates
its admin token, validates its configuration, and drains on SIGTERM."""
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import BUILD  # noqa: E402
from mailcluster import MailCluster  # noqa: E402


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(url, want=200, timeout=15):
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st, body = http_get(url + "/readyz")
        if st == want:
            return body
        time.sleep(0.1)
    raise AssertionError("readyz never became %d (last %s %r)" % (want, st, body))


def test_boot_migrate_ready_and_drain():
    with MailCluster(stores=2) as mc:
        wait_ready(mc.metrics_url())
        # migrations ran: the schema exists and is recorded
        assert int(mc.psql("SELECT max(version) FROM schema_migrations").strip()) >= 1
        assert mc.psql("SELECT to_regclass('public.messages') IS NOT NULL").strip() == "t"
        tok = mc.admin_token
        assert len(tok) >= 16 and os.stat(mc.admin_token_file).st_mode & 0o077 == 0
        # losing one of two stores breaks the write quorum (R=W=2): not ready
        mc.kill_store(1)
        body = wait_ready(mc.metrics_url(), want=503)
        assert "store" in body
        mc.start_store(1)
        wait_ready(mc.metrics_url())
        st, body = http_get(mc.metrics_url() + "/metrics")
        assert st == 200 and "db_connections" in body


def test_check_config():
    exe = os.path.join(BUILD, "router", "mail-router")
    ok = subprocess.run([exe, "--check-config", "--admin-listen=", "--store-nodes=a=127.0.0.1:1,b=127.0.0.1:2"],
                        capture_output=True, stdin=subprocess.DEVNULL)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([exe, "--check-config", "--replicas=99"], capture_output=True,
                         stdin=subprocess.DEVNULL)
    assert bad.returncode != 0 and b"replicas" in bad.stderr
    notoken = subprocess.run([exe, "--check-config"], capture_output=True, stdin=subprocess.DEVNULL)
    assert notoken.returncode != 0 and b"admin_token_file" in notoken.stderr
    unknown = subprocess.run([exe, "--no-such-key=1"], capture_output=True, stdin=subprocess.DEVNULL)
    assert unknown.returncode != 0 and b"no-such-key" in unknown.stderr
