"""The PostgreSQL side of Cloud SQL's backups and point-in-time recovery, done the way PostgreSQL does them natively.

- A backup is a base backup (``pg_basebackup``, plain format, with the WAL it needs streamed in) of the running
  cluster: restoring one alone gives the cluster as it was when the backup ended.
- With point-in-time recovery on, the server archives every completed WAL segment (``archive_mode``,
  ``archive_command``) into the instance's archive directory.
- Recovering to a time restores the newest base backup that ended before it and replays archived WAL up to it
  (``restore_command``, ``recovery.signal``, ``recovery_target_time``, ``recovery_target_action = 'promote'``).

Everything runs as the ``postgres`` OS user when the emulator is root (see postgres.py). Passwords reach
``pg_basebackup`` through a 0600 password file, never its command line or environment.

Layout under the instance directory (``<data>/sql/<project>/<instance>/``, removed with the instance):
``backups/<id>/pgdata`` (+ ``admin.password``, the emulator's superuser password the copied cluster expects) and
``wal/`` (the archive).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import psycopg

from .postgres import (
    ADMIN_ROLE,
    HBA,
    PostgresError,
    PostgresServer,
    as_postgres,
    clean_env,
    find_binaries,
    give_to_postgres,
)

#: The FATAL PostgreSQL (13+) ends recovery with when the archive holds no commit after the target time: then every
#: archived commit is at or before it, and recovering to the end of the archive is recovering to that time.
_TARGET_NOT_REACHED = "recovery ended before configured recovery target was reached"
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


def backups_dir(server: PostgresServer) -> Path:
    return server.instance_dir / "backups"


def archive_dir(server: PostgresServer) -> Path:
    return server.instance_dir / "wal"


def owned_dir(path: Path) -> Path:
    """``path`` created (with parents) as a directory the postgres user owns."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    give_to_postgres(path)
    return path


def archive_options(archive: Path) -> dict[str, str]:
    """Server settings that archive every completed WAL segment into ``archive`` (PostgreSQL's documented
    ``test ! -f`` guard: an archived segment is never overwritten)."""
    return {
        "archive_mode": "on",
        "archive_command": f"test ! -f '{archive}/%f' && cp '%p' '{archive}/%f'",
        "wal_level": "replica",
    }


def reset_archive(server: PostgresServer) -> Path:
    """An empty archive: Cloud SQL deletes the transaction logs when point-in-time recovery is turned (back) on and
    when a backup is restored onto the instance (https://cloud.google.com/sql/docs/postgres/backup-recovery/restore)."""
    archive = archive_dir(server)
    shutil.rmtree(archive, ignore_errors=True)
    return owned_dir(archive)


def _run(argv: list[str], what: str, timeout: float = 600) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, env=clean_env(), timeout=timeout, check=False, **as_postgres()
    )
    if result.returncode != 0:
        raise PostgresError(f"{what} failed: {(result.stderr or result.stdout).strip()[-1500:]}")
    return result.stdout


def _allow_replication(server: PostgresServer) -> None:
    """Clusters created before base backups existed lack the replication line of pg_hba.conf: add it."""
    hba = server.pgdata / "pg_hba.conf"
    if "replication" not in hba.read_text():
        hba.write_text(HBA)
        with server.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")


def base_backup(server: PostgresServer, dest: Path) -> int:
    """A base backup of the running ``server`` into the directory ``dest`` (``pgdata`` and the ``admin.password``
    the copied cluster expects); returns its size in bytes. Written to ``dest.partial`` and renamed, so a backup
    interrupted by a crash is never taken for a complete one."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    owned_dir(partial)
    copy_running(server, partial / "pgdata")
    write_secret(partial / "admin.password", server.admin_password())
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return tree_size(dest / "pgdata")


def copy_running(server: PostgresServer, pgdata: Path) -> None:
    """``pg_basebackup`` of the running ``server`` into the new data directory ``pgdata``, with the WAL it needs
    (``--wal-method stream``): started as it is, the copy recovers to the moment the backup ended."""
    _allow_replication(server)
    owned_dir(pgdata.parent)
    passfile = pgdata.parent / f".pgpass-{secrets.token_hex(4)}"
    escaped = server.admin_password().replace("\\", "\\\\").replace(":", "\\:")
    write_secret(passfile, f"*:*:*:{ADMIN_ROLE}:{escaped}\n")
    give_to_postgres(passfile)
    try:
        _run(
            [
                server.binaries().path("pg_basebackup"),
                "--pgdata",
                str(pgdata),
                "--format",
                "plain",
                "--wal-method",
                "stream",
                "--checkpoint",
                "fast",
                "--no-sync",
                "--no-manifest",
                "--host",
                str(server.socket_dir),
                "--port",
                "5432",
                "--username",
                ADMIN_ROLE,
                "--no-password",
                f"--dbname=passfile={passfile}",
            ],
            "pg_basebackup",
        )
    finally:
        passfile.unlink(missing_ok=True)


def write_secret(path: Path, text: str) -> None:
    """A file only its owner (the emulator) can read."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def backup_start_segment(backup: Path) -> str | None:
    """The first WAL segment a base backup needs (``backup_label``'s START WAL LOCATION)."""
    try:
        label = (backup / "pgdata" / "backup_label").read_text()
    except OSError:
        return None
    m = re.search(r"START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)", label)
    return m.group(1) if m else None


