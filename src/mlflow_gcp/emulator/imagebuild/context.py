"""Build contexts: unpacking the tar, ``.dockerignore``, file operations that may not leave a root, tree digests."""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import shutil
import tarfile
from pathlib import Path

from .errors import BuildStepError, DockerfileError


def unpack_context(data: bytes | io.IOBase | Path, dest: Path) -> None:
    """Unpack a (possibly gzip/bzip2/xz compressed) tar build context; members may not leave ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes | bytearray):
        data = io.BytesIO(data)
    try:
        with (
            tarfile.open(data, mode="r:*") if isinstance(data, Path) else tarfile.open(fileobj=data, mode="r:*")  # type: ignore[arg-type]
        ) as tf:
            tf.extractall(dest, filter="tar")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DockerfileError(f"Error processing tar file({exc}): ", 500) from None


def read_dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if pattern.startswith("/", i):
                out[-1] = "(?:.*/)?"
                i += 1
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i)
            if j == -1:
                out.append(re.escape(c))
            else:
                out.append(pattern[i : j + 1])
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def apply_dockerignore(context: Path, patterns: list[str]) -> None:
    """Remove what ``.dockerignore`` excludes, as the docker CLI does before sending the context (last match
    wins; ``!`` re-includes; a matched directory excludes its contents)."""
    if not patterns:
        return
    rules = []
    for p in patterns:
        negate = p.startswith("!")
        p = p[1:].strip() if negate else p
        p = posixpath.normpath(p.lstrip("/"))
        if p in (".", ""):
            continue
        rules.append((negate, _pattern_regex(p)))

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        result = False
        for negate, rx in rules:
            for k in range(1, len(parts) + 1):
                if rx.match("/".join(parts[:k])):
                    result = not negate
                    break
        return result

    for root, dirs, files in os.walk(context, topdown=True):
        rel_root = os.path.relpath(root, context)
        for name in list(dirs) + files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel in ("Dockerfile", ".dockerignore"):
                continue  # the CLI always sends these two
            if excluded(rel):
                path = Path(root) / name
                if path.is_dir() and not path.is_symlink():
                    # A later "!" rule may re-include something below; keep the directory then.
                    if any(neg for neg, _ in rules):
                        continue
                    shutil.rmtree(path)
                    dirs.remove(name)
                else:
                    path.unlink()


# --- file operations scoped to a root -------------------------------------------------------------------


def scoped(root: Path, rel: str, *, follow_last: bool = True) -> Path:
    """``root/rel`` with symlinks resolved as if ``root`` were ``/`` (what Docker does for COPY), so no link
    can lead outside ``root``."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    cur: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if cur:
                cur.pop()
            continue
        candidate = root.joinpath(*cur, part)
        if candidate.is_symlink() and (parts or follow_last):
            hops += 1
            if hops > 40:
                raise BuildStepError(f"too many levels of symbolic links: {rel}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                cur = []
            parts = [q for q in target.split("/") if q not in ("", ".")] + parts
            continue
        cur.append(part)
    return root.joinpath(*cur)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def copy_file(src: Path, dst: Path) -> None:
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst)


def copy_tree(src: Path, dst: Path) -> None:
    """Merge the contents of ``src`` into the directory ``dst`` (links copied as links)."""
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        _remove(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        s, d = Path(entry.path), dst / entry.name
        if entry.is_symlink() or not entry.is_dir():
            copy_file(s, d)
        else:
            copy_tree(s, d)
    shutil.copystat(src, dst, follow_symlinks=False)


def tree_digest(root: Path) -> tuple[str, int]:
    """A digest of the files under ``root`` (paths, types, exec bits, contents; not mtimes) and their size."""
    h = hashlib.sha256()
    total = 0
    if not root.exists():
        return h.hexdigest(), 0
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel_dir = os.path.relpath(dirpath, root)
        h.update(f"d {rel_dir}\n".encode())
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(path):
                h.update(f"l {rel} {os.readlink(path)}\n".encode())
                continue
            st = os.stat(path)
            h.update(f"f {rel} {st.st_mode & 0o111:o} {st.st_size}\n".encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            total += st.st_size
    return h.hexdigest(), total
