"""A throwaway PostgreSQL cluster for the test-suite, the benchmarks and local trials.

``PostgresCluster`` runs ``initdb`` into a temporary directory, starts the server with
``pg_ctl`` on 127.0.0.1 and a free port (unix socket inside the temporary directory, never
in /var/run), and throws everything away on ``stop()``. Durability is switched off
(fsync, synchronous_commit, full_page_writes): the data lives for one test session.

When the test process runs as root (CI), initdb/postgres refuse to run, so the server runs
as the ``postgres`` system user created by Debian's package (override with
``CALLCENTER_TEST_PG_USER``; ``nobody`` as a last resort) and the temporary directory is
chowned to that user.

``ExternalPostgres`` gives the same interface on top of an existing server
(``CALLCENTER_TEST_POSTGRES_URL``): it only creates and drops per-test databases.

URLs handed out are plain ``postgresql://user@127.0.0.1:PORT/dbname``; the application picks
its own driver (``postgresql+psycopg``).

Cleanup: ``stop()`` (fixture teardown, also on Ctrl-C), an ``atexit`` backstop, a SIGTERM
handler (when SIGTERM is not otherwise handled) and, for a killed (-9) test run, the next
start reaps clusters whose owning process is gone.

Standard library only at import time (``psycopg`` is imported when first needed), so
``python3 callcenter/db/pgcluster.py --bindir`` works without the virtualenv.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

ENV_BINDIR = "CALLCENTER_TEST_PG_BINDIR"  # explicit bindir; a dir without the binaries = "none"
ENV_URL = "CALLCENTER_TEST_POSTGRES_URL"  # use this server instead of starting one
ENV_USER = "CALLCENTER_TEST_PG_USER"  # OS user for the server when running as root

DIR_PREFIX = "callcenter-pg-"
DB_PREFIX = "cc_test_"
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
_MAX_SOCKET_DIR_LEN = 80  # sun_path is 108 bytes; "/.s.PGSQL.65535" needs 16 of them

#: postgresql.conf overrides. Throwaway data: durability off, everything local.
DEFAULT_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "64MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "1h",
    # autovacuum workers connecting to a template make CREATE DATABASE fail sporadically
    "autovacuum": "off",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",  # tests provoke errors on purpose; keep the log short
}


class PostgresUnavailable(RuntimeError):
    """The server could not be started or reached."""


# --------------------------------------------------------------------------------------
# binaries


def _is_bindir(path: str | os.PathLike[str] | None) -> bool:
    if not path:
        return False
    p = Path(path)
    return all(os.access(p / name, os.X_OK) and (p / name).is_file() for name in _REQUIRED_BINARIES)


def _version_key(bindir: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin
    version = Path(bindir).parent.name
    return tuple(int(x) for x in re.findall(r"\d+", version)) or (0,)


def find_pg_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None.

    Order: $CALLCENTER_TEST_PG_BINDIR (exclusively, when set), ``pg_config --bindir``,
    /usr/lib/postgresql/*/bin newest first, then initdb on PATH.
    """
    override = os.environ.get(ENV_BINDIR)
    if override:
        return Path(override) if _is_bindir(override) else None

    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(out)
    candidates += sorted(
        (str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), key=_version_key, reverse=True
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates += [os.path.dirname(initdb), os.path.dirname(os.path.realpath(initdb))]
    for candidate in candidates:
        if _is_bindir(candidate):
            return Path(candidate)
    return None


# --------------------------------------------------------------------------------------
# process-wide cleanup registry

_live: set[_PostgresServer] = set()
_live_lock = threading.RLock()  # reentrant: the SIGTERM handler may interrupt a holder
_hooks_installed = False


def _cleanup_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_cleanup_all)
    # Only take SIGTERM over when nobody else has; never from a non-main thread.
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)


def _register(server: _PostgresServer) -> None:
    _install_hooks()
    with _live_lock:
        _live.add(server)


def _unregister(server: _PostgresServer) -> None:
    with _live_lock:
        _live.discard(server)


# --------------------------------------------------------------------------------------
# shared: admin connection, per-test databases


