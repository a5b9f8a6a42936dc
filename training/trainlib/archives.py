"""Safe extraction of a dataset archive (zip, tar, tar.gz/tgz).

An uploaded archive is untrusted input: no member may land outside the target directory
(zip-slip, absolute paths, ``..``), links and device files are refused rather than followed, and
the bytes written are bounded, counted as they are written rather than trusted from the headers,
so a zip bomb stops at the limit: the smallest of ``--max-extract-bytes``, the free space of the
disk being written (less a reserve for checkpoints and the model), and ``MAX_RATIO`` times the
archive's size (photos barely compress). The orchestrator applies the same limits before a job
starts, where the archive format lets it read them (``chalice_app/validation.py``).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from trainlib.errors import ArchiveError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
DEFAULT_MAX_BYTES = 50 * 1024**3
DEFAULT_MAX_MEMBERS = 2_000_000
MAX_RATIO = 100  # as chalice_app.validation.MAX_RATIO
DISK_RESERVE_BYTES = 2 * 1024**3  # left free for checkpoints, the model and its archive
_CHUNK = 1024 * 1024


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(ARCHIVE_SUFFIXES)


def safe_member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, or ``None`` for a directory-only entry; raises if unsafe."""
    if not _is_utf8(name):
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise ArchiveError(f"archive member {shown!r} has a name that is not UTF-8: rename it and archive again")
    normalised = name.replace("\\", "/")  # Windows tools write zips with backslashes
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise ArchiveError(f"archive member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(normalised).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError(f"archive member {name!r} escapes the extraction directory")
    if not parts:
        return None
    return PurePosixPath(*parts)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # tarfile keeps bytes that are not UTF-8 as lone surrogates
    except UnicodeEncodeError:
        return False
    return True


def extract_archive(
    archive: Path,
    dest: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Path:
    """Extract ``archive`` into ``dest`` (created) and return ``dest``.

    Raises ``ArchiveError`` for an unsafe member, a link, a device file, too many members, more
    than ``max_bytes`` of content, or a file that is not a readable zip or tar archive. On error
    the partial extraction is removed.
    """
    dest.mkdir(parents=True, exist_ok=True)
    max_bytes = extraction_limit(archive, dest, max_bytes)
    try:
        if zipfile.is_zipfile(archive):
            members = _zip_members(archive)
        elif _is_tar(archive):
            members = _tar_members(archive)
        else:
            raise ArchiveError(f"{archive.name} is neither a zip nor a tar archive")
        _write_members(members, dest, max_bytes, max_members)
    except ArchiveError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except UnicodeDecodeError as exc:  # a zip that flags its names UTF-8 and holds other bytes
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(
            f"{archive.name} has member names that are not UTF-8 ({exc.reason}): archive it again"
        ) from exc
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"{archive.name} could not be read as an archive: {exc}") from exc
    return dest


def extraction_limit(archive: Path, dest: Path, max_bytes: int) -> int:
    """What ``archive`` may expand to in ``dest``: the configured limit, what the disk has free
    (less a reserve), and ``MAX_RATIO`` times the archive's own size, whichever is smallest."""
    free = shutil.disk_usage(dest).free - DISK_RESERVE_BYTES
    return max(0, min(max_bytes, free, MAX_RATIO * archive.stat().st_size))


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


Member = tuple[str, int, Callable[[], BinaryIO]]


def _zip_members(archive: Path) -> Iterator[Member]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"archive member {info.filename!r} is a symbolic link")
            if info.is_dir():
                safe_member_path(info.filename)
                continue
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {info.filename!r} is encrypted")
            yield info.filename, info.file_size, lambda info=info: zf.open(info)


def _tar_members(archive: Path) -> Iterator[Member]:
    with tarfile.open(archive, mode="r:*") as tf:
        for info in tf:
            if info.issym() or info.islnk():
                raise ArchiveError(f"archive member {info.name!r} is a link")
            if info.isdir():
                safe_member_path(info.name)
                continue
            if not info.isfile():
                raise ArchiveError(f"archive member {info.name!r} is not a regular file")
            yield info.name, info.size, lambda info=info: tf.extractfile(info)


def _write_members(members: Iterator[Member], dest: Path, max_bytes: int, max_members: int) -> None:
    root = dest.resolve()
    written = 0
    count = 0
    for name, declared_size, open_member in members:
        rel = safe_member_path(name)
        if rel is None:
            continue
        count += 1
        if count > max_members:
            raise ArchiveError(f"archive has more than {max_members} members")
        if written + declared_size > max_bytes:
            raise ArchiveError(_too_large(max_bytes))
        target = root.joinpath(*rel.parts)
        # Belt and braces: the resolved parent must still be inside the root.
        if os.path.commonpath([root, target.parent.resolve()]) != str(root):
            raise ArchiveError(f"archive member {name!r} escapes the extraction directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src, open(target, "wb") as out:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written > max_bytes:
                    raise ArchiveError(_too_large(max_bytes))
                out.write(chunk)


def _too_large(limit: int) -> str:
    return (
        f"the archive expands to more than {limit} bytes, the limit here (the smallest of --max-extract-bytes, "
        f"the disk's free space and {MAX_RATIO} times the archive's size)"
    )
