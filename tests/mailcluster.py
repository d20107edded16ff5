"""mailcluster.py - a whole local cluster for tests: a throwaway PostgreSQL
(pgcluster.PgCluster), N mail-store nodes and M mail-router processes, each
on free loopback ports, with helpers to reach them.

    from mailcluster import MailCluster
    with MailCluster(stores=2, routers=1) as mc:
        mc.router_addr(0)               # "127.0.0.1:PORT" of mail.router.v1
        mc.admin_url(0), mc.admin_token # admin API
        mc.psql("SELECT count(*) FROM messages")
        stub = mc.router_stub(0)        # python grpcio stub of mail.router.v1.Router
        mc.kill_store(1); mc.start_store(1)

Daemons run from MAIL_BUILD_DIR (the sanitizer build in `make test`); stop()
fails the test if a daemon exits non-zero on SIGTERM (ASan leak reports)."""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import BUILD, Daemon, free_port, gen_python  # noqa: E402
from pgcluster import PgCluster, PgError  # noqa: E402


class MailCluster:
    def __init__(self, stores=2, routers=1, replicas=2, write_quorum=0, pg=None,
                 fsync=False, router_args=(), store_args=(), db="mail", workers=2):
        self.n_stores = stores
        self.n_routers = routers
        self.replicas = replicas
        self.write_quorum = write_quorum
        self.fsync = fsync
        self.router_args = list(router_args)
        self.store_args = list(store_args)
        self.db = db
        self.workers = workers
        self.pg = pg
        self.own_pg = pg is None
        self.dir = tempfile.mkdtemp(prefix="mc", dir="/tmp")
        self.stores = []
        self.store_ports = [free_port() for _ in range(stores)]
        self.routers = []
        self.router_ports = []
        self.admin_ports = []
        self.metrics_ports = []
        self.admin_token_file = os.path.join(self.dir, "admin.token")
        self.conninfo = None

    # ------------------------------------------------------------ lifecycle

    def start(self):
        if self.own_pg:
            self.pg = PgCluster(fsync=self.fsync)
            self.pg.start()
        try:
            self.pg.create_database(self.db)
        except PgError as e:
            if "already exists" not in str(e):  # a shared PgCluster may have it already
                raise
        self.conninfo = self.pg.conninfo(self.db)
        for i in range(self.n_stores):
            self.stores.append(None)
            self.start_store(i)
        for i in range(self.n_routers):
            self.router_ports.append(free_port())
            self.admin_ports.append(free_port())
            self.metrics_ports.append(free_port())
            self.routers.append(None)
            self.start_router(i)
        return self

    def store_nodes(self):
        return ",".join("store%d=127.0.0.1:%d" % (i + 1, p) for i, p in enumerate(self.store_ports))

    def store_dir(self, i):
        return os.path.join(self.dir, "store%d" % (i + 1))

    def start_store(self, i):
        p = self.store_ports[i]
        argv = [os.path.join(BUILD, "store", "mail-store"), "--listen=127.0.0.1:%d" % p,
                "--data-dir=%s" % self.store_dir(i), "--metrics-listen=", "--min-free=1M",
                "--workers=1"] + self.store_args
        self.stores[i] = Daemon(argv, os.path.join(self.dir, "store%d.log" % (i + 1)), p).start()

    def kill_store(self, i):
        self.stores[i].kill9()

    def stop_store(self, i):
        return self.stores[i].stop()

    def router_argv(self, i, conninfo=None):
        return [os.path.join(BUILD, "router", "mail-router"),
                "--listen=127.0.0.1:%d" % self.router_ports[i],
                "--metrics-listen=127.0.0.1:%d" % self.metrics_ports[i],
                "--admin-listen=127.0.0.1:%d" % self.admin_ports[i],
                "--admin-token-file=%s" % self.admin_token_file,
                "--db=%s" % (conninfo or self.conninfo),
                "--store-nodes=%s" % self.store_nodes(),
                "--replicas=%d" % self.replicas,
                "--write-quorum=%d" % self.write_quorum,
                "--workers=%d" % self.workers,
                "--node-id=router%d" % (i + 1),
                "--argon2-t-cost=1", "--argon2-m-cost=8M",
                "--shutdown-timeout=5s"] + self.router_args

    def start_router(self, i, conninfo=None):
        argv = self.router_argv(i, conninfo)
        self.routers[i] = Daemon(argv, os.path.join(self.dir, "router%d.log" % (i + 1)),
                                 self.router_ports[i]).start(timeout=30)

    def stop_router(self, i):
        return self.routers[i].stop()

    def kill_router(self, i):
        self.routers[i].kill9()

    def stop(self):
        """Stops everything; returns {name: exit code} of the daemons still running."""
        codes = {}
        for i, r in enumerate(self.routers):
            if r is not None and r.proc.poll() is None:
                codes["router%d" % (i + 1)] = r.stop()
        for i, s in enumerate(self.stores):
            if s is not None and s.proc.poll() is None:
                codes["store%d" % (i + 1)] = s.stop()
        return codes

    def cleanup(self):
        for d in self.routers + self.stores:
            if d is not None and d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
        if self.own_pg and self.pg is not None:
            self.pg.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        failed = exc[0] is not None
        try:
            codes = self.stop()
            bad = {k: v for k, v in codes.items() if v != 0}
            if not failed and bad:
                failed = True   # keep the logs the message points at
                raise AssertionError("daemons exited badly: %s (logs in %s)" % (bad, self.dir))
        finally:
            if not failed:
                self.cleanup()
            else:
                # keep the logs of a failing test, but never leave processes behind
                for d in self.routers + self.stores:
                    if d is not None and d.proc is not None and d.proc.poll() is None:
                        d.proc.kill()
                        d.proc.wait()
                if self.own_pg and self.pg is not None:
                    self.pg.cleanup()
                sys.stderr.write("cluster logs kept in %s\n" % self.dir)

    # ------------------------------------------------------------ clients

    def router_addr(self, i=0):
        return "127.0.0.1:%d" % self.router_ports[i]

    def admin_url(self, i=0):
        return "http://127.0.0.1:%d" % self.admin_ports[i]

    def metrics_url(self, i=0):
        return "http://127.0.0.1:%d" % self.metrics_ports[i]

    @property
    def admin_token(self):
        with open(self.admin_token_file) as f:
            return f.read().strip()

    def psql(self, sql):
        return self.pg.psql(sql, db=self.db)

    def router_stub(self, i=0):
        import grpc
        gen_python("router.proto")
        import router_pb2_grpc
        ch = grpc.insecure_channel(self.router_addr(i))
        return router_pb2_grpc.RouterStub(ch)

    def store_stub(self, i):
        import grpc
        gen_python("store.proto")
        import store_pb2_grpc
        ch = grpc.insecure_channel("127.0.0.1:%d" % self.store_ports[i])
        return store_pb2_grpc.BlobStoreStub(ch)

    def router_log(self, i=0):
        return self.routers[i].log_text()
