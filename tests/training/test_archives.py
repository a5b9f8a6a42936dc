import io
import stat
import tarfile
import zipfile

import pytest

from trainlib.archives import extract_archive
from trainlib.errors import ArchiveError


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path, members: dict[str, bytes], mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("maker,suffix", [(_zip, ".zip"), (_tar, ".tar.gz")])
def test_extracts_nested_members(tmp_path, maker, suffix):
    archive = maker(tmp_path / f"d{suffix}", {"top/train/a/1.jpg": b"x", "top/train/b/2.jpg": b"yy"})
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "top/train/a/1.jpg").read_bytes() == b"x"
    assert (out / "top/train/b/2.jpg").read_bytes() == b"yy"


@pytest.mark.parametrize(
    "name", ["../evil.jpg", "train/../../evil.jpg", "/etc/evil.jpg", "C:/evil.jpg", "..\\evil.jpg"]
)
@pytest.mark.parametrize("maker,suffix", [(_zip, ".zip"), (_tar, ".tar")])
def test_rejects_members_escaping_the_target(tmp_path, name, maker, suffix):
    archive = maker(tmp_path / f"d{suffix}", {"train/a/1.jpg": b"x", name: b"evil"})
    with pytest.raises(ArchiveError, match="escapes|absolute"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil.jpg").exists()
    assert not (tmp_path / "out").exists(), "a refused archive leaves nothing half-extracted"


def test_rejects_tar_symlinks_and_hardlinks(tmp_path):
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        archive = tmp_path / f"links{kind!r}.tar"
        with tarfile.open(archive, "w") as tf:
            info = tarfile.TarInfo("train/a/link.jpg")
            info.type = kind
            info.linkname = "/etc/passwd"
            tf.addfile(info)
        with pytest.raises(ArchiveError, match="link"):
            extract_archive(archive, tmp_path / "out")


def test_rejects_zip_symlinks(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("train/a/link.jpg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_archive(archive, tmp_path / "out")


def test_rejects_device_files(tmp_path):
    archive = tmp_path / "dev.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("train/a/fifo")
        info.type = tarfile.FIFOTYPE
        tf.addfile(info)
    with pytest.raises(ArchiveError, match="not a regular file"):
        extract_archive(archive, tmp_path / "out")


def test_bounds_the_bytes_written_even_when_headers_lie(tmp_path):
    # A highly compressible member: the declared size is checked, and so are the bytes actually written.
    archive = _zip(tmp_path / "bomb.zip", {"train/a/big.jpg": b"\0" * 200_000})
    with pytest.raises(ArchiveError, match="expands to more than 100000 bytes"):
        extract_archive(archive, tmp_path / "out", max_bytes=100_000)
    assert not (tmp_path / "out").exists()


def test_bounds_the_member_count(tmp_path):
    archive = _zip(tmp_path / "many.zip", {f"train/a/{i}.jpg": b"x" for i in range(20)})
    with pytest.raises(ArchiveError, match="more than 10 members"):
        extract_archive(archive, tmp_path / "out", max_members=10)


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "data.zip"
    bogus.write_bytes(b"this is not an archive")
    with pytest.raises(ArchiveError, match="neither a zip nor a tar"):
        extract_archive(bogus, tmp_path / "out")