def archive_through_now(server: PostgresServer, timeout: float = 60.0) -> None:
    """Complete the current WAL segment of the running ``server`` and wait until the archiver has copied it: after
    this, every commit made so far can be recovered from the archive."""
    archive = archive_dir(server)
    with server.connect() as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    segment = str(row[0]) if row else ""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not (archive / segment).exists():
        if time.monotonic() > deadline:
            raise PostgresError(f"WAL segment {segment} was not archived within {timeout:.0f} s: {server.log_tail()}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def copy_cluster(source_pgdata: Path, server: PostgresServer) -> None:
    """Make ``server``'s data directory a copy of ``source_pgdata`` (a base backup, or a stopped cluster); owners and
    modes are kept (``cp -a``, as the postgres user)."""
    shutil.rmtree(server.pgdata, ignore_errors=True)
    _run(["cp", "-a", str(source_pgdata), str(server.pgdata)], "copying the cluster")
    for leftover in ("postmaster.pid", "postmaster.opts"):
        (server.pgdata / leftover).unlink(missing_ok=True)


def recover(
    server: PostgresServer, backup: Path, archive: Path, target: datetime | None, options: dict[str, str]
) -> None:
    """Restore the base backup ``backup`` as ``server``'s cluster and replay the WAL in ``archive`` up to ``target``
    (inclusive: a transaction committed at ``target`` is kept), then promote and run with ``options``. Without a
    target, everything archived is replayed."""
    copy_cluster(backup / "pgdata", server)
    recovery = {"restore_command": f"cp '{archive}/%f' '%p'", "recovery_target_action": "promote"}
    if target is not None:
        recovery["recovery_target_time"] = target.isoformat(sep=" ")
    _start_recovery(server, {**options, **recovery})
    if _promoted(server):
        return
    if target is None:
        raise PostgresError(f"recovery failed: {server.log_tail()}")
    # The archive ends before the target (no commit after it was archived): PostgreSQL stops with "recovery ended
    # before configured recovery target was reached", whether while starting or once it replays as a standby. All
    # that was archived is before the target then: replay all of it (recovery.signal is still there).
    _start_recovery(server, {**options, "restore_command": recovery["restore_command"]})
    if not _promoted(server):
        raise PostgresError(f"recovery failed: {server.log_tail()}")


def _promoted(server: PostgresServer, timeout: float = 120.0) -> bool:
    """Wait until the recovered server has left recovery (True), or stopped (False). PostgreSQL accepts connections
    while it still replays (a hot standby) and promotes only once the target is reached; a clone is usable, as Cloud
    SQL's CLONE operation is DONE, only as a primary: a base backup taken before the promotion is refused ("the standby
    was promoted during online backup"), and writes fail."""
    deadline = time.monotonic() + timeout
    while server.running():
        try:
            with server.connect() as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return True
        except psycopg.Error:
            pass  # shutting down (the target not reached) or not accepting connections yet: running() tells
        if time.monotonic() > deadline:
            raise PostgresError(f"the recovered server did not leave recovery within {timeout:.0f} s")
        time.sleep(0.05)
    return False


def _start_recovery(server: PostgresServer, options: dict[str, str]) -> None:
    signal_file = server.pgdata / "recovery.signal"
    signal_file.touch()
    give_to_postgres(signal_file)
    try:
        server.start(options, timeout=600)
    except PostgresError as exc:
        if _TARGET_NOT_REACHED not in str(exc) or "recovery_target_time" not in options:
            raise


def prune_archive(archive: Path, oldest_needed: str) -> None:
    """Delete archived segments older than ``oldest_needed`` (``pg_archivecleanup``), keeping timeline history."""
    if not _SEGMENT.match(oldest_needed) or not archive.is_dir():
        return
    binaries = _archivecleanup()
    if binaries is None:
        return
    _run([binaries, str(archive), oldest_needed], "pg_archivecleanup")


def _archivecleanup() -> str | None:
    found = find_binaries()
    if found is None or not (found.bin_dir / "pg_archivecleanup").exists():
        return None
    return found.path("pg_archivecleanup")
