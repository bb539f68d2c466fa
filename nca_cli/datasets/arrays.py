"""Array data sets: MNIST through torchvision, MedMNIST 2D in its published npz layout."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nca_cli.datasets.storage import DataError, data_root, download

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images uint8, labels int)


def load_mnist(root: Path | None, fetch: bool) -> Arrays:
    """MNIST's official train and test sets (torchvision layout ``MNIST/raw``)."""
    from torchvision.datasets import MNIST

    base = root or data_root()
    try:
        train = MNIST(str(base), train=True, download=fetch)
        test = MNIST(str(base), train=False, download=fetch)
    except (RuntimeError, OSError) as err:
        raise DataError(
            f"MNIST not found in {base / 'MNIST' / 'raw'} ({err}); put the four *-ubyte files "
            "there or set NCA_DATA_DIR (dataset.download=true downloads them)"
        ) from None
    return {
        "train": (train.data.numpy(), train.targets.numpy()),
        "test": (test.data.numpy(), test.targets.numpy()),
    }


@dataclass(frozen=True)
class MedMNISTInfo:
    channels: int
    classes: int
    md5: dict[int, str]  # resolution -> md5 of the official npz


# From MedMNIST v2 (medmnist 3.0.2, INFO): 2D sets with single-label classification.
MEDMNIST: dict[str, MedMNISTInfo] = {
    "pathmnist": MedMNISTInfo(
        3, 9, {28: "a8b06965200029087d5bd730944a56c1", 64: "55aa9c1e0525abe5a6b9d8343a507616"}
    ),
    "dermamnist": MedMNISTInfo(
        3, 7, {28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f"}
    ),
    "octmnist": MedMNISTInfo(
        1, 4, {28: "c68d92d5b585d8d81f7112f81e2d0842", 64: "e229e9440236b774d9f0dfef9d07bdaf"}
    ),
    "pneumoniamnist": MedMNISTInfo(
        1, 2, {28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6"}
    ),
    "retinamnist": MedMNISTInfo(
        3, 5, {28: "bd4c0672f1bba3e3a89f0e4e876791e4", 64: "afda852cc34dcda56f86ad2b2457dbcc"}
    ),
    "breastmnist": MedMNISTInfo(
        1, 2, {28: "750601b1f35ba3300ea97c75c52ff8f6", 64: "742edef2a1fd1524b2efff4bd7ba9364"}
    ),
    "bloodmnist": MedMNISTInfo(
        3, 8, {28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b"}
    ),
    "tissuemnist": MedMNISTInfo(
        1, 8, {28: "ebe78ee8b05294063de985d821c1c34b", 64: "123ece2eba09d0aa5d698fda57103344"}
    ),
    "organamnist": MedMNISTInfo(
        1, 11, {28: "68e3f8846a6bd62f0c9bf841c0d9eacc", 64: "2dcccc29b88e6da5a01161ef20cda288"}
    ),
    "organcmnist": MedMNISTInfo(
        1, 11, {28: "b9ceb9546e10131b32923c5bbeaea2b1", 64: "3ce34a8724ea6f548e6db4744d03b6a9"}
    ),
    "organsmnist": MedMNISTInfo(
        1, 11, {28: "9ab87b696fb54e2a387ebe992d6ed5f1", 64: "53a6d115339d874c25e309a994ff46d3"}
    ),
}
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{file}?download=1"


def load_medmnist(name: str, resolution: int, root: Path | None, fetch: bool) -> Arrays:
    """A MedMNIST 2D set at 28 or 64 pixels, with its official train/val/test split."""
    info = MEDMNIST[name]
    file = f"{name}.npz" if resolution == 28 else f"{name}_{resolution}.npz"
    path = (root or data_root()) / "medmnist" / file
    if not path.is_file():
        if not fetch:
            raise DataError(
                f"{path} not found: download {MEDMNIST_URL.format(file=file)} there, or set "
                "NCA_DATA_DIR (dataset.download=true downloads it)"
            )
        download(MEDMNIST_URL.format(file=file), path, info.md5[resolution], "md5")
    try:
        npz = np.load(path)
        keys = set(npz.files)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    expected = {f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")}
    if expected - keys:
        raise DataError(
            f"{path} lacks the MedMNIST keys {', '.join(sorted(expected - keys))} "
            f"(it has {', '.join(sorted(keys)) or 'none'})"
        )
    out: Arrays = {}
    for split in ("train", "val", "test"):
        try:
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            # truncated members, or object arrays (pickles, which are never loaded)
            raise DataError(f"cannot read {split} arrays of {path}: {err}") from None
        if len(images) != len(labels):
            raise DataError(f"{path}: {split} has {len(images)} images but {len(labels)} labels")
        shape = (resolution, resolution) + ((info.channels,) if info.channels > 1 else ())
        if images.shape[1:] != shape or not len(images):
            raise DataError(
                f"{path}: {split}_images has the shape {images.shape}, expected (N > 0, "
                f"{', '.join(map(str, shape))}) for {name} at {resolution} pixels"
            )
        out[split] = (images, labels.reshape(len(labels), -1)[:, 0].astype(np.int64))
    return out
