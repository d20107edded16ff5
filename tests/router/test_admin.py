"""The admin API (router/rt_admin.c, DESIGN.md "Admin API (contract)") and mailctl
(router/mailctl.c) against a real cluster (tests/mailcluster.py: PostgreSQL, two
store nodes, one router).

One cluster serves the whole module (its tests run in file order; the ones that
break something - the database stopped, a store node killed - come last and
repair what they broke). Requests go through urllib, curl and the mailctl binary.
Run with /usr/bin/python3 -m pytest; MAIL_BUILD_DIR names the build."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import BUILD, binary  # noqa: E402
from mailcluster import MailCluster  # noqa: E402

MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "router", "migrations")
LATEST = max(int(f[:4]) for f in os.listdir(MIGRATIONS) if re.match(r"^\d{4}_.*\.sql$", f))
STD_MAILBOXES = {"INBOX": "{}", "Sent": "{\"\\\\Sent\"}", "Drafts": "{\"\\\\Drafts\"}",
                 "Trash": "{\"\\\\Trash\"}", "Junk": "{\"\\\\Junk\"}", "Archive": "{\"\\\\Archive\"}"}


@pytest.fixture(scope="module")
def mc():
    # a short db timeout so that the database-down test answers quickly
    with MailCluster(stores=2, routers=1, router_args=["--db-timeout=2s"]) as c:
        wait(lambda: ready(c), what="admin API")
        yield c


# ---------------------------------------------------------------- helpers

def wait(pred, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s" % what)


def ready(mc):
    """The admin API answers (it listens a moment after the gRPC port)."""
    try:
        return api(mc, "GET", "/api/v1/domains")[0] == 200
    except urllib.error.URLError:
        return False


def api(mc, method, path, body=None, token=None, raw=None, headers=None):
    """One request: (status, parsed JSON or None, response headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(mc.admin_url() + path, data=data, method=method)
    if token is not False:
        req.add_header("Authorization", "Bearer " + (token or mc.admin_token))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text.strip() else None), r.headers
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            j = json.loads(text)
        except ValueError:
            j = text
        return e.code, j, e.headers


def q(s):
    """A path segment, percent-encoded the way a careful client does ('@' too)."""
    return urllib.parse.quote(s, safe="")


