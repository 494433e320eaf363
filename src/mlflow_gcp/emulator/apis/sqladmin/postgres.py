"""The real PostgreSQL server behind each emulated Cloud SQL instance.

Each instance gets its own cluster (``initdb``) under ``<data>/sql/<project>/<instance>/pgdata`` and a
``postgres`` process that listens only on a unix socket in ``<data>/cloudsql/<hash of the connection name>/`` (short
whatever the names, as a unix socket path holds 107 bytes); Cloud Run revisions see it as
``/cloudsql/<connection name>`` through a link. Every role authenticates with ``scram-sha-256``; the emulator itself
connects as the internal superuser ``cloudsqladmin`` (Cloud SQL has such a role too) with a random password kept
in a 0600 file next to the cluster.

``initdb`` and ``postgres`` refuse to run as root, so under root (CI) they run as the ``postgres`` OS user and
their directories belong to it. Servers are started from one long-lived thread with a parent-death signal, so no
server outlives the emulator even when it is killed; they are stopped with ``pg_ctl stop -m fast``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import glob
import hashlib
import hmac
import os
import pwd
import re
import secrets
import shutil
import signal
import stringprep
import subprocess
import sys
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

SOCKET_NAME = ".s.PGSQL.5432"
#: sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
ADMIN_ROLE = "cloudsqladmin"
ADMIN_DB = "cloudsqladmin"
SUPERUSER_ROLE = "cloudsqlsuperuser"
#: Roles and databases Cloud SQL keeps to itself: never listed, never touched through the API.
INTERNAL_ROLES = frozenset({ADMIN_ROLE, SUPERUSER_ROLE, "cloudsqlagent", "cloudsqlreplica", "cloudsqliamuser"})
INTERNAL_DATABASES = frozenset({ADMIN_DB, "template0", "template1"})
#: Unix socket only, a SCRAM password for every role; replication connections (base backups) for the emulator's
#: own superuser alone.
HBA = (
    "# Cloud SQL emulator: connections only over the unix socket, SCRAM passwords for every role.\n"
    "local   all           all             scram-sha-256\n"
    f"local   replication   {ADMIN_ROLE}   scram-sha-256\n"
)
INSTALL_HINT = "install PostgreSQL (`apt-get install postgresql`) or put its initdb, pg_ctl and postgres on PATH"
_BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresError(Exception):
    """Setting up, starting or stopping a server failed; the message is safe to show (no secrets)."""


# --- binaries ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgBinaries:
    bin_dir: Path
    version: str  # e.g. "15.18"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def path(self, name: str) -> str:
        return str(self.bin_dir / name)


def _version_of(bin_dir: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    return f"{m.group(1)}.{m.group(2) or 0}" if m else None


def find_binaries(preferred_major: int | None = None) -> PgBinaries | None:
    """The PostgreSQL installation to use: the one of ``preferred_major`` if installed, else the newest;
    candidates are PATH and ``/usr/lib/postgresql/*/bin``."""
    dirs: list[Path] = []
    if found := shutil.which("initdb"):
        dirs.append(Path(found).resolve().parent)
    dirs += [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")]
    found_all: list[PgBinaries] = []
    for d in dict.fromkeys(dirs):
        if all(os.access(d / b, os.X_OK) for b in _BINARIES) and (version := _version_of(d)):
            found_all.append(PgBinaries(d, version))
    if not found_all:
        return None
    for b in found_all:
        if b.major == preferred_major:
            return b
    return max(found_all, key=lambda b: b.major)


# --- running as the postgres OS user -------------------------------------------------------------------


def _postgres_account() -> pwd.struct_passwd | None:
    """The OS account servers run as: None means "as ourselves" (not root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError(
            "The emulator runs as root, and PostgreSQL refuses to run as root: it runs as the unprivileged "
            f"`postgres` OS user, which does not exist here. To create it, {INSTALL_HINT}."
        ) from None


def as_postgres() -> dict[str, Any]:
    account = _postgres_account()
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [account.pw_gid]}


def give_to_postgres(path: Path) -> None:
    if (account := _postgres_account()) is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def ensure_traversable(path: Path, top: Path) -> None:
    """Let the postgres user walk down to ``path``: add o+x to the emulator's own directories (``top`` and
    below), and check the ones above, which the emulator does not own."""
    if _postgres_account() is None:
        return
    for p in [path, *path.parents]:
        if p == top or top in p.parents:
            mode = p.stat().st_mode
            if not mode & 0o001:
                os.chmod(p, (mode & 0o7777) | 0o001)
        elif not p.stat().st_mode & 0o001:
            raise PostgresError(
                f"PostgreSQL runs as the `postgres` user, which cannot traverse {p}; start the emulator with a "
                "data directory whose parents are world-traversable (e.g. under /tmp or /var/lib)."
            )


def clean_env() -> dict[str, str]:
    # PG* variables of the caller (PGDATA, PGPORT, ...) must not steer the emulator's servers.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8")
    return env


# --- the parent-death signal ---------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_SIGINT = int(signal.SIGINT)  # PostgreSQL's "fast shutdown"
_prctl: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:  # runs in the forked child, after setuid: keep it to one C call
    _prctl(_PR_SET_PDEATHSIG, _SIGINT, 0, 0, 0)


# Linux sends the parent-death signal when the *thread* that forked the child ends, so servers are forked by
# this one thread, which lives as long as the process; request and operation threads come and go.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqladmin-postgres-spawner")


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    if _prctl is not None:
        kwargs["preexec_fn"] = _die_with_parent
    return _spawner.submit(subprocess.Popen, argv, **kwargs).result()


# --- SCRAM verifiers -----------------------------------------------------------------------------------


def _saslprep(password: str) -> str:
    """RFC 4013 SASLprep as PostgreSQL applies it; like PostgreSQL, fall back to the raw string when the
    password is not a valid stringprep string."""
    chars = [" " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c)]
    prepared = unicodedata.normalize("NFKC", "".join(chars))
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(test(c) for c in prepared for test in prohibited):
        return password
    # Bidirectional text: RandALCat characters forbid LCat ones and must open and close the string.
    if any(stringprep.in_table_d1(c) for c in prepared) and (
        any(stringprep.in_table_d2(c) for c in prepared)
        or not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1]))
    ):
        return password
    return prepared


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL would store for ``password``. Roles get their password as this
    verifier, so the plaintext never reaches the server, its logs or the emulator's store."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    stored = b64(hashlib.sha256(client_key).digest()).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${stored}:{b64(server_key).decode()}"


def check_socket_path(socket_dir: Path) -> None:
    """Refuse a socket directory whose ``.s.PGSQL.5432`` would not fit in a unix socket address."""
    path = socket_dir / SOCKET_NAME
    length = len(os.fsencode(path))
    if length > MAX_SOCKET_PATH:
        raise PostgresError(
            f"The instance's unix socket path {path} is {length} bytes; unix sockets allow at most "
            f"{MAX_SOCKET_PATH}. Use a shorter emulator data directory."
        )


# --- one server ----------------------------------------------------------------------------------------


class PostgresServer:
    """One instance's cluster and server process."""

    def __init__(self, instance_dir: Path, socket_dir: Path, cluster_name: str) -> None:
        # Absolute: the server runs with its own working directory.
        self.instance_dir = instance_dir.absolute()
        self.pgdata = self.instance_dir / "pgdata"
        self.socket_dir = socket_dir.absolute()
        self.cluster_name = cluster_name
        self.password_file = instance_dir / "admin.password"
        self.log_file = instance_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.RLock()
        #: Started with WAL archiving on (point-in-time recovery): the current segment is archived before a stop.
        self.archiving = False

    # -- layout --

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / SOCKET_NAME

    def check_socket_path(self) -> None:
        check_socket_path(self.socket_dir)

    @property
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def binaries(self) -> PgBinaries:
        """The installation this cluster was created with (PG_VERSION names its major version)."""
        major = int((self.pgdata / "PG_VERSION").read_text().split(".")[0])
        found = find_binaries(major)
        if found is None or found.major != major:
            raise PostgresError(
                f"This instance's data needs PostgreSQL {major}, which is not installed: {INSTALL_HINT}."
            )
        return found

    # -- lifecycle --

    def prepare(self, top: Path) -> None:
        """Empty instance and socket directories the postgres user can reach (``top``: the emulator's data dir)."""
        self.check_socket_path()
        shutil.rmtree(self.instance_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        for d in (self.instance_dir, self.socket_dir):
            d.mkdir(parents=True, mode=0o755)
            os.chmod(d, 0o755)
            give_to_postgres(d)
        ensure_traversable(self.instance_dir, top)
        ensure_traversable(self.socket_dir, top)

    def set_admin_password(self, password: str) -> None:
        """The emulator's own superuser password for this cluster, in a 0600 file only the emulator reads."""
        self.password_file.unlink(missing_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password)

    def initialize(self, binaries: PgBinaries, top: Path) -> None:
        """initdb a fresh cluster whose bootstrap superuser is ``cloudsqladmin`` with a random password."""
        self.prepare(top)
        password = secrets.token_urlsafe(32)
        self.set_admin_password(password)
        # initdb reads the password as the postgres user, from a file only it can read, removed at once.
        pwfile = self.instance_dir / ".initdb-pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        give_to_postgres(pwfile)
        try:
            result = subprocess.run(
                [
                    binaries.path("initdb"),
                    "--pgdata",
                    str(self.pgdata),
                    "--username",
                    ADMIN_ROLE,
                    "--pwfile",
                    str(pwfile),
                    "--auth",
                    "scram-sha-256",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    _locale(),
                    # 1 MiB WAL segments instead of 16: every archived segment (point-in-time recovery) and every
                    # base backup copies whole segments; the size is invisible through Cloud SQL's API.
                    "--wal-segsize",
                    "1",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                cwd=self.instance_dir,
                env=clean_env(),
                timeout=300,
                **as_postgres(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise PostgresError(f"initdb failed: {(result.stderr or result.stdout).strip()[-2000:]}")
        # Unix socket only, and a password for every role: never `trust`.
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(HBA)
        give_to_postgres(hba)

    def admin_password(self) -> str:
        return self.password_file.read_text().strip()

    def running(self) -> bool:
        with self.lock:
            if self.proc is not None:
                return self.proc.poll() is None
            return self._postmaster_pid() is not None

    def _postmaster_pid(self) -> int | None:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def start(self, options: dict[str, str], timeout: float = 60.0) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self.check_socket_path()
            if self._postmaster_pid() is not None:
                # A server left over from an emulator that could not stop it: stop it before taking over.
                self.stop()
            binaries = self.binaries()
            argv = [binaries.path("postgres"), "-D", str(self.pgdata)]
            managed = {
                "listen_addresses": "",
                "port": "5432",
                "unix_socket_directories": str(self.socket_dir),
                "unix_socket_permissions": "0777",
                "cluster_name": self.cluster_name[:63],
                "logging_collector": "off",
                # A failed statement can carry a password verifier; never echo statements into the log.
                "log_statement": "none",
                "log_min_error_statement": "panic",
                # An emulator: durability against OS crashes is not worth the fsync latency.
                "fsync": "off",
            }
            for key, value in {**options, **managed}.items():
                argv += ["-c", f"{key}={value}"]
            self.archiving = options.get("archive_mode") == "on"
            log = self.log_file.open("ab")
            try:
                self.proc = _spawn(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.instance_dir,
                    env=clean_env(),
                    **as_postgres(),
                )
            finally:
                log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.proc = None
                    raise PostgresError(f"PostgreSQL did not start: {self.log_tail()}")
                if self._ready():
                    return
                time.sleep(0.05)
            self.stop()
            raise PostgresError(f"PostgreSQL did not become ready within {timeout:.0f} s: {self.log_tail()}")

    def _ready(self) -> bool:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready" and self.socket_path.exists()

    def stop(self, timeout: float = 60.0) -> None:
        with self.lock:
            pid = self._postmaster_pid()
            if pid is not None and self.archiving:
                # The last, partly written segment is archived only once complete: complete it now, so that every
                # commit made before the stop can be recovered from the archive (the archiver finishes its work
                # during a fast shutdown).
                with contextlib.suppress(psycopg.Error, OSError), self.connect() as conn:
                    conn.execute("SELECT pg_switch_wal()")
            if pid is not None:
                stopped = False
                with contextlib.suppress(PostgresError, OSError, subprocess.SubprocessError):
                    pg_ctl = self.binaries().path("pg_ctl")
                    result = subprocess.run(
                        [pg_ctl, "stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(int(timeout))],
                        capture_output=True,
                        text=True,
                        env=clean_env(),
                        timeout=timeout + 10,
                        **as_postgres(),
                    )
                    stopped = result.returncode == 0
                if not stopped:
                    # pg_ctl could not do it (binaries gone, server wedged): immediate shutdown, then kill.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGQUIT)
                    if not _wait_gone(pid, 10.0):
                        _kill(pid)
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                self.proc = None

    def remove(self) -> None:
        with self.lock:
            self.stop()
            shutil.rmtree(self.instance_dir, ignore_errors=True)
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return "(no server log)"

    # -- SQL --

    def connect(self, dbname: str = ADMIN_DB) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=5432,
            dbname=dbname,
            user=ADMIN_ROLE,
            password=self.admin_password(),
            autocommit=True,
            connect_timeout=10,
        )

    def bootstrap(self, postgres_verifier: str | None) -> None:
        """Cloud SQL's role model on a fresh cluster: the NOLOGIN ``cloudsqlsuperuser`` group, the ``postgres``
        user as a member of it, the ``postgres`` database owned by the group, and a private ``cloudsqladmin``
        database for the emulator's own connections."""
        with self.connect("postgres") as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(ADMIN_DB), sql.Identifier(ADMIN_ROLE))
            )
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(ADMIN_DB)))
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE CREATEDB").format(sql.Identifier(SUPERUSER_ROLE)))
            create_login_role(conn, "postgres", postgres_verifier)
            conn.execute(sql.SQL("ALTER DATABASE postgres OWNER TO {}").format(sql.Identifier(SUPERUSER_ROLE)))


def create_login_role(conn: psycopg.Connection[Any], name: str, verifier: str | None) -> None:
    """A user as Cloud SQL makes them: LOGIN CREATEROLE CREATEDB, member of cloudsqlsuperuser."""
    stmt = sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB IN ROLE {}").format(
        sql.Identifier(name), sql.Identifier(SUPERUSER_ROLE)
    )
    if verifier is not None:
        stmt = stmt + sql.SQL(" PASSWORD {}").format(sql.Literal(verifier))
    conn.execute(stmt)


def _locale() -> str:
    # Cloud SQL's databases are UTF8 / en_US.UTF8; fall back to C.UTF-8 where that locale is not generated.
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10).stdout.lower()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return "en_US.UTF-8" if "en_us.utf8" in out.replace("-", "") else "C.UTF-8"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _kill(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return _wait_gone(pid, 5.0)