def _plain_url(url: str, dbname: str | None = None) -> str:
    """``postgresql://...`` (driver suffix dropped), optionally pointing at another database."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    path = parts.path if dbname is None else "/" + dbname
    return urlunsplit(("postgresql", parts.netloc, path, parts.query, parts.fragment))


def _dbname_of(name_or_url: str) -> str:
    if "://" in name_or_url:
        return unquote(urlsplit(name_or_url).path.lstrip("/"))
    return name_or_url


class _PostgresServer:
    """Common part: an autocommit admin connection that creates and drops databases."""

    _counter = itertools.count(1)

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._admin_conn: Any = None
        self._created: set[str] = set()
        self.server_version_num = 0

    # subclasses provide
    @property
    def url(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def database_url(self, name: str) -> str:
        """URL of database ``name`` on this server."""
        return _plain_url(self.url, name)

    def _admin(self) -> Any:
        import psycopg

        conn = self._admin_conn
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            self._admin_conn = conn
            self.server_version_num = int(conn.info.server_version)
        return conn

    def execute(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement on the admin connection (database ``postgres``), autocommit."""
        import psycopg

        with self._lock:
            for attempt in (1, 2):
                try:
                    cur = self._admin().execute(query, params)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError:
                    conn = self._admin_conn
                    # reconnect once when the admin connection itself died; SQL errors
                    # (e.g. ObjectInUse) and failures to connect at all propagate
                    if attempt == 2 or conn is None or not (conn.closed or conn.broken):
                        raise
                    self._close_admin()
        raise AssertionError("unreachable")

    def _new_name(self) -> str:
        return f"{DB_PREFIX}{os.getpid()}_{next(self._counter)}_{uuid.uuid4().hex[:6]}"

    def create_database(self, name: str | None = None, *, template: str = "template0") -> str:
        """Create an empty database (a copy of ``template``) and return its URL."""
        from psycopg import sql

        name = name or self._new_name()
        query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        with self._lock:
            self._admin()  # sets server_version_num
            if self.server_version_num >= 150000:
                # FILE_COPY: one checkpoint + directory copy; much faster than the WAL_LOG
                # default for small templates, and checkpoints are cheap with fsync=off.
                query = sql.SQL("{} STRATEGY FILE_COPY").format(query)
            self.execute(query)
            self._created.add(name)
        return self.database_url(name)

    def drop_database(self, name_or_url: str) -> None:
        """Drop a database (by name or URL), disconnecting whoever is still connected."""
        from psycopg import sql

        name = _dbname_of(name_or_url)
        with self._lock:
            self._admin()
            if self.server_version_num >= 130000:
                self.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            else:
                self.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                self.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            self._created.discard(name)

    def _close_admin(self) -> None:
        conn, self._admin_conn = self._admin_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self) -> _PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> _PostgresServer:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# external server