def err(st_body, status, code=None):
    """Assert an error answer: status, JSON {"error", "code"}."""
    st, body, _ = st_body
    assert st == status, (st, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    if code is not None:
        assert body["code"] == code, body
    return body


def one(mc, sql):
    return mc.psql(sql).strip()


def mailctl(mc, *args, stdin=None, env=None, cwd=None, token=True):
    """Run mailctl against the cluster: (exit code, stdout, stderr)."""
    argv = [binary("router", "mailctl")]
    if mc is not None:
        argv.append("--api=" + mc.admin_url())
        if token:
            argv.append("--token-file=" + mc.admin_token_file)
    e = dict(os.environ)
    e.pop("MAIL_API", None)
    e.pop("MAIL_ADMIN_TOKEN", None)
    e.update(env or {})
    p = subprocess.run(argv + list(args), input=(stdin or "").encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=e, cwd=cwd, timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def bcrypt(pw):
    """A $2b$ hash (libxcrypt through python's crypt module), cheap cost."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import crypt
        return crypt.crypt(pw, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


def sha512_crypt(pw, salt="saltsalt"):
    out = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, pw], capture_output=True, check=True)
    return out.stdout.decode().strip()


# ---------------------------------------------------------------- authentication

def test_bearer_token_required(mc):
    # no token: 401 with a Bearer challenge, before any routing (unknown routes too)
    for path in ("/api/v1/domains", "/api/v1/no-such-route", "/api/v1/accounts/x%40y.test"):
        st, body, h = api(mc, "GET", path, token=False)
        assert st == 401 and body["code"] == "unauthorized", body
        assert h["WWW-Authenticate"].startswith("Bearer"), h
    # wrong token, a prefix of the right one, the right one plus a byte, another scheme
    tok = mc.admin_token
    for bad in ("wrong-token-0123456789", tok[:-1], tok + "x"):
        st, body, h = api(mc, "GET", "/api/v1/domains", token=bad)
        assert st == 401 and body["code"] == "unauthorized"
        assert 'error="invalid_token"' in h["WWW-Authenticate"]
    st, _, _ = api(mc, "GET", "/api/v1/domains", token=False, headers={"Authorization": "Basic " + tok})
    assert st == 401
    # a mutation without the token changes nothing
    st, _, _ = api(mc, "POST", "/api/v1/domains", {"name": "sneaky.test"}, token=False)
    assert st == 401 and one(mc, "SELECT count(*) FROM domains WHERE name = 'sneaky.test'") == "0"
    # curl, as an operator would
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "-H", "Authorization: Bearer nope-nope-nope-nope", mc.admin_url() + "/api/v1/cluster"],
                         capture_output=True, check=True)
    assert out.stdout.decode() == "401"
    out = subprocess.run(["curl", "-s", "-H", "Authorization: Bearer " + tok, mc.admin_url() + "/api/v1/domains"],
                         capture_output=True, check=True)
    assert "domains" in json.loads(out.stdout)


def test_routes_methods_and_bodies(mc):
    err(api(mc, "GET", "/api/v1/no-such-route"), 404, "not_found")
    err(api(mc, "GET", "/api/v2/domains"), 404, "not_found")
    err(api(mc, "GET", "/api/v1/domains/"), 404, "not_found")
    err(api(mc, "GET", "/api/v1/queue/1/retry/x"), 404, "not_found")
    # wrong method: 405 with Allow
    st, body, h = api(mc, "PUT", "/api/v1/domains", {"name": "x.test"})
    assert st == 405 and body["code"] == "method_not_allowed" and "POST" in h["Allow"], (body, h)
    st, body, h = api(mc, "DELETE", "/api/v1/domains")
    assert st == 405 and "GET" in h["Allow"]
    st, body, h = api(mc, "GET", "/api/v1/queue/1/retry")
    assert st == 405 and h["Allow"] == "POST"
    err(api(mc, "PATCH", "/api/v1/cluster", {}), 405, "method_not_allowed")
    # bad JSON: 400; a body that is JSON but not an object: 400
    for raw in (b"{", b"not json", b"", b"[1,2]", b"\"name\"", b'{"name": "a.test", "name": "b.test"}'):
        err(api(mc, "POST", "/api/v1/domains", raw=raw), 400, "bad_json")
    # the parser's message never quotes the body back (it could be a password)
    b = err(api(mc, "POST", "/api/v1/accounts", raw=b'{"address": "a@b.test", "password": "hunter22'),
            400, "bad_json")
    assert "hunter22" not in b["error"], b
    # too large: 413 (limit 64 KiB), nothing created
    big = json.dumps({"name": "big.test", "pad": "x" * (70 * 1024)}).encode()
    err(api(mc, "POST", "/api/v1/domains", raw=big), 413, "too_large")
    assert one(mc, "SELECT count(*) FROM domains WHERE name = 'big.test'") == "0"
    # HEAD answers like GET, without a body
    req = urllib.request.Request(mc.admin_url() + "/api/v1/domains", method="HEAD")
    req.add_header("Authorization", "Bearer " + mc.admin_token)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and r.read() == b""
    assert r.headers["Content-Type"] == "application/json"


# ---------------------------------------------------------------- domains

def test_domains(mc):
    st, d, _ = api(mc, "POST", "/api/v1/domains", {"name": "Example.TEST"})
    assert st == 201 and d["name"] == "example.test" and d["accounts"] == 0, d
    err(api(mc, "POST", "/api/v1/domains", {"name": "example.test"}), 409, "exists")
    err(api(mc, "POST", "/api/v1/domains", {"name": "EXAMPLE.test"}), 409, "exists")
    for bad in ("", "bad_domain.test", "-x.test", "x-.test", "a..b", "a.", ".a", "a" * 64 + ".test",
                ("a" * 60 + ".") * 5 + "test", "ex ample.test", "exämple.test", "a/b.test"):
        b = err(api(mc, "POST", "/api/v1/domains", {"name": bad}), 422, "invalid")
        assert b["field"] == "name", b
    for body in ({}, {"name": 5}, {"name": None}, {"name": "ok.test", "extra": 1}, {"nmae": "x.test"}):
        err(api(mc, "POST", "/api/v1/domains", body), 422, "invalid")
    assert one(mc, "SELECT count(*) FROM domains WHERE name = 'ok.test'") == "0"
    st, _, _ = api(mc, "POST", "/api/v1/domains", {"name": "xn--mnchen-3ya.test"})
    assert st == 201
    st, body, _ = api(mc, "GET", "/api/v1/domains")
    names = [d["name"] for d in body["domains"]]
    assert "example.test" in names and "xn--mnchen-3ya.test" in names and names == sorted(names)
    st, body, _ = api(mc, "DELETE", "/api/v1/domains/XN--MNCHEN-3YA.test")
    assert st == 200 and body == {"name": "xn--mnchen-3ya.test", "accounts_deleted": 0, "aliases_deleted": 0}
    err(api(mc, "DELETE", "/api/v1/domains/xn--mnchen-3ya.test"), 404, "not_found")
    err(api(mc, "DELETE", "/api/v1/domains/not_a_domain"), 404, "not_found")
    err(api(mc, "DELETE", "/api/v1/domains/" + q("a\nb")), 404, "not_found")


# ---------------------------------------------------------------- accounts

def test_account_create_with_mailboxes(mc):
    st, a, _ = api(mc, "POST", "/api/v1/accounts",
                   {"address": "Alice@Example.TEST", "password": "correct horse", "quota_bytes": 10 << 20})
    assert st == 201, a
    assert a["address"] == "alice@example.test" and a["quota_bytes"] == 10 << 20 and a["disabled"] is False
    assert a["mailboxes"] == ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"]
    # the rows: the account, INBOX and the RFC 6154 special-use set, all subscribed
    rows = mc.psql("SELECT m.name, m.special_use, m.subscribed FROM mailboxes m JOIN accounts a "
                   "ON a.id = m.account_id WHERE a.address = 'alice@example.test' ORDER BY m.name")
    got = {r.split("|")[0]: r.split("|")[1:] for r in rows.strip().splitlines()}
    assert {k: v[0] for k, v in got.items()} == STD_MAILBOXES and all(v[1] == "t" for v in got.values()), got
    # the hash: Argon2id (PHC), never the password itself
    h = one(mc, "SELECT password_hash FROM accounts WHERE address = 'alice@example.test'")
    assert h.startswith("$argon2id$v=19$m=8192,t=1,p=1$") and "correct horse" not in h, h
    assert "correct horse" not in mc.router_log()
    # GET: the account with usage and mailboxes
    st, a, _ = api(mc, "GET", "/api/v1/accounts/" + q("ALICE@example.test"))
    assert st == 200 and a["address"] == "alice@example.test" and a["password_scheme"] == "ARGON2ID"
    assert a["used_bytes"] == 0 and a["used_messages"] == 0 and a["quota_messages"] == 0
    assert sorted(m["name"] for m in a["mailboxes"]) == sorted(STD_MAILBOXES)
    assert {m["name"]: m["special_use"] for m in a["mailboxes"]}["Sent"] == ["\\Sent"]
    # an unencoded '@' in the path works too
    assert api(mc, "GET", "/api/v1/accounts/alice@example.test")[0] == 200
    # the address resolves as a local account for delivery
    assert one(mc, "SELECT kind FROM mail_lookup_recipient('alice@example.test')") == "account"


def test_account_errors(mc):
    err(api(mc, "POST", "/api/v1/accounts", {"address": "alice@example.test", "password": "whatever1"}),
        409, "exists")
    b = err(api(mc, "POST", "/api/v1/accounts", {"address": "bob@nowhere.test", "password": "whatever1"}),
            422, "unknown_domain")
    assert b["field"] == "address"
    for addr in ("bob", "bob@", "@example.test", "b ob@example.test", ".bob@example.test", "bob.@example.test",
                 "b..ob@example.test", "x" * 65 + "@example.test", "bob@exa_mple.test", "bob@@example.test",
                 "bo\"b@example.test", "bob@example.test\n", 7, None):
        b = err(api(mc, "POST", "/api/v1/accounts", {"address": addr, "password": "whatever1"}), 422, "invalid")
        assert b["field"] == "address", (addr, b)
    base = {"address": "carol@example.test"}
    for extra, field in (({"password": "short"}, "password"), ({"password": "x" * 1025}, "password"),
                         ({"password": 12345678}, "password"), ({}, "password"),
                         ({"password": "abc\u0000defgh"}, "password"),
                         ({"password": "whatever1", "password_hash": sha512_crypt("x")}, "password"),
                         ({"password": "whatever1", "quota_bytes": -1}, "quota_bytes"),
                         ({"password": "whatever1", "quota_bytes": "1G"}, "quota_bytes"),
                         ({"password": "whatever1", "quota_bytes": 1.5}, "quota_bytes"),
                         ({"password": "whatever1", "quota_messages": -5}, "quota_messages"),
                         ({"password": "whatever1", "disabled": True}, "disabled"),
                         ({"password_hash": "{MD5}abcdef"}, "password_hash"),
                         ({"password_hash": "plaintext-password"}, "password_hash"),
                         ({"password_hash": "$argon2id$v=19$garbage"}, "password_hash")):
        b = err(api(mc, "POST", "/api/v1/accounts", dict(base, **extra)), 422, "invalid")
        assert b["field"] == field, (extra, b)
    assert one(mc, "SELECT count(*) FROM accounts WHERE address = 'carol@example.test'") == "0"
    err(api(mc, "GET", "/api/v1/accounts/nobody%40example.test"), 404, "not_found")
    err(api(mc, "GET", "/api/v1/accounts/" + q("\x01@x")), 404, "not_found")


def test_account_import_list_patch_delete(mc):
    # a Dovecot import: the {SHA512-CRYPT} hash is stored as given
    h = "{SHA512-CRYPT}" + sha512_crypt("imported pw")
    st, a, _ = api(mc, "POST", "/api/v1/accounts", {"address": "dave@example.test", "password_hash": h,
                                                     "quota_messages": 100})
    assert st == 201 and a["quota_messages"] == 100, a
    assert one(mc, "SELECT password_hash FROM accounts WHERE address = 'dave@example.test'") == h
    st, a, _ = api(mc, "GET", "/api/v1/accounts/dave%40example.test")
    assert a["password_scheme"] == "SHA512-CRYPT"
    st, _, _ = api(mc, "POST", "/api/v1/accounts", {"address": "erin@example.test", "password_hash": sha512_crypt("e")})
    assert st == 201
    # list: by domain, paged with ?after=
    st, body, _ = api(mc, "GET", "/api/v1/accounts?domain=example.test")
    addrs = [x["address"] for x in body["accounts"]]
    assert st == 200 and addrs == ["alice@example.test", "dave@example.test", "erin@example.test"]
    assert body["next"] is None and "password_hash" not in body["accounts"][0]
    st, p1, _ = api(mc, "GET", "/api/v1/accounts?domain=example.test&limit=2")
    assert [x["address"] for x in p1["accounts"]] == addrs[:2] and p1["next"] == "dave@example.test"
    st, p2, _ = api(mc, "GET", "/api/v1/accounts?domain=example.test&limit=2&after=" + q(p1["next"]))
    assert [x["address"] for x in p2["accounts"]] == addrs[2:] and p2["next"] is None
    st, every, _ = api(mc, "GET", "/api/v1/accounts")
    assert st == 200 and addrs == [x["address"] for x in every["accounts"] if x["domain"] == "example.test"]
    err(api(mc, "GET", "/api/v1/accounts?domain=unknown.test"), 404, "not_found")
    err(api(mc, "GET", "/api/v1/accounts?limit=0"), 422, "invalid")
    err(api(mc, "GET", "/api/v1/accounts?limit=abc"), 422, "invalid")
    # Argon2id and {BLF-CRYPT} imports are stored as they are too
    argon = one(mc, "SELECT password_hash FROM accounts WHERE address = 'alice@example.test'")
    st, a, _ = api(mc, "POST", "/api/v1/accounts", {"address": "frank@example.test", "password_hash": argon})
    assert st == 201 and one(mc, "SELECT password_hash FROM accounts WHERE address = 'frank@example.test'") == argon
    blf = "{BLF-CRYPT}" + bcrypt("blf password")
    st, a, _ = api(mc, "POST", "/api/v1/accounts", {"address": "gina@example.test", "password_hash": blf})
    assert st == 201 and api(mc, "GET", "/api/v1/accounts/gina@example.test")[1]["password_scheme"] == "BLF-CRYPT"
    # PATCH: only the fields given change
    old = one(mc, "SELECT password_hash FROM accounts WHERE address = 'dave@example.test'")
    st, a, _ = api(mc, "PATCH", "/api/v1/accounts/dave%40example.test",
                   {"quota_bytes": 5000, "disabled": True})
    assert st == 200 and a["quota_bytes"] == 5000 and a["disabled"] is True and a["quota_messages"] == 100, a
    assert one(mc, "SELECT password_hash FROM accounts WHERE address = 'dave@example.test'") == old
    assert one(mc, "SELECT kind FROM mail_lookup_recipient('dave@example.test')") == "disabled"
    st, a, _ = api(mc, "PATCH", "/api/v1/accounts/dave%40example.test", {"password": "a new password",
                                                                          "disabled": False})
    assert st == 200 and a["password_scheme"] == "ARGON2ID" and a["disabled"] is False
    assert one(mc, "SELECT password_hash FROM accounts WHERE address = 'dave@example.test'").startswith("$argon2id$")
    st, a, _ = api(mc, "PATCH", "/api/v1/accounts/dave%40example.test", {"password_hash": h})
    assert st == 200 and a["password_scheme"] == "SHA512-CRYPT"
    for body, field in (({"disabled": "yes"}, "disabled"), ({"quota_bytes": -1}, "quota_bytes"),
                        ({"password": "short"}, "password"), ({"address": "x@example.test"}, "address"),
                        ({"password_hash": "{MD5}x"}, "password_hash")):
        b = err(api(mc, "PATCH", "/api/v1/accounts/dave%40example.test", body), 422, "invalid")
        assert b["field"] == field, b
    err(api(mc, "PATCH", "/api/v1/accounts/dave%40example.test", {}), 422, "invalid")
    err(api(mc, "PATCH", "/api/v1/accounts/dave%40example.test", raw=b"nope"), 400, "bad_json")
    err(api(mc, "PATCH", "/api/v1/accounts/nobody%40example.test", {"quota_bytes": 1}), 404, "not_found")
    err(api(mc, "PATCH", "/api/v1/accounts/nobody%40example.test", {"password": "long enough"}), 404, "not_found")
    # DELETE: the account and its mailboxes
    st, body, _ = api(mc, "DELETE", "/api/v1/accounts/erin%40example.test")
    assert st == 200 and body["address"] == "erin@example.test"
    assert one(mc, "SELECT count(*) FROM mailboxes m WHERE NOT EXISTS "
                   "(SELECT 1 FROM accounts a WHERE a.id = m.account_id)") == "0"
    err(api(mc, "GET", "/api/v1/accounts/erin%40example.test"), 404, "not_found")
    err(api(mc, "DELETE", "/api/v1/accounts/erin%40example.test"), 404, "not_found")


def test_account_authenticates(mc):
    """An account made through the API logs in through the gRPC Authenticate RPC."""
    stub = mc.router_stub()
    import router_pb2
    ok = stub.Authenticate(router_pb2.AuthenticateRequest(
        mechanism="PASSWORD", username="alice@example.test", password=b"correct horse",
        client_ip="127.0.0.1", protocol="imap"), timeout=10)
    assert ok.code == router_pb2.CODE_OK and ok.address == "alice@example.test", ok
    bad = stub.Authenticate(router_pb2.AuthenticateRequest(
        mechanism="PASSWORD", username="alice@example.test", password=b"wrong horse",
        client_ip="127.0.0.1", protocol="imap"), timeout=10)
    assert bad.code != router_pb2.CODE_OK
    # the imported accounts too: SHA512-CRYPT, Argon2id, BLF-CRYPT
    for user, pw in (("dave", b"imported pw"), ("frank", b"correct horse"), ("gina", b"blf password")):
        ok = stub.Authenticate(router_pb2.AuthenticateRequest(
            mechanism="PASSWORD", username=user + "@example.test", password=pw,
            client_ip="127.0.0.1", protocol="imap"), timeout=10)
        assert ok.code == router_pb2.CODE_OK, (user, ok)


# ---------------------------------------------------------------- aliases

def test_aliases(mc):
    st, a, _ = api(mc, "POST", "/api/v1/aliases", {"address": "Postmaster@example.test",
                                                    "targets": ["alice@example.test", "Ext@Remote.test",
                                                                "ext@remote.test"]})
    assert st == 201 and a == {"address": "postmaster@example.test", "domain": "example.test",
                               "targets": ["alice@example.test", "ext@remote.test"], "catch_all": False}, a
    assert one(mc, "SELECT targets FROM aliases WHERE address = 'postmaster@example.test'") == \
        "{alice@example.test,ext@remote.test}"
    assert one(mc, "SELECT kind FROM mail_lookup_recipient('postmaster@example.test')") == "alias"
    # catch-all
    assert one(mc, "SELECT kind FROM mail_lookup_recipient('whoever@example.test')") == "unknown"
    st, a, _ = api(mc, "POST", "/api/v1/aliases", {"address": "@example.test", "targets": ["alice@example.test"]})
    assert st == 201 and a["catch_all"] is True
    assert one(mc, "SELECT kind FROM mail_lookup_recipient('whoever@example.test')") == "alias"
    # conflicts and validation
    err(api(mc, "POST", "/api/v1/aliases", {"address": "postmaster@example.test", "targets": ["x@y.test"]}),
        409, "exists")
    err(api(mc, "POST", "/api/v1/aliases", {"address": "alice@example.test", "targets": ["x@y.test"]}),
        409, "account_exists")
    err(api(mc, "POST", "/api/v1/accounts", {"address": "postmaster@example.test", "password": "whatever1"}),
        409, "alias_exists")
    err(api(mc, "POST", "/api/v1/aliases", {"address": "x@nowhere.test", "targets": ["a@b.test"]}),
        422, "unknown_domain")
    for body, field in (({"address": "x@example.test"}, "targets"),
                        ({"address": "x@example.test", "targets": []}, "targets"),
                        ({"address": "x@example.test", "targets": "a@b.test"}, "targets"),
                        ({"address": "x@example.test", "targets": ["a@b.test", 5]}, "targets"),
                        ({"address": "x@example.test", "targets": ["not an address"]}, "targets"),
                        ({"address": "x@example.test", "targets": ["@b.test"]}, "targets"),
                        ({"address": "x@example.test", "targets": ["X@example.test"]}, "targets"),
                        ({"address": "x@example.test", "targets": ["a@b.test"] * 1001}, "targets"),
                        ({"address": "x y@example.test", "targets": ["a@b.test"]}, "address"),
                        ({"address": "x@example.test", "targets": ["a@b.test"], "more": 1}, "more")):
        b = err(api(mc, "POST", "/api/v1/aliases", body), 422, "invalid")
        assert b["field"] == field, (body, b)
    # read, list, delete
    st, a, _ = api(mc, "GET", "/api/v1/aliases/" + q("POSTMASTER@example.test"))
    assert st == 200 and a["targets"] == ["alice@example.test", "ext@remote.test"]
    st, a, _ = api(mc, "GET", "/api/v1/aliases/" + q("@example.test"))
    assert st == 200 and a["catch_all"] is True
    err(api(mc, "GET", "/api/v1/aliases/nobody%40example.test"), 404, "not_found")
    st, body, _ = api(mc, "GET", "/api/v1/aliases?domain=example.test")
    assert [x["address"] for x in body["aliases"]] == ["@example.test", "postmaster@example.test"]
    err(api(mc, "GET", "/api/v1/aliases?domain=unknown.test"), 404, "not_found")
    st, body, _ = api(mc, "DELETE", "/api/v1/aliases/" + q("@example.test"))
    assert st == 200 and body["address"] == "@example.test"
    err(api(mc, "DELETE", "/api/v1/aliases/" + q("@example.test")), 404, "not_found")
    assert one(mc, "SELECT kind FROM mail_lookup_recipient('whoever@example.test')") == "unknown"


def test_domain_delete_removes_accounts(mc):
    assert api(mc, "POST", "/api/v1/domains", {"name": "gone.test"})[0] == 201
    for u in ("u1", "u2"):
        assert api(mc, "POST", "/api/v1/accounts", {"address": u + "@gone.test", "password": "password1"})[0] == 201
    assert api(mc, "POST", "/api/v1/aliases", {"address": "al@gone.test", "targets": ["u1@gone.test"]})[0] == 201
    ids = one(mc, "SELECT string_agg(id::text, ',') FROM accounts WHERE address LIKE '%@gone.test'")
    assert one(mc, "SELECT count(*) FROM mailboxes WHERE account_id IN (%s)" % ids) == "12"
    st, body, _ = api(mc, "DELETE", "/api/v1/domains/gone.test")
    assert st == 200 and body == {"name": "gone.test", "accounts_deleted": 2, "aliases_deleted": 1}, body
    assert one(mc, "SELECT count(*) FROM accounts WHERE address LIKE '%@gone.test'") == "0"
    assert one(mc, "SELECT count(*) FROM aliases WHERE address LIKE '%@gone.test'") == "0"
    assert one(mc, "SELECT count(*) FROM mailboxes WHERE account_id IN (%s)" % ids) == "0"
    err(api(mc, "GET", "/api/v1/accounts/u1%40gone.test"), 404, "not_found")
    assert one(mc, "SELECT kind FROM mail_lookup_recipient('u1@gone.test')") == "remote"


# ---------------------------------------------------------------- queue

BLOB = "ab" * 32


def queue_rows(mc):
    """Four entries: due later, being sent (live lease), lease expired, delivered."""
    mc.psql("INSERT INTO blobs (id, size) VALUES ('%s', 10) ON CONFLICT DO NOTHING" % BLOB)
    out = mc.psql(
        "INSERT INTO outbound_queue (blob_id, mail_from, rcpt, domain, size, status, next_attempt_at, "
        " claimed_by, claimed_until, attempts, last_error) VALUES "
        "('{b}', 'alice@example.test', 'r1@remote.test', 'remote.test', 10, 'queued', now() + interval '1 hour',"
        " NULL, NULL, 2, '451 try later'),"
        "('{b}', 'alice@example.test', 'r2@remote.test', 'remote.test', 10, 'sending', now(),"
        " 'router9', now() + interval '1 hour', 1, NULL),"
        "('{b}', '', 'r3@remote.test', 'remote.test', 10, 'sending', now() - interval '1 hour',"
        " 'dead-router', now() - interval '1 minute', 1, NULL),"
        "('{b}', 'alice@example.test', 'r4@remote.test', 'remote.test', 10, 'delivered', now(),"
        " NULL, NULL, 1, NULL) RETURNING id".format(b=BLOB))
    return [int(x) for x in out.split()]


def test_queue(mc):
    due, live, dead, done = queue_rows(mc)
    assert one(mc, "SELECT refcount FROM blobs WHERE id = '%s'" % BLOB) == "4"
    st, body, _ = api(mc, "GET", "/api/v1/queue")
    assert st == 200 and [e["id"] for e in body["queue"]] == [due, live, dead, done]
    assert body["counts"] == {"queued": 1, "sending": 2, "delivered": 1}, body["counts"]
    e = body["queue"][0]
    assert e["rcpt"] == "r1@remote.test" and e["attempts"] == 2 and e["last_error"] == "451 try later"
    assert e["account"] is None and e["status"] == "queued" and e["blob_id"] == BLOB
    st, body, _ = api(mc, "GET", "/api/v1/queue?status=sending&limit=1")
    assert [e["id"] for e in body["queue"]] == [live]
    err(api(mc, "GET", "/api/v1/queue?status=lost"), 422, "invalid")
    # retry: due now; a live lease is left alone; a dead runner's entry is queued again
    st, body, _ = api(mc, "POST", "/api/v1/queue/%d/retry" % due)
    assert st == 200 and body["id"] == due and body["status"] == "queued", body
    assert one(mc, "SELECT next_attempt_at <= now() FROM outbound_queue WHERE id = %d" % due) == "t"
    err(api(mc, "POST", "/api/v1/queue/%d/retry" % live), 409, "conflict")
    st, body, _ = api(mc, "POST", "/api/v1/queue/%d/retry" % dead)
    assert st == 200
    assert one(mc, "SELECT status || ',' || coalesce(claimed_by, '-') FROM outbound_queue WHERE id = %d"
               % dead) == "queued,-"
    err(api(mc, "POST", "/api/v1/queue/%d/retry" % done), 409, "conflict")
    err(api(mc, "POST", "/api/v1/queue/999999/retry"), 404, "not_found")
    err(api(mc, "POST", "/api/v1/queue/abc/retry"), 404, "not_found")
    err(api(mc, "POST", "/api/v1/queue/99999999999999999999/retry"), 404, "not_found")
    # a claim after the retry takes the entry now
    assert str(due) in mc.psql("SELECT id FROM mail_queue_claim('t', 10, 60)").split()
    # delete: not while a live lease holds it; the blob reference goes with the row
    err(api(mc, "DELETE", "/api/v1/queue/%d" % live), 409, "conflict")
    st, body, _ = api(mc, "DELETE", "/api/v1/queue/%d" % done)
    assert st == 200 and body["id"] == done and body["rcpt"] == "r4@remote.test"
    err(api(mc, "DELETE", "/api/v1/queue/%d" % done), 404, "not_found")
    assert one(mc, "SELECT refcount FROM blobs WHERE id = '%s'" % BLOB) == "3"
    err(api(mc, "GET", "/api/v1/queue/%d" % due), 405, "method_not_allowed")
    mc.psql("DELETE FROM outbound_queue")


# ---------------------------------------------------------------- mailctl

def test_mailctl_commands(mc, tmp_path):
    ok = lambda r: r[0] == 0 or pytest.fail("mailctl failed: %r" % (r,))  # noqa: E731
    r = mailctl(mc, "domain", "add", "ctl.test")
    ok(r)
    assert "ctl.test" in r[1]
    r = mailctl(mc, "domain", "list")
    ok(r)
    assert re.search(r"^ctl\.test\s+0\s+0", r[1], re.M), r[1]
    # password on stdin (--password=- and the default), never in argv
    r = mailctl(mc, "account", "add", "Ann@ctl.test", "--password=-", "--quota=1G", stdin="ann's password\n")
    ok(r)
    assert "ann@ctl.test" in r[1] and "INBOX" in r[1]
    assert one(mc, "SELECT quota_bytes FROM accounts WHERE address = 'ann@ctl.test'") == str(1 << 30)
    ok(mailctl(mc, "account", "add", "ben@ctl.test", "--quota-messages=10", stdin="ben's password\n"))
    ok(mailctl(mc, "account", "add", "cy@ctl.test", "--password-hash=" + sha512_crypt("cy")))
    assert one(mc, "SELECT password_hash FROM accounts WHERE address = 'cy@ctl.test'").startswith("$6$")
    r = mailctl(mc, "account", "list", "--domain=ctl.test")
    ok(r)
    assert [l.split()[0] for l in r[1].splitlines()[1:]] == ["ann@ctl.test", "ben@ctl.test", "cy@ctl.test"]
    r = mailctl(mc, "account", "show", "ann@ctl.test")
    ok(r)
    assert "address:        ann@ctl.test" in r[1] and "/1.0G" in r[1] and "\\Sent" in r[1], r[1]
    ok(mailctl(mc, "account", "set", "ben@ctl.test", "--disable", "--quota=0"))
    assert one(mc, "SELECT disabled FROM accounts WHERE address = 'ben@ctl.test'") == "t"
    old = one(mc, "SELECT password_hash FROM accounts WHERE address = 'ben@ctl.test'")
    ok(mailctl(mc, "account", "set", "ben@ctl.test", "--password=another password", "--enable"))
    assert one(mc, "SELECT disabled FROM accounts WHERE address = 'ben@ctl.test'") == "f"
    assert one(mc, "SELECT password_hash FROM accounts WHERE address = 'ben@ctl.test'") != old
    r = mailctl(mc, "--json", "account", "show", "ben@ctl.test")
    ok(r)
    assert json.loads(r[1])["address"] == "ben@ctl.test"
    r = mailctl(mc, "alias", "add", "team@ctl.test", "ann@ctl.test", "ben@ctl.test")
    ok(r)
    assert "team@ctl.test" in r[1]
    r = mailctl(mc, "alias", "show", "team@ctl.test")
    ok(r)
    assert r[1].strip() == "team@ctl.test -> ann@ctl.test, ben@ctl.test"
    ok(mailctl(mc, "alias", "add", "@ctl.test", "ann@ctl.test"))
    r = mailctl(mc, "alias", "list", "--domain=ctl.test")
    ok(r)
    assert r[1].splitlines() == ["@ctl.test -> ann@ctl.test", "team@ctl.test -> ann@ctl.test, ben@ctl.test"]
    ok(mailctl(mc, "alias", "del", "@ctl.test"))
    ok(mailctl(mc, "account", "del", "cy@ctl.test"))
    # queue
    due, live, dead, done = queue_rows(mc)
    r = mailctl(mc, "queue", "list")
    ok(r)
    assert "queued=1" in r[1] and "r1@remote.test" in r[1] and "<>" in r[1], r[1]
    r = mailctl(mc, "--json", "queue", "list", "--status=delivered")
    ok(r)
    assert [e["id"] for e in json.loads(r[1])["queue"]] == [done]
    ok(mailctl(mc, "queue", "retry", str(due)))
    r = mailctl(mc, "queue", "retry", str(live))
    assert r[0] == 1 and "being delivered" in r[2] and "409" in r[2], r
    ok(mailctl(mc, "queue", "del", str(done)))
    mc.psql("DELETE FROM outbound_queue")
    # cluster
    r = mailctl(mc, "cluster")
    ok(r)
    assert "router1" in r[1] and "store1" in r[1] and "store2" in r[1] and "primary" in r[1], r[1]
    assert "not_configured" in r[1]
    r = mailctl(mc, "--json", "cluster")
    ok(r)
    assert json.loads(r[1])["database"]["status"] == "up"
    # the domain goes with everything in it
    r = mailctl(mc, "domain", "del", "ctl.test")
    ok(r)
    assert "2 accounts, 1 aliases" in r[1], r[1]


def test_mailctl_errors_and_config(mc, tmp_path):
    # API errors: exit 1 with the API's message
    r = mailctl(mc, "domain", "add", "example.test")
    assert r[0] == 1 and "exists" in r[2] and "409" in r[2], r
    r = mailctl(mc, "account", "show", "nobody@example.test")
    assert r[0] == 1 and "no account" in r[2], r
    r = mailctl(mc, "account", "add", "x@example.test", "--password=short")
    assert r[0] == 1 and "too short" in r[2], r
    r = mailctl(mc, "--json", "domain", "add", "example.test")
    assert r[0] == 1 and json.loads(r[1])["code"] == "exists"
    r = mailctl(mc, "account", "add", "x@example.test", stdin="")
    assert r[0] == 1 and "no password" in r[2], r
    # usage: exit 2
    for args in ((), ("frobnicate",), ("domain",), ("domain", "add"), ("domain", "add", "a.test", "b.test"),
                 ("domain", "list", "--bogus"), ("account", "set", "ann@ctl.test"),
                 ("account", "add", "a@b.test", "--quota=lots"), ("queue", "retry"),
                 ("account", "set", "a@b.test", "--disable", "--enable"), ("alias", "add", "a@b.test"),
                 ("cluster", "extra"), ("migrate",)):
        r = mailctl(mc, *args)
        assert r[0] == 2, (args, r)
    r = mailctl(None, "--help")
    assert r[0] == 0 and "domain add NAME" in r[1]
    # a wrong token: the API's 401, exit 1; no token anywhere: usage (2)
    r = mailctl(mc, "--token=wrong-token-wrong-token", "domain", "list", token=False)
    assert r[0] == 1 and "401" in r[2], r
    r = mailctl(mc, "domain", "list", token=False, cwd=str(tmp_path))
    assert r[0] == 2 and "token" in r[2], r
    # nothing listening: exit 1
    r = mailctl(None, "--api=http://127.0.0.1:1", "--token=x", "domain", "list")
    assert r[0] == 1 and "cannot connect" in r[2], r
    # the defaults: $MAIL_API and $MAIL_ADMIN_TOKEN, then var/admin.token under the cwd
    r = mailctl(None, "domain", "list", env={"MAIL_API": mc.admin_url(), "MAIL_ADMIN_TOKEN": mc.admin_token})
    assert r[0] == 0 and "example.test" in r[1], r
    os.makedirs(tmp_path / "var")
    (tmp_path / "var" / "admin.token").write_text(mc.admin_token + "\n")
    r = mailctl(None, "domain", "list", env={"MAIL_API": mc.admin_url()}, cwd=str(tmp_path))
    assert r[0] == 0 and "example.test" in r[1], r


def test_mailctl_migrate(mc):
    exe = binary("router", "mailctl")
    mc.pg.create_database("fresh")
    conninfo = mc.pg.conninfo("fresh")
    run = lambda *a: subprocess.run([exe, "migrate"] + list(a), capture_output=True,  # noqa: E731
                                    stdin=subprocess.DEVNULL, timeout=120)
    r = run("--db=" + conninfo, "--status")
    assert r.returncode == 0 and b"schema version 0" in r.stdout and b"pending" in r.stdout, r
    r = run("--db=" + conninfo)
    assert r.returncode == 0, r
    assert ("from version 0 to %d" % LATEST).encode() in r.stdout, r.stdout
    assert mc.pg.psql("SELECT max(version) FROM schema_migrations", db="fresh").strip() == str(LATEST)
    assert mc.pg.psql("SELECT to_regclass('public.cluster_members') IS NOT NULL", db="fresh").strip() == "t"
    r = run("--db=" + conninfo)
    assert r.returncode == 0 and ("already at version %d" % LATEST).encode() in r.stdout, r
    r = run("--db=" + conninfo, "--json", "--status")
    assert r.returncode == 0 and json.loads(r.stdout) == {"database_version": LATEST, "binary_version": LATEST}
    # $MAIL_DB works as the default
    r = subprocess.run([exe, "migrate", "--status"], capture_output=True, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, MAIL_DB=conninfo), timeout=60)
    assert r.returncode == 0 and ("schema version %d" % LATEST).encode() in r.stdout
    # a database that is not there: exit 1 with libpq's reason
    r = run("--db=" + mc.pg.conninfo("no_such_db"))
    assert r.returncode == 1 and b"no_such_db" in r.stderr, r
    r = run()
    assert r.returncode == 2 and b"--db" in r.stderr
    r = run("--db=" + conninfo, "--bogus")
    assert r.returncode == 2


# ---------------------------------------------------------------- cluster health (breaks things last)

def test_cluster_view(mc):
    st, c, _ = api(mc, "GET", "/api/v1/cluster")
    assert st == 200, c
    assert c["router"]["node_id"] == "router1" and c["router"]["schema_version"] == LATEST
    assert c["router"]["version"] and c["router"]["address"] == mc.router_addr(0)
    assert [(s["name"], s["status"]) for s in c["stores"]] == [("store1", "up"), ("store2", "up")]
    assert c["store_quorum"] == {"replicas": 2, "write_quorum": 2, "up": 2, "writable": True}
    db = c["database"]
    assert db["status"] == "up" and db["role"] == "primary" and db["schema_version"] == LATEST, db
    assert db["pool"]["ready"] >= 1
    routers = {r["node_id"]: r for r in c["routers"]}
    assert routers["router1"]["status"] == "up" and routers["router1"]["address"] == mc.router_addr(0)
    assert routers["router1"]["seen_ago_s"] < 30
    assert c["frontends"] == [] and c["dnsd"]["status"] == "not_configured"
    # the heartbeat row is refreshed every few seconds
    t0 = one(mc, "SELECT seen_at FROM cluster_members WHERE node_id = 'router1'")
    wait(lambda: one(mc, "SELECT seen_at FROM cluster_members WHERE node_id = 'router1'") != t0, timeout=12,
         what="a new heartbeat")
    # a member that stops beating drops out of the list after 30 s
    mc.psql("INSERT INTO cluster_members (kind, node_id, address, seen_at) VALUES "
            "('frontend', 'fe-live', '10.0.0.1:2143', now()), "
            "('frontend', 'fe-gone', '10.0.0.2:2143', now() - interval '31 seconds')")
    st, c, _ = api(mc, "GET", "/api/v1/cluster")
    assert [f["node_id"] for f in c["frontends"]] == ["fe-live"]
    mc.psql("DELETE FROM cluster_members WHERE kind = 'frontend'")
    # a store node killed: the main loop's health probe marks it down
    mc.kill_store(1)
    c = wait(lambda: (lambda c: c if c["stores"][1]["status"] == "down" else None)(
        api(mc, "GET", "/api/v1/cluster")[1]), what="store2 down")
    assert c["stores"][0]["status"] == "up" and c["store_quorum"]["writable"] is False
    r = mailctl(mc, "cluster")
    assert r[0] == 0 and "NOT writable" in r[1] and re.search(r"store2\s+\S+\s+down", r[1]), r[1]
    mc.start_store(1)
    wait(lambda: api(mc, "GET", "/api/v1/cluster")[1]["stores"][1]["status"] == "up", what="store2 up")


def test_database_down_is_503(mc):
    mc.pg.stop_server()
    try:
        # reads and writes: 503 with Retry-After, never a success
        st, body, h = wait(lambda: (lambda r: r if r[0] == 503 else None)(api(mc, "GET", "/api/v1/domains")),
                           what="503 while the database is down")
        assert body["code"] == "unavailable" and h["Retry-After"], body
        err(api(mc, "POST", "/api/v1/domains", {"name": "down.test"}), 503, "unavailable")
        err(api(mc, "POST", "/api/v1/accounts", {"address": "zed@example.test", "password": "password1"}),
            503, "unavailable")
        # validation needs no database: still 422
        err(api(mc, "POST", "/api/v1/domains", {"name": "bad_name"}), 422, "invalid")
        # the cluster view answers, and says so
        st, c, _ = api(mc, "GET", "/api/v1/cluster")
        assert st == 200 and c["database"]["status"] == "down" and c["routers"][0]["node_id"] == "router1", c
        r = mailctl(mc, "domain", "list")
        assert r[0] == 1 and "503" in r[2]
    finally:
        mc.pg.start_server()
    wait(lambda: api(mc, "GET", "/api/v1/domains")[0] == 200, timeout=30, what="the API back after the restart")
    assert one(mc, "SELECT count(*) FROM domains WHERE name = 'down.test'") == "0"
    assert one(mc, "SELECT count(*) FROM accounts WHERE address = 'zed@example.test'") == "0"
    log = mc.router_log()
    assert 'msg="admin request"' in log and "password1" not in log and "correct horse" not in log
