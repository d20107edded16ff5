"""Authenticate and MaildropLock (router/rt_auth.c) through python grpcio against
a real cluster: PostgreSQL, two store nodes and TWO routers, so that what one
router counts (auth failures, maildrop leases) is seen by the other.

Accounts are provisioned with SQL (imported crypt(3) hashes made by openssl and
python's crypt module) and, for Argon2id, through the admin API, which hashes with
the router's own parameters. Each test uses its own addresses and client IPs, so
the failure counters of one test never throttle another.
Run with /usr/bin/python3 -m pytest; MAIL_BUILD_DIR names the build."""
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import gen_python  # noqa: E402
from mailcluster import MailCluster  # noqa: E402

gen_python("router.proto")
import grpc  # noqa: E402
import router_pb2 as pb  # noqa: E402

OK = pb.CODE_OK
AUTH_FAILED = pb.CODE_AUTH_FAILED
THROTTLED = pb.CODE_THROTTLED
INVALID = pb.CODE_INVALID
IN_USE = pb.CODE_IN_USE

ACCT_LIMIT = 10    # rt_auth.c AUTH_ACCT_MAX_FAILURES
IP_LIMIT = 30      # rt_auth.c AUTH_IP_MAX_FAILURES
WINDOW_MS = 15 * 60 * 1000


def sha512_crypt(pw, salt="saltsalt"):
    return subprocess.run(["openssl", "passwd", "-6", "-salt", salt, pw], check=True,
                          capture_output=True, text=True).stdout.strip()


