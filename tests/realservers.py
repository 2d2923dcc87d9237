"""Real PostgreSQL, Redis (or Valkey) and HAProxy servers for tests, on loopback only.

A pytest plugin, loaded by the root conftest.py. Each server is started once per session from
the Debian binaries, in its own temporary directory and on a free port, and stopped at the end of
the session; a fixture fails, naming the package to install, when its binary is missing
(scripts/test installs them). Nothing here touches the system's own services or clusters
(Debian's ``main`` cluster, ``/etc/redis``, ``/etc/haproxy``).

Fixtures:
    postgres_server   session  PostgresServer: psql(), create_database(), drop_database()
    postgres_url      session  postgresql://postgres:postgres@127.0.0.1:PORT/app
    postgres_db_url   function a fresh empty database cloned from a template, dropped afterwards
    redis_server      session  RedisServer: command(), flushall()
    redis_url         session  redis://127.0.0.1:PORT/0
    redis_clean_url   function redis_url after FLUSHALL
    haproxy           function factory: haproxy(["127.0.0.1:8001", ...]) -> HAProxy (url, states)

PostgreSQL refuses to run as root. As root the data directory is given to an unprivileged
account (``$REALSERVERS_PG_USER``, else ``postgres``, which Debian's package creates, else
``nobody``) and initdb/postgres run as that account (``subprocess.Popen(user=...)``); as anyone
else they run as the caller. Clients always run as the caller.

Every server gets PR_SET_PDEATHSIG, so a pytest killed with SIGKILL takes its servers with it.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import glob
import io
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PG_SUPERUSER = "postgres"
PG_PASSWORD = "postgres"
PG_APP_DB = "app"
PG_TEMPLATE_DB = "app_template"
POSTGRES_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    # Durability off: a test cluster never outlives a crash.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "64MB",
    "logging_collector": "off",
    "log_min_messages": "warning",
}

# Filled by the fixtures, printed at the end of the run (pytest_terminal_summary).
STARTUP_SECONDS: dict[str, float] = {}

_PR_SET_PDEATHSIG = 1
# Looked up once here: a dlopen in the forked child could deadlock on a lock another thread held.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


class ServerError(RuntimeError):
    """A server did not start or stop; the message ends with its log."""


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a lost race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        # Runs in the child after the uid change, so the setting survives it.
        _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def _clean_env() -> dict[str, str]:
    # PGHOST, PGSERVICE, REDISCLI_AUTH and friends from the developer's shell must not leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith(("PG", "REDIS"))} | {
        "LC_ALL": "C"
    }


@dataclass
class _RunAs:
    """The account a server runs as: None for the caller."""

    name: str | None = None
    uid: int = -1
    gid: int = -1

    @classmethod
    def lookup(cls, name: str) -> _RunAs:
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid)

    @property
    def user(self) -> int | None:
        return None if self.name is None else self.uid

    @property
    def group(self) -> int | None:
        return None if self.name is None else self.gid

    @property
    def extra_groups(self) -> list[int] | None:
        # Drop root's supplementary groups too.
        return None if self.name is None else []

    def give(self, path: Path) -> None:
        if self.name is not None:
            os.chown(path, self.uid, self.gid)


def _spawn(
    argv: list[str], log: Path, *, cwd: Path, run_as: _RunAs, death_signal: int
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=_clean_env(),
            # Its own session: the terminal's Ctrl-C reaches pytest, which then stops it in order.
            start_new_session=True,
            preexec_fn=_die_with_parent(death_signal),
            user=run_as.user,
            group=run_as.group,
            extra_groups=run_as.extra_groups,
        )


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerError(
                f"{what} exited with {proc.returncode} while starting:\n{_log_tail(log)}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise ServerError(f"{what} not ready after {timeout:.0f}s:\n{_log_tail(log)}")
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_with_port_retry(start: Callable[[int], object], attempts: int = 3) -> object:
    # free_port() can lose a race with another process; a fresh port fixes that.
    for attempt in range(attempts):
        try:
            return start(free_port())
        except ServerError as exc:
            if attempt == attempts - 1 or "in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def _sweep_stale_dirs(base: Path) -> None:
    # A pytest killed with SIGKILL takes its servers along (PR_SET_PDEATHSIG) but leaves their
    # directories; remove those whose owner pid is gone.
    for pidfile in base.glob("realservers-*/owner.pid"):
        try:
            if pidfile.stat().st_uid != os.geteuid():
                continue
            os.kill(int(pidfile.read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(pidfile.parent, ignore_errors=True)
        except (OSError, ValueError):
            continue


def _server_dir(kind: str, run_as: _RunAs | None = None) -> Path:
    """A new temporary directory for one server, owned by the account it runs as."""
    run_as = run_as or _RunAs()
    base = Path(tempfile.gettempdir())
    # The server's account must reach its directory: a root-only $TMPDIR (or pytest's own
    # /tmp/pytest-of-root, mode 700) would stop it, so fall back to /tmp there.
    traversable = all(p.stat().st_mode & 0o001 for p in (base, *base.parents))
    if run_as.name is not None and not traversable:
        base = Path("/tmp")
    _sweep_stale_dirs(base)
    path = Path(tempfile.mkdtemp(prefix=f"realservers-{kind}-", dir=base))
    (path / "owner.pid").write_text(str(os.getpid()))
    run_as.give(path)
    return path


def _executable(path: str) -> bool:
    # os.access alone says yes to any directory with an x bit when asked as root.
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_binary(env_var: str, *candidates: str) -> str | None:
    """$env_var if set (None when it is not executable), else the first candidate found."""
    if os.environ.get(env_var):
        return os.environ[env_var] if _executable(os.environ[env_var]) else None
    for name in candidates:
        # /usr/sbin is not on a normal user's PATH, and haproxy lives there.
        for found in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if found and _executable(found):
                return found
    return None


def _timed(name: str, start: float) -> None:
    STARTUP_SECONDS[name] = round(time.monotonic() - start, 3)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def find_postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with a server, or $REALSERVERS_PG_BINDIR."""
    pattern = os.environ.get("REALSERVERS_PG_BINDIR", "/usr/lib/postgresql/*/bin") + "/postgres"
    found = [p for p in glob.glob(pattern) if _executable(p)]
    # Numeric, so that 9.6 < 15 < 16.
    found.sort(key=lambda p: [int(n) for n in re.findall(r"\d+", Path(p).parts[-3])])
    return Path(found[-1]).parent if found else None