class ExternalPostgres(_PostgresServer):
    """An existing server: per-test databases are created in it and dropped afterwards."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = _plain_url(url)

    @property
    def url(self) -> str:
        return self._url

    def start(self) -> ExternalPostgres:
        try:
            self.execute("SELECT 1")
        except Exception as exc:
            raise PostgresUnavailable(f"cannot connect to {_redact(self._url)}: {exc}") from exc
        _register(self)
        return self

    def stop(self) -> None:
        with self._lock:
            for name in list(self._created):
                with contextlib.suppress(Exception):
                    self.drop_database(name)
            self._close_admin()
        _unregister(self)

    def __repr__(self) -> str:
        return f"ExternalPostgres({_redact(self._url)!r})"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# --------------------------------------------------------------------------------------
# throwaway cluster


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_as_user() -> tuple[int, int, str] | None:
    """(uid, gid, home) of the unprivileged server user when we are root, else None."""
    if os.geteuid() != 0:
        return None
    import pwd

    names = [os.environ[ENV_USER]] if os.environ.get(ENV_USER) else ["postgres", "nobody"]
    for name in names:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid == 0:
            continue
        return pw.pw_uid, pw.pw_gid, pw.pw_dir
    raise PostgresUnavailable(
        f"running as root and none of the users {names} exists to run PostgreSQL as "
        f"(initdb refuses root); create one or set {ENV_USER}"
    )


def _base_dir() -> str:
    base = tempfile.gettempdir()
    # the socket lives in the cluster dir: keep its path short; as root, the server user
    # must be able to traverse the parent (root's private TMPDIR would not do)
    if (len(base) > _MAX_SOCKET_DIR_LEN - 30 or os.geteuid() == 0) and os.path.isdir("/tmp"):
        base = "/tmp"
    return base


def _reap_stale(base: str) -> None:
    """Stop and remove clusters left behind by test runs that were killed (-9)."""
    for root in Path(base).glob(DIR_PREFIX + "*"):
        try:
            owner = int((root / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        data = root / "data"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(data).encode() in cmdline:
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown
                for _ in range(50):
                    if not _pid_alive(pid):
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


class PostgresCluster(_PostgresServer):
    """A private PostgreSQL server in a temporary directory.

    >>> with PostgresCluster() as pg:
    ...     url = pg.create_database()
    """

    def __init__(
        self,
        bindir: str | os.PathLike[str] | None = None,
        *,
        settings: dict[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        found = Path(bindir) if bindir is not None else find_pg_bindir()
        if found is None or not _is_bindir(found):
            raise PostgresUnavailable(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found"
                + (f" in {bindir}" if bindir is not None else "")
            )
        self.bindir: Path = found
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.start_timeout = start_timeout
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.root: Path | None = None
        self.user = "postgres"  # database superuser
        self._owner = os.getpid()
        self._started = False

    # -- paths ---------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "cluster not started"
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "cluster not started"
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        if not self._started:
            raise PostgresUnavailable("cluster not started")
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    # -- subprocesses --------------------------------------------------------------------

    def _run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        kwargs: dict[str, Any] = {}
        run_as = _run_as_user()
        if run_as is not None:
            uid, gid, home = run_as
            kwargs.update(user=uid, group=gid, extra_groups=[])
            env["HOME"] = home
        return subprocess.run(
            args,
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout if timeout is not None else self.start_timeout,
            **kwargs,
        )

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        if self._started:
            return self
        base = _base_dir()
        with contextlib.suppress(Exception):
            _reap_stale(base)
        run_as = _run_as_user()
        self.root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base))
        _register(self)  # from here on, atexit/SIGTERM clean up even if start fails
        try:
            (self.root / "owner.pid").write_text(f"{os.getpid()}\n")
            if run_as is not None:
                os.chown(self.root, run_as[0], run_as[1])
            self._initdb()
            self._start_server()
            self._started = True
            self.execute("SELECT 1")  # the admin connection; also records server version
        except BaseException:
            log = self.log_tail()
            self.stop()
            if log:
                sys.stderr.write(f"--- PostgreSQL log ---\n{log}\n")
            raise
        return self

    def _initdb(self) -> None:
        proc = self._run(
            self._bin("initdb"),
            "-D", str(self.data_dir),
            "--auth=trust",
            "-U", self.user,
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        conf = "".join(f"{key} = {value}\n" for key, value in self.settings.items())
        conf += f"unix_socket_directories = '{self.root}'\n"
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write("\n# --- callcenter test harness ---\n" + conf)

    def _start_server(self) -> None:
        last_error = ""
        for _attempt in range(5):
            self.port = _free_port()
            proc = self._run(
                self._bin("pg_ctl"),
                "-D", str(self.data_dir),
                "-l", str(self.log_file),
                "-o", f"-p {self.port}",
                "-w", "-t", str(int(self.start_timeout)),
                "start",
                timeout=self.start_timeout + 10,
            )  # fmt: skip
            if proc.returncode == 0:
                return
            last_error = f"{proc.stdout}{proc.stderr}\n{self.log_tail()}"
            if "could not bind" not in last_error and "already in use" not in last_error:
                break
            time.sleep(0.2)  # somebody took the port between probe and bind: try another
        raise PostgresUnavailable(f"pg_ctl start failed:\n{last_error}")

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, AssertionError):
            return None

    def stop(self) -> None:
        """Stop the server (immediate mode: the data is thrown away) and delete its files."""
        with self._lock:
            self._close_admin()
            if self.root is None:
                _unregister(self)
                return
            if os.getpid() != self._owner:  # a forked child must not tear the parent's down
                return
            pid = self._postmaster_pid()
            if pid is not None and _pid_alive(pid):
                with contextlib.suppress(Exception):
                    self._run(
                        self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                        "-w", "-t", "30", "stop", timeout=40,
                    )  # fmt: skip
                if _pid_alive(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            self._started = False
            self._created.clear()
        _unregister(self)

    def __repr__(self) -> str:
        state = f"{self.host}:{self.port}" if self._started else "stopped"
        return f"PostgresCluster({str(self.bindir)!r}, {state})"


@contextlib.contextmanager
def throwaway_cluster(**kwargs: Any) -> Iterator[PostgresCluster]:
    """``with throwaway_cluster() as pg: ...``"""
    cluster = PostgresCluster(**kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


if __name__ == "__main__":
    # python3 callcenter/db/pgcluster.py --bindir   -> print the server bindir, exit 1 if none
    # python3 callcenter/db/pgcluster.py            -> start a cluster, print its URL, wait for ^C
    if sys.argv[1:] == ["--bindir"]:
        found = find_pg_bindir()
        if found is None:
            sys.exit(1)
        print(found)
        sys.exit(0)
    with throwaway_cluster() as pg:
        print(pg.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
