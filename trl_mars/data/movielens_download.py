"""Finding and downloading MovieLens ml-latest-small (its licence forbids bundling it in the wheel).

Lookup order of ``find_movielens``: an explicit path; ``$TRL_MARS_DATA/movielens``; the copy that
``download_movielens`` (or ``trl-mars data download movielens``) put in the user's cache; with
``download=True`` (the recipes), a download on first use unless offline. Otherwise a ``FileNotFoundError``
that names the command.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from trl_mars.data.locations import DATA_ENV, cache_dir, data_root, offline

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
MOVIELENS_SHA256 = "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"
"""sha256 of the official zip (978202 bytes), as recorded in TensorFlow Datasets' url_checksums/movielens.txt."""
MOVIELENS_FILES = {
    "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
    "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
    "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
    "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
}
"""sha256 of each CSV of the release (generated 2018-09-26), checked after extraction."""
DOWNLOAD_COMMAND = "trl-mars data download movielens"


def movielens_cache_dir() -> Path:
    """Where ``download_movielens`` puts the CSV files: ``<cache>/movielens/ml-latest-small``."""
    return cache_dir() / "movielens" / "ml-latest-small"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _has_movielens(folder: Path) -> bool:
    return (folder / "movies.csv").is_file()


def download_movielens(
    dest: str | os.PathLike | None = None,
    url: str = MOVIELENS_URL,
    sha256: str | None = MOVIELENS_SHA256,
    file_sha256: dict[str, str] | None = MOVIELENS_FILES,
    force: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Fetch the ml-latest-small zip from ``url`` (``https://``, ``http://`` or ``file://``), check its ``sha256``
    and each extracted CSV's ``file_sha256`` (None skips a check, for another release), and unpack the files into
    ``dest`` (default: ``movielens_cache_dir()``). An existing copy is kept unless ``force``. The folder appears
    complete or not at all (unpacked beside it, then renamed). Returns ``dest``."""
    target = Path(dest) if dest is not None else movielens_cache_dir()
    if _has_movielens(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        archive = Path(tmp) / "movielens.zip"
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as f:
            shutil.copyfileobj(response, f)
        got = _sha256(archive)
        if sha256 is not None and got != sha256:
            raise ValueError(f"{url}: sha256 {got} does not match the pinned {sha256}; not unpacked")
        staging = Path(tmp) / "files"
        staging.mkdir()
        if not zipfile.is_zipfile(archive):
            raise ValueError(f"{url}: not a zip archive")
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename).name  # the zip holds ml-latest-small/<file>: flatten, no paths
                if info.is_dir() or not name or name.startswith("."):
                    continue
                with zf.open(info) as src, open(staging / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        for name, expected in (file_sha256 or {}).items():
            if not (staging / name).is_file():
                raise ValueError(f"{url}: the archive has no {name}")
            if (actual := _sha256(staging / name)) != expected:
                raise ValueError(f"{url}: {name} has sha256 {actual}, expected {expected}")
        if target.exists() and force:
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:  # another process (a launcher's other rank) finished the same download first
            if not _has_movielens(target):
                raise
    return target


def find_movielens(path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The MovieLens folder to read (see the module docstring for the order); raises ``FileNotFoundError``
    naming ``trl-mars data download movielens`` when there is none."""
    if path is not None:
        folder = Path(path).expanduser()
        if not _has_movielens(folder):
            raise FileNotFoundError(f"MovieLens movies.csv not found in {folder}; run `{DOWNLOAD_COMMAND}`")
        return folder
    candidates = [root / "movielens" for root in [data_root()] if root is not None] + [movielens_cache_dir()]
    for folder in candidates:
        if _has_movielens(folder):
            return folder
    where = " or ".join(str(c) for c in candidates)
    message = (
        f"MovieLens (ml-latest-small) not found in {where}. Run `{DOWNLOAD_COMMAND}` (or call "
        f"trl_mars.data.download_movielens()), set {DATA_ENV} to a folder holding movielens/, or pass its path"
    )
    if download and not offline():
        try:
            return download_movielens()
        except OSError as err:  # no network (URLError is an OSError), or no disk space
            raise FileNotFoundError(f"{message}; downloading {MOVIELENS_URL} failed: {err}") from err
    raise FileNotFoundError(message + (" (offline: HF_HUB_OFFLINE is set)" if download else ""))
