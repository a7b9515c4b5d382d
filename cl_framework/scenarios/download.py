"""Locating, downloading (md5-verified) and extracting the archives of published datasets.

Every archive-based source follows the same path: use the extracted folder if it is there; else
extract the archive if the user placed it in ``data_dir`` (after checking its md5); else download
it from the official URL (or a user mirror, ``file://`` works) when allowed, verify the md5 and
extract it. Whatever fails, the user sees one :class:`DataError` that lists what to put where.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cl_framework.errors import DataError

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Archive:
    """A published archive: its file name, official base URLs and md5 of the whole file."""

    filename: str
    mirrors: tuple[str, ...]
    md5: str


@dataclass(frozen=True)
class DatasetLayout:
    """Where an extracted dataset lives and how to recognise it.

    ``folder`` is the top folder the archive extracts to (e.g. ``cifar-10-batches-py``);
    ``markers`` are paths inside it that must all exist; ``description`` is the expected layout
    shown to the user when the data is missing.
    """

    name: str
    folder: str
    markers: tuple[str, ...]
    description: str


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def find_dataset_folder(layout: DatasetLayout, data_dir: Path) -> Path | None:
    """``data_dir/<folder>`` if it holds every marker, or ``data_dir`` itself; else None.

    A layout without markers is recognised by its folder name alone.
    """
    if not layout.markers:
        for candidate in (data_dir / layout.folder, data_dir):
            if candidate.is_dir() and candidate.name == layout.folder:
                return candidate
        return None
    for candidate in (data_dir / layout.folder, data_dir):
        if all((candidate / marker).exists() for marker in layout.markers):
            return candidate
    return None


def ensure_dataset(
    layout: DatasetLayout,
    archive: Archive | None,
    data_dir: Path,
    *,
    download: bool,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """The extracted dataset folder, extracting or downloading the archive if needed.

    ``archive`` is None for datasets that cannot be downloaded (ImageNet needs a licence); then
    only the folder is looked up.
    """
    data_dir = Path(data_dir).expanduser()
    found = find_dataset_folder(layout, data_dir)
    if found is not None:
        return found

    reason = "the archive cannot be downloaded automatically (licence)"
    if archive is not None:
        local = data_dir / archive.filename
        if local.is_file():
            _check_md5(local, archive.md5)
            _extract_and_find(local, layout, data_dir)
            found = find_dataset_folder(layout, data_dir)
            if found is not None:
                return found
            reason = f"'{local}' does not contain the expected layout"
        elif download:
            bases = tuple(mirrors) if mirrors is not None else archive.mirrors
            try:
                fetched = fetch_verified(archive, bases, data_dir, timeout_s)
            except OSError as exc:
                reason = f"downloading {archive.filename} failed ({exc})"
            else:
                _extract_and_find(fetched, layout, data_dir)
                found = find_dataset_folder(layout, data_dir)
                if found is not None:
                    return found
                reason = f"the downloaded '{archive.filename}' does not contain the expected layout"
        else:
            reason = "download is disabled (download=False)"

    target = data_dir / layout.folder
    fix = f"put the dataset in '{target}' ({layout.description})"
    if archive is not None:
        fix += (
            f", or put the official archive '{archive.filename}' (md5 {archive.md5}) in "
            f"'{data_dir}' and it is extracted on first use"
        )
    fix += "; or point CLF_DATA_DIR / paths.data_dir at the folder that contains it"
    raise DataError(str(target), f"{layout.name} not found: {reason}", fix=fix)


def fetch_verified(
    archive: Archive, mirrors: Sequence[str], target: Path, timeout_s: float
) -> Path:
    """Download ``<mirror><filename>`` into ``target`` (first mirror that works), md5-checked.

    The file is written under a temporary name and renamed only after the checksum matched, so
    an interrupted or corrupted download never sits under the real name. Raises OSError listing
    every mirror's failure.
    """
    target.mkdir(parents=True, exist_ok=True)
    dest = target / archive.filename
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror + archive.filename
        fd, tmp_name = tempfile.mkstemp(dir=target, prefix=f".{archive.filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=timeout_s) as response,
            ):
                shutil.copyfileobj(response, out, length=1 << 20)
            got = md5sum(tmp)
            if got != archive.md5:
                raise OSError(f"md5 {got} does not match the published {archive.md5}")
            os.replace(tmp, dest)
            return dest
        except (OSError, ValueError, http.client.HTTPException) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError("; ".join(failures) or "no mirror configured")


def download_file(
    filename: str, md5: str, mirrors: Sequence[str], target: Path, timeout_s: float
) -> Path:
    """One md5-verified file (not an archive), e.g. SVHN's ``.mat`` files."""
    return fetch_verified(Archive(filename, tuple(mirrors), md5), mirrors, target, timeout_s)


def _check_md5(path: Path, expected: str) -> None:
    got = md5sum(path)
    if got != expected:
        raise DataError(
            str(path),
            f"md5 {got} does not match the published {expected} (corrupt or a different file)",
            fix="delete it and let the loader download it again, or replace it with the "
            "official archive",
        )


def _extract_and_find(archive_path: Path, layout: DatasetLayout, data_dir: Path) -> None:
    try:
        extract_archive(archive_path, data_dir)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise DataError(
            str(archive_path),
            f"cannot be extracted ({exc})",
            fix="delete it and let the loader download it again",
        ) from exc


def extract_archive(archive_path: Path, into: Path) -> None:
    """Extract a tar (any compression) or zip archive, refusing members outside ``into``."""
    into = into.resolve()
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as zf:
            for member in zf.namelist():
                _check_inside(into, member, archive_path)
            zf.extractall(into)
        return
    with tarfile.open(archive_path) as tf:
        members = tf.getmembers()
        for member in members:
            _check_inside(into, member.name, archive_path)
            if member.issym() or member.islnk():
                link = os.path.join(os.path.dirname(member.name), member.linkname)
                _check_inside(into, link, archive_path)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and security backports
            tf.extractall(into, members=members, filter="data")
        else:  # pragma: no cover - members were checked above
            tf.extractall(into, members=members)


def _check_inside(root: Path, member: str, archive_path: Path) -> None:
    if not (root / member).resolve().is_relative_to(root):
        raise DataError(
            str(archive_path),
            f"member '{member}' would be extracted outside '{root}'",
            fix="use the official archive",
        )