def _postgres_account() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    for name in filter(None, (os.environ.get("REALSERVERS_PG_USER"), "postgres", "nobody")):
        try:
            return _RunAs.lookup(name)
        except KeyError:
            continue
    raise ServerError(
        "running as root and no unprivileged account (postgres, nobody) for PostgreSQL"
    )


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster: superuser ``postgres``, password auth over TCP."""

    bindir: Path
    root: Path
    port: int
    run_as: _RunAs
    proc: subprocess.Popen[bytes] | None = None
    _names: Iterator[int] = field(default_factory=itertools.count)
    # Durable: fsync and synchronous commits on, as a production server runs (the benchmark).
    durable: bool = False

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str = PG_APP_DB, *, driver: str = "postgresql") -> str:
        """``driver`` is the URL scheme: ``postgresql+asyncpg`` for SQLAlchemy's async engine."""
        return f"{driver}://{PG_SUPERUSER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Runs SQL with psql over the unix socket (trust auth); returns the unaligned output."""
        argv = [str(self.bindir / "psql"), "-XqAt", "-v", "ON_ERROR_STOP=1", "-d", dbname]
        argv += ["-h", str(self.sockdir), "-p", str(self.port), "-U", PG_SUPERUSER, "-c", sql]
        done = subprocess.run(argv, capture_output=True, text=True, env=_clean_env(), check=False)
        if done.returncode != 0:
            raise ServerError(f"psql failed ({sql!r}): {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str | None = None, template: str = PG_TEMPLATE_DB) -> str:
        """Clones ``template`` (which must have no open connections) and returns the new name."""
        name = name or f"test_{os.getpid()}_{next(self._names)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        # 50-150 ms here; STRATEGY FILE_COPY measured the same as PG15's WAL_LOG with fsync=off.
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            argv,
            cwd=self.root,
            capture_output=True,
            text=True,
            env=_clean_env(),
            check=False,
            user=self.run_as.user,
            group=self.run_as.group,
            extra_groups=self.run_as.extra_groups,
        )
        if done.returncode != 0:
            raise ServerError(f"{Path(argv[0]).name} failed:\n{done.stdout}{done.stderr}")

    def initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        self.run_as.give(pwfile)
        # --no-sync: nothing here must survive a crash. C locale: same sorting everywhere.
        initdb = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", PG_SUPERUSER]
        initdb += [f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256"]
        self._run([*initdb, "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        pwfile.unlink()

    def start(self, port: int) -> PostgresServer:
        self.port = port
        self.sockdir.mkdir(exist_ok=True)
        self.run_as.give(self.sockdir)
        self.log.touch()
        self.run_as.give(self.log)
        argv = [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(port)]
        argv += ["-k", str(self.sockdir)]
        settings = dict(POSTGRES_SETTINGS)
        if self.durable:
            settings.update(fsync="on", synchronous_commit="on", full_page_writes="on")
        for setting in settings.items():
            argv += ["-c", "=".join(setting)]
        # SIGQUIT if pytest dies: immediate shutdown, children and all.
        self.proc = _spawn(
            argv, self.log, cwd=self.root, run_as=self.run_as, death_signal=signal.SIGQUIT
        )
        isready = [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]

        def ready() -> bool:
            return subprocess.run(isready, env=_clean_env(), check=False).returncode == 0

        _wait_until(ready, self.proc, self.log, "postgres", timeout=30)
        return self

    def stop(self) -> None:
        # SIGINT is pg_ctl stop -m fast: roll back open transactions, disconnect, checkpoint.
        if self.proc is not None:
            _stop(self.proc, signal.SIGINT)


@contextlib.contextmanager
def run_postgres(bindir: Path, *, durable: bool = False) -> Iterator[PostgresServer]:
    """An initialised, running cluster with databases ``app`` and ``app_template``."""
    run_as = _postgres_account()
    root = _server_dir("pg", run_as)
    server: PostgresServer | None = None
    try:
        t0 = time.monotonic()
        server = PostgresServer(bindir, root, 0, run_as, durable=durable)
        server.initdb()
        _timed("postgres initdb", t0)
        t1 = time.monotonic()
        _start_with_port_retry(server.start)
        # One statement a call: psql -c runs several in one transaction, refused by CREATE DATABASE.
        server.psql(f'CREATE DATABASE "{PG_TEMPLATE_DB}" IS_TEMPLATE true')
        server.psql(f'CREATE DATABASE "{PG_APP_DB}"')
        _timed("postgres start", t1)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Redis / Valkey


def _resp_command(port: int, *args: str, timeout: float = 5.0) -> bytes:
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


REDIS_SETTINGS = {
    "bind": "127.0.0.1",
    # No RDB snapshots, no AOF: nothing is written to disk.
    "save": "",
    "appendonly": "no",
    "daemonize": "no",
    "logfile": "",
    "loglevel": "warning",
}


@dataclass
class RedisServer:
    """A running redis-server or valkey-server without persistence."""

    binary: str
    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.root / "redis.log"

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """One command over a fresh connection; returns the raw RESP reply (short replies only)."""
        return _resp_command(self.port, *args, timeout=timeout)

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != b"+OK\r\n":
            raise ServerError(f"FLUSHALL answered {reply!r}")

    def start(self, port: int) -> RedisServer:
        self.port = port
        argv = [self.binary, "--port", str(port), "--dir", str(self.root)]
        for name, value in REDIS_SETTINGS.items():
            argv += [f"--{name}", value]
        self.proc = _spawn(
            argv, self.log, cwd=self.root, run_as=_RunAs(), death_signal=signal.SIGTERM
        )

        def ready() -> bool:
            try:
                return self.command("PING", timeout=0.5) == b"+PONG\r\n"
            except OSError:
                return False

        _wait_until(ready, self.proc, self.log, Path(self.binary).name, timeout=15)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM)


@contextlib.contextmanager
def run_redis(binary: str) -> Iterator[RedisServer]:
    root = _server_dir("redis")
    server = RedisServer(binary, root)
    try:
        t0 = time.monotonic()
        _start_with_port_retry(server.start)
        _timed(Path(binary).name + " start", t0)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# HAProxy

HAPROXY_CONFIG = """\
global
    stats socket {root}/admin.sock mode 600 level admin
    stats timeout 10s
    log stderr format raw local0 info
    nbthread 2

defaults
    mode http
    log global
    option dontlognull
    retries 2
    option redispatch
    timeout connect 2s
    timeout check 2s
    timeout http-request 10s
    timeout http-keep-alive 10s
    # SSE: a token stream can pause for a long prompt; these are inactivity timeouts.
    timeout client 5m
    timeout server 5m
    # Only after an Upgrade (WebSocket) or CONNECT.
    timeout tunnel 1h

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    # Same caller (API key or bearer token), same replica: its cached prompt stays warm.
    balance hdr(Authorization)
    # Consistent: losing a replica moves only its callers. avalanche: keys that differ in one
    # character otherwise hash close together and land on the same replica (see REPORT.md).
    hash-type consistent {hash_function}
    option httpchk GET /health
    http-check expect status 200
    default-server inter {inter} fall {fall} rise {rise}
{servers}
"""


@dataclass
class HAProxy:
    """A running haproxy in front of ``backends``; servers are named b0, b1, ... in order."""

    binary: str
    root: Path
    backends: list[str]
    hash_function: str = "sdbm avalanche"
    inter: str = "500ms"
    fall: int = 2
    rise: int = 2
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "haproxy.log"

    @property
    def config(self) -> Path:
        return self.root / "haproxy.cfg"

    def admin(self, command: str) -> str:
        """One command on the stats socket (``show stat``, ``disable server be/b0``, ...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.root / "admin.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` rows of the backend's servers (status, check_status, scur, ...)."""
        text = self.admin("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return [row for row in rows if row["pxname"] == "be" and row["svname"] != "BACKEND"]

    def states(self) -> dict[str, str]:
        """Server name -> status: UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (going up), MAINT."""
        return {row["svname"]: row["status"] for row in self.stats()}

    def wait_for(self, server: str, status: str, timeout: float = 10.0) -> float:
        """Waits until ``server`` reports ``status``; returns the seconds it took."""
        t0 = time.monotonic()
        while (current := self.states().get(server)) != status:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(
                    f"{server} still {current!r} after {timeout}s, wanted {status!r}"
                )
            time.sleep(0.05)
        return time.monotonic() - t0

    def wait_checked(self, timeout: float = 10.0) -> None:
        """Waits until every server has a first health-check result (starts at INI)."""
        deadline = time.monotonic() + timeout
        while any(row["check_status"] in ("", "INI", "* INI") for row in self.stats()):
            if time.monotonic() > deadline:
                raise AssertionError(f"health checks not run after {timeout}s: {self.states()}")
            time.sleep(0.05)

    def write_config(self) -> None:
        servers = "\n".join(
            f"    server b{i} {hostport} check" for i, hostport in enumerate(self.backends)
        )
        self.config.write_text(
            HAPROXY_CONFIG.format(
                root=self.root,
                port=self.port,
                servers=servers,
                hash_function=self.hash_function,
                inter=self.inter,
                fall=self.fall,
                rise=self.rise,
            )
        )

    def start(self, port: int) -> HAProxy:
        self.port = port
        self.write_config()
        # -db: foreground, no daemon; -W is not needed for a single process we own.
        self.proc = _spawn(
            [self.binary, "-db", "-f", str(self.config)],
            self.log,
            cwd=self.root,
            run_as=_RunAs(),
            death_signal=signal.SIGTERM,
        )

        def ready() -> bool:
            try:
                self.admin("show info")
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        _wait_until(ready, self.proc, self.log, "haproxy", timeout=15)
        return self

    def stop(self) -> None:
        # SIGUSR1 would wait for streams to finish (soft stop); tests want it gone now.
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM)


@contextlib.contextmanager
def run_haproxy(binary: str, backends: list[str], **options: object) -> Iterator[HAProxy]:
    root = _server_dir("haproxy")
    proxy = HAProxy(binary, root, list(backends), **options)  # type: ignore[arg-type]
    try:
        t0 = time.monotonic()
        _start_with_port_retry(proxy.start)
        _timed("haproxy start", t0)
        yield proxy
    finally:
        proxy.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL server not found (/usr/lib/postgresql/*/bin/postgres):"
            " apt-get install postgresql"
        )
    with run_postgres(bindir) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url()


@pytest.fixture
def postgres_db_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database cloned from ``app_template``, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_binary("REALSERVERS_REDIS_SERVER", "valkey-server", "redis-server")
    if binary is None:
        pytest.fail("neither valkey-server nor redis-server found: apt-get install redis-server")
    with run_redis(binary) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_clean_url(redis_server: RedisServer) -> str:
    """redis_url, emptied (FLUSHALL) before the test."""
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def haproxy() -> Iterator[Callable[..., HAProxy]]:
    """Factory: ``haproxy(["127.0.0.1:8001", "127.0.0.1:8002"], inter="200ms")`` -> HAProxy."""
    binary = find_binary("REALSERVERS_HAPROXY", "haproxy")
    if binary is None:
        pytest.fail("haproxy not found: apt-get install haproxy")
    with contextlib.ExitStack() as stack:

        def start(backends: list[str], **options: object) -> HAProxy:
            return stack.enter_context(run_haproxy(binary, backends, **options))

        yield start


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STARTUP_SECONDS:
        terminalreporter.write_sep("-", "real server startup (seconds)")
        for name, seconds in STARTUP_SECONDS.items():
            terminalreporter.write_line(f"{name:<24} {seconds:.3f}")