def bcrypt(pw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
        return crypt.crypt(pw, crypt.mksalt(crypt.METHOD_BLOWFISH))


def q(s):
    return "'" + s.replace("'", "''") + "'"


class Env:
    def __init__(self, mc):
        self.mc = mc
        self.stubs = [mc.router_stub(0), mc.router_stub(1)]

    def account(self, address, pw_hash, disabled=False):
        dom = address.split("@", 1)[1]
        self.mc.psql("INSERT INTO domains (name) VALUES (%s) ON CONFLICT DO NOTHING" % q(dom))
        return int(self.mc.psql(
            "INSERT INTO accounts (domain_id, address, password_hash, disabled) "
            "SELECT id, %s, %s, %s FROM domains WHERE name = %s RETURNING id"
            % (q(address), q(pw_hash), "true" if disabled else "false", q(dom))).split()[0])

    def auth(self, user, pw, mech="PASSWORD", ip="192.0.2.1", router=0):
        if mech == "PLAIN":
            req = pb.AuthenticateRequest(mechanism="PLAIN", sasl_initial=b"\0" + user.encode() + b"\0" + pw.encode(),
                                         client_ip=ip, protocol="imap")
        else:
            req = pb.AuthenticateRequest(mechanism=mech, username=user, password=pw.encode(), client_ip=ip,
                                         protocol="smtp")
        return self.stubs[router].Authenticate(req, timeout=30)

    def admin(self, method, path, body=None):
        req = urllib.request.Request(self.mc.admin_url(0) + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": "Bearer " + self.mc.admin_token,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError as e:
            return None, str(e).encode()


@pytest.fixture(scope="module")
def env():
    with MailCluster(stores=2, routers=2) as mc:
        yield Env(mc)


def test_mechanisms(env):
    """PASSWORD, LOGIN and PLAIN with the right and a wrong password; the address is
    matched case-insensitively and the canonical one comes back; PLAIN's authzid
    must be empty or the authcid itself; malformed requests are INVALID."""
    aid = env.account("mech@auth.test", "{SHA512-CRYPT}" + sha512_crypt("s3cret pw"))
    for mech in ("PASSWORD", "LOGIN", "PLAIN"):
        r = env.auth("Mech@AUTH.test", "s3cret pw", mech=mech, ip="198.51.100.1")
        assert (r.code, r.account_id, r.address) == (OK, aid, "mech@auth.test"), mech
        r = env.auth("mech@auth.test", "Wr0ngPa55", mech=mech, ip="198.51.100.1")
        assert r.code == AUTH_FAILED and r.account_id == 0 and r.address == "", mech
    stub = env.stubs[0]
    ok = stub.Authenticate(pb.AuthenticateRequest(mechanism="plain", client_ip="198.51.100.1",
                                                  sasl_initial=b"mech@auth.test\0mech@auth.test\0s3cret pw"))
    assert ok.code == OK and ok.account_id == aid
    proxy = stub.Authenticate(pb.AuthenticateRequest(mechanism="PLAIN", client_ip="198.51.100.1",
                                                     sasl_initial=b"other@auth.test\0mech@auth.test\0s3cret pw"))
    assert proxy.code == AUTH_FAILED and proxy.account_id == 0
    for bad in (b"mech@auth.test\0s3cret pw", b"\0mech@auth.test\0s3cret\0pw", b""):
        r = stub.Authenticate(pb.AuthenticateRequest(mechanism="PLAIN", sasl_initial=bad))
        assert r.code == INVALID, bad
    assert stub.Authenticate(pb.AuthenticateRequest(mechanism="CRAM-MD5", username="mech@auth.test",
                                                    password=b"x")).code == INVALID
    assert stub.Authenticate(pb.AuthenticateRequest(mechanism="PASSWORD", username="",
                                                    password=b"x")).code == INVALID
    assert env.auth("mech@auth.test", "", ip="198.51.100.1").code == AUTH_FAILED
    assert env.auth("mech@auth.test", "x" * 1025, ip="198.51.100.1").code == AUTH_FAILED
    # the failed attempts were counted for the address (PLAIN proxy attempt and
    # the length refusals are refused before any lookup: not counted)
    assert int(env.mc.psql("SELECT count FROM auth_failures WHERE key = 'acct:mech@auth.test'")) == 3
    # every failure is logged with the address and IP, never the password
    logs = env.mc.router_log(0)
    assert 'msg="auth failed"' in logs and 'user="mech@auth.test" ip="198.51.100.1"' in logs
    assert "s3cret" not in logs and "Wr0ngPa55" not in logs


def test_disabled_and_unknown_accounts(env):
    """A disabled account fails even with its right password; an unknown address fails
    the same way; both failures are counted and logged with their reason."""
    env.account("off@auth.test", "{SHA512-CRYPT}" + sha512_crypt("pw-off"), disabled=True)
    r = env.auth("off@auth.test", "pw-off", ip="198.51.100.2")
    assert r.code == AUTH_FAILED and r.account_id == 0
    r = env.auth("nobody@auth.test", "whatever", ip="198.51.100.2")
    assert r.code == AUTH_FAILED and r.account_id == 0
    r = env.auth("nobody@nodomain.test", "whatever", mech="PLAIN", ip="198.51.100.2")
    assert r.code == AUTH_FAILED
    assert int(env.mc.psql("SELECT count FROM auth_failures WHERE key = 'ip:198.51.100.2'")) == 3
    logs = env.mc.router_log(0)
    assert 'user="off@auth.test" ip="198.51.100.2" mech=PASSWORD proto="smtp" reason=disabled' in logs
    assert 'user="nobody@auth.test" ip="198.51.100.2" mech=PASSWORD proto="smtp" reason=unknown_user' in logs


def test_imported_crypt_hashes(env):
    """Dovecot-style imports: {SHA512-CRYPT}, a bare $6$ hash, {BLF-CRYPT} (bcrypt)."""
    cases = {
        "sha512@auth.test": "{SHA512-CRYPT}" + sha512_crypt("pw-sha", "abcdefgh"),
        "bare6@auth.test": sha512_crypt("pw-bare", "12345678"),
        "blf@auth.test": "{BLF-CRYPT}" + bcrypt("pw-blf"),
    }
    pws = {"sha512@auth.test": "pw-sha", "bare6@auth.test": "pw-bare", "blf@auth.test": "pw-blf"}
    for addr, h in cases.items():
        aid = env.account(addr, h)
        r = env.auth(addr, pws[addr], ip="198.51.100.3", router=1)
        assert (r.code, r.account_id) == (OK, aid), (addr, h)
        assert env.auth(addr, pws[addr] + "x", ip="198.51.100.3", router=1).code == AUTH_FAILED, addr


def test_argon2id_from_admin_api_and_timing(env):
    """An account made through the admin API gets an Argon2id hash from the router
    itself, and authenticates. An unknown address costs as much time as a wrong
    password of an Argon2id account (the router verifies a dummy hash)."""
    st, body = env.admin("POST", "/api/v1/domains", {"name": "argon.test"})
    assert st in (200, 201, 409), (st, body)
    st, body = env.admin("POST", "/api/v1/accounts",
                         {"address": "argon@argon.test", "password": "long argon password", "quota_bytes": 0})
    assert st in (200, 201), body
    stored = env.mc.psql("SELECT password_hash FROM accounts WHERE address = 'argon@argon.test'").strip()
    assert stored.startswith("$argon2id$") or stored.startswith("{ARGON2ID}$argon2id$"), stored
    r = env.auth("argon@argon.test", "long argon password", ip="198.51.100.4")
    assert r.code == OK and r.address == "argon@argon.test"

    def timed(user, ip):
        t = time.monotonic()
        r = env.auth(user, "not the password", ip=ip)
        assert r.code == AUTH_FAILED
        return time.monotonic() - t
    known, unknown = [], []
    for i in range(5):  # interleaved; 5 failures stay under the per-address limit
        known.append(timed("argon@argon.test", "198.51.100.5"))
        unknown.append(timed("ghost%d@argon.test" % i, "198.51.100.6"))
    mk, mu = statistics.median(known), statistics.median(unknown)
    print("wrong password %.1f ms, unknown user %.1f ms (medians)" % (mk * 1000, mu * 1000))
    assert 0.4 < mu / mk < 2.5, (known, unknown)


def test_throttling_per_address_across_routers(env):
    """ACCT_LIMIT failures for one address through router 0 (from several IPs) make
    router 1 answer THROTTLED, with the time left in the window, even to the right
    password - without verifying anything. Other addresses are not affected."""
    env.account("victim@auth.test", "{SHA512-CRYPT}" + sha512_crypt("right-pw"))
    env.account("bystander@auth.test", "{SHA512-CRYPT}" + sha512_crypt("right-pw"))
    for i in range(ACCT_LIMIT):
        r = env.auth("victim@auth.test", "guess%d" % i, ip="203.0.113.%d" % (10 + i), router=0)
        assert r.code == AUTH_FAILED, i
    r = env.auth("Victim@auth.test", "right-pw", ip="203.0.113.99", router=1)
    assert r.code == THROTTLED and r.account_id == 0
    assert 0 < r.retry_after_ms <= WINDOW_MS
    r0 = env.auth("victim@auth.test", "right-pw", mech="PLAIN", ip="203.0.113.98", router=0)
    assert r0.code == THROTTLED
    assert env.auth("bystander@auth.test", "right-pw", ip="203.0.113.99", router=1).code == OK
    # a throttled attempt is not another failure
    assert int(env.mc.psql("SELECT count FROM auth_failures WHERE key = 'acct:victim@auth.test'")) == ACCT_LIMIT
    assert 'msg="auth throttled"' in env.mc.router_log(1)
    # the window is the database's: once it has passed, the right password works again
    env.mc.psql("UPDATE auth_failures SET window_start = now() - interval '16 minutes' "
                "WHERE key = 'acct:victim@auth.test'")
    assert env.auth("victim@auth.test", "right-pw", ip="203.0.113.99", router=1).code == OK
    with urllib.request.urlopen(env.mc.metrics_url(1) + "/metrics", timeout=5) as m:
        text = m.read().decode()
    line = [x for x in text.splitlines() if x.startswith('auth_attempts_total{result="throttled"}')]
    assert line and float(line[0].split()[-1]) >= 1


def test_throttling_per_ip(env):
    """IP_LIMIT failures from one client IP, spread over many addresses and both
    routers, throttle that IP for every address; another IP is not affected."""
    env.account("ipvictim@auth.test", "{SHA512-CRYPT}" + sha512_crypt("right-pw"))
    for i in range(IP_LIMIT):
        r = env.auth("spray%d@auth.test" % i, "pw", ip="203.0.113.200", router=i % 2)
        assert r.code == AUTH_FAILED, i
    r = env.auth("ipvictim@auth.test", "right-pw", ip="203.0.113.200", router=0)
    assert r.code == THROTTLED and 0 < r.retry_after_ms <= WINDOW_MS
    assert env.auth("ipvictim@auth.test", "right-pw", ip="203.0.113.201", router=1).code == OK


def test_maildrop_lock(env):
    """POP3 maildrop lease: one holder at a time across routers, renewable by its
    holder, released explicitly or by expiry; lease_ms is bounded (1 s .. 10 min)."""
    aid = env.account("pop@auth.test", "{SHA512-CRYPT}" + sha512_crypt("pw"))
    A = pb.MaildropLockRequest.ACQUIRE
    R = pb.MaildropLockRequest.RENEW
    REL = pb.MaildropLockRequest.RELEASE

    def lock(holder, action, lease_ms=30000, router=0, account=aid):
        return env.stubs[router].MaildropLock(pb.MaildropLockRequest(
            session=pb.Session(account_id=account), holder=holder, action=action, lease_ms=lease_ms)).code

    assert lock("fe1/s1", A) == OK
    assert lock("fe2/s9", A, router=1) == IN_USE
    assert lock("fe1/s1", R, router=1) == OK
    assert lock("fe2/s9", R) == IN_USE          # renewing what one does not hold
    assert lock("fe2/s9", REL) == OK            # releasing it is harmless
    assert lock("fe2/s9", A) == IN_USE
    assert lock("fe1/s1", REL, router=1) == OK
    assert lock("fe2/s9", A) == OK
    # a dead holder's lease expires; lease_ms below the floor is raised to 1 s
    assert lock("fe2/s9", REL) == OK
    assert lock("fe3/s1", A, lease_ms=10) == OK
    left = float(env.mc.psql("SELECT extract(epoch FROM expires_at - clock_timestamp()) FROM maildrop_locks "
                             "WHERE account_id = %d" % aid))
    assert 0.5 < left <= 1.0, left
    assert lock("fe4/s1", A) == IN_USE
    time.sleep(1.2)
    assert lock("fe4/s1", A, lease_ms=10 ** 9) == OK
    left = float(env.mc.psql("SELECT extract(epoch FROM expires_at - clock_timestamp()) FROM maildrop_locks "
                             "WHERE account_id = %d" % aid))
    assert 590 < left <= 600, left
    assert lock("fe4/s1", A, account=0) == INVALID
    assert lock("", A) == INVALID
    assert lock("x", A, account=999999) == pb.CODE_NO_SUCH_USER


def test_bad_requests(env):
    """Garbage and a missing request get a gRPC error, never a crash."""
    ch = grpc.insecure_channel(env.mc.router_addr(0))
    call = ch.unary_unary("/mail.router.v1.Router/Authenticate")
    with pytest.raises(grpc.RpcError) as e:
        call(b"\xff\xff\xff\xff", timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stream = ch.stream_unary("/mail.router.v1.Router/Authenticate")
    with pytest.raises(grpc.RpcError) as e:
        stream(iter([]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ch.close()
    # the router still serves
    assert env.auth("nobody@auth.test", "x", ip="198.51.100.77").code == AUTH_FAILED
