"""pgcluster.py - a throwaway PostgreSQL 15 for tests: a primary, optionally with a
hot standby made by pg_basebackup -R (streaming replication), on Unix sockets only.

    from pgcluster import PgCluster
    with PgCluster(standby=True, fsync=False) as pg:
        pg.create_database("t1")
        pg.psql("SELECT 1", db="t1")
        pg.conninfo("t1")            # the primary
        pg.multi_conninfo("t1")      # both hosts, target_session_attrs=read-write
        pg.stop_primary(); pg.promote()

PostgreSQL refuses to run as root: when the tests run as root (CI) initdb, pg_ctl and
pg_basebackup run as the postgres user through `runuser -u postgres --`, in a data
directory under a short /tmp path chowned to it (Unix socket paths are limited to
~107 bytes). listen_addresses is empty: nothing listens on TCP. fsync is off unless
asked (never for durability tests). cleanup() - also run at interpreter exit and by
the context manager - always stops the servers (immediate mode, then SIGKILL) and
removes the directory. No standard input is used anywhere (CI has none)."""
import atexit
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

PG_BIN = os.environ.get("MAIL_PG_BIN", "/usr/lib/postgresql/15/bin")

_live = set()


@atexit.register
def _cleanup_all():
    for c in list(_live):
        c.cleanup()


class PgError(RuntimeError):
    pass


