"""Where data lives, verified downloads and safe extraction.

Data sets are looked up in ``NCA_DATA_DIR`` (default: the user cache folder). A download
goes to a temporary file, is checked against its published checksum and only then moved
into place, so nothing partial ever looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path


class DataError(RuntimeError):
    """A data set is missing, corrupt or does not have the expected layout."""


def data_root() -> Path:
    """``NCA_DATA_DIR``, or ``$XDG_CACHE_HOME/nca/data`` (``~/.cache/nca/data``)."""
    env = os.environ.get("NCA_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nca" / "data"


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, checksum: str, algorithm: str = "md5") -> Path:
    """Download ``url`` to ``dest`` and verify its ``checksum`` before it appears there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
            promised = response.headers.get("Content-Length") if response.headers else None
            got = out.tell()
        if promised and promised.isdigit() and got < int(promised):
            raise OSError(f"the connection ended after {got} of {promised} bytes")
        actual = file_digest(tmp, algorithm)
        if actual != checksum:
            raise DataError(
                f"downloaded {url} (for {dest}) has {algorithm} {actual}, expected {checksum}: "
                "the file is corrupt or was changed upstream; nothing was kept"
            )
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException, ValueError) as err:  # ValueError: bad URL
        raise DataError(
            f"could not download {url}: {err}. Download it yourself and place it at {dest} "
            "(or point NCA_DATA_DIR at a folder that holds it)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip file, refusing entries that would land outside ``dest``.

    Extraction goes to a temporary folder that is renamed into place when complete.
    """
    dest = dest.resolve()
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                target = (work / member.filename).resolve()
                if not target.is_relative_to(work.resolve()) or member.filename.startswith("/"):
                    raise DataError(
                        f"{archive} holds the entry {member.filename!r}, which would be written "
                        "outside the extraction folder; refusing to extract it"
                    )
            zf.extractall(work)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(work, dest)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive} is not a valid zip file: {err}") from None
    finally:
        if work.exists():
            shutil.rmtree(work)
