"""Data set readers, splits, index encoding, and downloads from the publishers."""

from __future__ import annotations

import shutil
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recstack.data import readers
from recstack.errors import RecstackError


@dataclass(frozen=True)
class DatasetInfo:
    """A known data set: its folder name under the data dir, how to read it, where it comes from."""

    name: str
    folder: str
    load: Callable[[Path], Any]
    urls: tuple[str, ...]
    licence: str
    note: str = ""


def _obd_all(folder: Path) -> Any:
    return _Many(
        {
            f"{p}/{c}": readers.read_open_bandit(folder, p, c)
            for p in readers.OBD_POLICIES
            for c in readers.OBD_CAMPAIGNS
        }
    )


@dataclass
class _Many:
    parts: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {name: part.summary() for name, part in self.parts.items()}


_GH = "https://raw.githubusercontent.com"
DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "movielens-100k",
            "movielens-100k",
            readers.read_movielens_100k,
            ("https://files.grouplens.org/datasets/movielens/ml-100k.zip",),
            "GroupLens: research use, no redistribution",
        ),
        DatasetInfo(
            "movielens-1m",
            "movielens-1m",
            readers.read_movielens_1m,
            ("https://files.grouplens.org/datasets/movielens/ml-1m.zip",),
            "GroupLens: research use, no redistribution",
            "users.dat and movies.dat are read",
        ),
        DatasetInfo(
            "movielens1m_m1",
            "movielens1m_m1",
            readers.read_bars_ml1m,
            tuple(
                f"{_GH}/Wenhui-Yu/LCFN/master/dataset/Movielens/{n}_data.json"
                for n in ("train", "validation", "test")
            ),
            "derived from MovieLens-1M: GroupLens terms",
        ),
        DatasetInfo(
            "open_bandit_dataset_small",
            "open_bandit_dataset_small",
            _obd_all,
            tuple(
                f"{_GH}/st-tech/zr-obp/master/obd/{p}/{c}/{f}"
                for p in readers.OBD_POLICIES
                for c in readers.OBD_CAMPAIGNS
                for f in (f"{c}.csv", "item_context.csv")
            ),
            "CC BY 4.0 (ZOZO); attribution required",
        ),
        DatasetInfo(
            "frappe_x1_partial",
            "frappe_x1_partial",
            readers.read_frappe,
            tuple(
                f"{_GH}/WeiyuCheng/AFN-AAAI-20/master/data/frappe/{n}.libsvm"
                for n in ("train", "valid", "test")
            ),
            "research use only, no redistribution",
        ),
        DatasetInfo(
            "davidson_hate_offensive",
            "davidson_hate_offensive",
            readers.read_hate_speech,
            (f"{_GH}/t-davidson/hate-speech-and-offensive-language/master/data/labeled_data.csv",),
            "MIT (repository); cite the paper",
            "content is offensive",
        ),
    )
}


def dataset(name: str) -> DatasetInfo:
    """Look a data set up by name; the error lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise RecstackError(f"unknown data set '{name}'; known: {', '.join(DATASETS)}") from None


def load(name: str, data_dir: Path) -> Any:
    info = dataset(name)
    return info.load(Path(data_dir) / info.folder)


def fetch(name: str, data_dir: Path, timeout_s: float = 60.0) -> Path:
    """Download a data set from its publisher into ``data_dir/<folder>`` (needs the internet)."""
    info = dataset(name)
    target = Path(data_dir) / info.folder
    target.mkdir(parents=True, exist_ok=True)
    for url in info.urls:
        relative = url.split("/obd/", 1)[1] if "/obd/" in url else url.rsplit("/", 1)[1]
        dest = target / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout_s) as response, dest.open("wb") as out:
            shutil.copyfileobj(response, out)
        if dest.suffix == ".zip":
            with zipfile.ZipFile(dest) as archive:
                for member in archive.namelist():
                    if member.endswith("/"):
                        continue
                    flat = target / Path(member).name
                    with archive.open(member) as src, flat.open("wb") as out:
                        shutil.copyfileobj(src, out)
            dest.unlink()
    return target