class PgCluster:
    def __init__(self, standby=False, fsync=False, sync_standby=False, base_dir="/tmp",
                 port=None):
        self.want_standby = standby
        self.fsync = fsync
        self.sync_standby = sync_standby
        self.base_dir = base_dir
        self.as_root = os.geteuid() == 0
        self.dir = None
        ports = random.sample(range(20000, 60000, 2), 1)
        self.port = port or ports[0]
        self.standby_port = self.port + 1
        self.running = {}  # which -> data dir

    # ------------------------------------------------------------ paths

    def data_dir(self, which="primary"):
        return os.path.join(self.dir, "p" if which == "primary" else "s")

    def sock_dir(self, which="primary"):
        return os.path.join(self.dir, "ps" if which == "primary" else "ss")

    def port_of(self, which="primary"):
        return self.port if which == "primary" else self.standby_port

    def log_path(self, which="primary"):
        return os.path.join(self.dir, which + ".log")

    # ------------------------------------------------------------ running commands

    def _run(self, argv, timeout=120, check=True, as_postgres=True):
        if as_postgres and self.as_root:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, cwd=self.dir, timeout=timeout)
        out = p.stdout.decode("utf-8", "replace")
        if check and p.returncode != 0:
            raise PgError("%s failed (%d): %s" % (" ".join(argv), p.returncode, out.strip()))
        return out

    def _pg_ctl(self, which, *args, check=True, timeout=120):
        return self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data_dir(which),
                          "-l", self.log_path(which)] + list(args), check=check, timeout=timeout)

    def _chown(self, path):
        if self.as_root:
            shutil.chown(path, "postgres", "postgres")

    def _mkdir(self, path):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o700)
        self._chown(path)

    # ------------------------------------------------------------ lifecycle

    def start(self):
        """initdb + start the primary (and the standby if asked); returns self."""
        self._make_base(self.base_dir)
        self.dir = tempfile.mkdtemp(prefix="pg", dir=self.base_dir)
        longest = os.path.join(self.dir, "ss", ".s.PGSQL.%d" % self.standby_port)
        if len(longest) > 100:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise PgError("socket path too long for a Unix socket (%d bytes): %s" % (len(longest), longest))
        os.chmod(self.dir, 0o700)
        self._chown(self.dir)
        _live.add(self)
        try:
            self._mkdir(self.sock_dir("primary"))
            self._run([os.path.join(PG_BIN, "initdb"), "-D", self.data_dir("primary"), "-U", "postgres",
                       "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
            conf = [
                "listen_addresses = ''",
                "unix_socket_directories = '%s'" % self.sock_dir("primary"),
                "port = %d" % self.port,
                "fsync = %s" % ("on" if self.fsync else "off"),
                "full_page_writes = %s" % ("on" if self.fsync else "off"),
                "synchronous_commit = on",
                "shared_buffers = 32MB",
                "max_connections = 100",
                "max_wal_senders = 5",
                "wal_keep_size = '128MB'",
                "hot_standby = on",
                "log_min_messages = warning",
                "log_line_prefix = '%m [%p] '",
            ]
            if self.sync_standby:
                conf.append("synchronous_standby_names = '*'")
            self._append_conf("primary", conf)
            self.start_server("primary")
            if self.want_standby:
                self.add_standby()
        except BaseException:
            self.cleanup()
            raise
        return self

    @staticmethod
    def _make_base(path):
        """Create the base dir and missing parents, traversable by postgres whatever the umask."""
        path = os.path.abspath(path)
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for d in reversed(missing):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)

    def postmaster_pids(self):
        """The pids of the running postmasters (from postmaster.pid)."""
        pids = []
        for which in ("primary", "standby"):
            try:
                with open(os.path.join(self.data_dir(which), "postmaster.pid")) as f:
                    pids.append(int(f.readline().strip()))
            except (OSError, ValueError, TypeError):
                pass
        return pids

    def _append_conf(self, which, lines):
        path = os.path.join(self.data_dir(which), "postgresql.conf")
        with open(path, "a") as f:
            f.write("\n# pgcluster.py\n" + "\n".join(lines) + "\n")

    def start_server(self, which="primary"):
        self._pg_ctl(which, "-w", "-t", "60", "start")
        self.running[which] = self.data_dir(which)

    def stop_server(self, which="primary", mode="fast"):
        """Stop one server: mode 'fast' (clean) or 'immediate' (like a crash)."""
        if which not in self.running:
            return
        self._pg_ctl(which, "-m", mode, "-w", "-t", "60", "stop", check=False)
        self.running.pop(which, None)

    def add_standby(self):
        """pg_basebackup -R from the primary, then start it as a hot standby."""
        self._mkdir(self.sock_dir("standby"))
        self._run([os.path.join(PG_BIN, "pg_basebackup"), "-h", self.sock_dir("primary"),
                   "-p", str(self.port), "-U", "postgres", "-D", self.data_dir("standby"),
                   "-R", "-X", "stream", "-c", "fast", "--no-sync"])
        # the copied postgresql.conf carries the primary's settings: override them
        self._append_conf("standby", [
            "unix_socket_directories = '%s'" % self.sock_dir("standby"),
            "port = %d" % self.standby_port,
            "synchronous_standby_names = ''",
            "hot_standby = on",
        ])
        self.start_server("standby")
        self.wait_streaming()

    def wait_streaming(self, timeout=30.0):
        """Wait until the primary sees the standby streaming."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out = self.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            if out.strip() not in ("", "0"):
                return
            time.sleep(0.05)
        raise PgError("standby not streaming after %.0fs" % timeout)

    def wait_replayed(self, timeout=30.0):
        """Wait until the standby has replayed everything the primary wrote so far."""
        lsn = self.psql("SELECT pg_current_wal_lsn()").strip()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out = self.psql("SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn" % lsn, which="standby")
            if out.strip() == "t":
                return
            time.sleep(0.05)
        raise PgError("standby did not replay up to %s" % lsn)

    def stop_primary(self, mode="fast"):
        self.stop_server("primary", mode)

    def promote(self):
        """Promote the standby; it takes writes when this returns."""
        self._pg_ctl("standby", "-w", "-t", "60", "promote")
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.psql("SELECT pg_is_in_recovery()", which="standby").strip() == "f":
                return
            time.sleep(0.05)
        raise PgError("standby still in recovery after promote")

    def restart(self, which="primary", mode="fast"):
        self._pg_ctl(which, "-m", mode, "-w", "-t", "60", "restart")
        self.running[which] = self.data_dir(which)

    def cleanup(self):
        """Stop every server (whatever state it is in) and remove the directory."""
        if self.dir is None:
            return
        for which in ("standby", "primary"):
            d = self.data_dir(which)
            if os.path.isdir(d):
                try:
                    self._pg_ctl(which, "-m", "immediate", "-w", "-t", "20", "stop", check=False,
                                 timeout=30)
                except Exception:
                    pass
                self._kill_postmaster(d)
        self.running.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        _live.discard(self)

    @staticmethod
    def _kill_postmaster(data_dir):
        try:
            with open(os.path.join(data_dir, "postmaster.pid")) as f:
                pid = int(f.readline().strip())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def __enter__(self):
        if self.dir is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    # ------------------------------------------------------------ clients

    def conninfo(self, db="postgres", which="primary", extra=""):
        s = "host=%s port=%d dbname=%s user=postgres" % (self.sock_dir(which), self.port_of(which), db)
        return s + (" " + extra if extra else "")

    def multi_conninfo(self, db="postgres", extra=""):
        """Both servers; libpq picks the one that takes writes."""
        s = ("host=%s,%s port=%d,%d dbname=%s user=postgres target_session_attrs=read-write"
             % (self.sock_dir("primary"), self.sock_dir("standby"), self.port, self.standby_port, db))
        return s + (" " + extra if extra else "")

    def psql(self, sql, db="postgres", which="primary", check=True, timeout=60, args=()):
        """Run SQL with psql (as the caller, over the socket); unaligned, tuples only.
        With check=False returns (returncode, stdout, stderr) instead of raising."""
        argv = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                "-h", self.sock_dir(which), "-p", str(self.port_of(which)), "-U", "postgres",
                "-d", db] + list(args) + ["-c", sql]
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        if check and p.returncode != 0:
            raise PgError("psql failed: %s\nSQL: %s" % (p.stderr.decode("utf-8", "replace").strip(), sql))
        if not check:
            return p.returncode, p.stdout.decode(), p.stderr.decode("utf-8", "replace")
        return p.stdout.decode("utf-8", "replace")

    def create_database(self, name, which="primary"):
        self.psql('CREATE DATABASE "%s"' % name, which=which)
        return name

    def log_text(self, which="primary"):
        try:
            with open(self.log_path(which), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
