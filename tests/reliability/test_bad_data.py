"""Bad data: a clear error naming the file and the problem, and nothing partial left
behind as if it were complete."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from nca_cli.composition import compose
from nca_cli.datasets import arrays, images
from nca_cli.datasets.storage import DataError
from nca_cli.tasks import task_class
from nca_cli.training.schema import parse_run_config

KVASIR = [
    "task=kvasir",
    "trainer=smoke",
    "logger=none",
    "dataset.size=16",
    "dataset.download=false",
]
MEDMNIST = ["task=medmnist", "trainer=smoke", "logger=none", "dataset.download=false"]


def build(overrides: list[str]) -> Any:
    run = parse_run_config(compose(overrides))
    return task_class(str(run.task["name"]))(run)


def png(size: tuple[int, int], mode: str = "RGB", kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(out, kind)
    return out.getvalue()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("NCA_DATA_DIR", str(root))
    return root


@pytest.fixture
def kvasir(data: Path) -> Path:
    """A small Kvasir-SEG in its published layout (JPEG images, masks)."""
    folder = data / "Kvasir-SEG"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(6):
        (folder / "images" / f"c{i}.jpg").write_bytes(png((32, 32), kind="JPEG"))
        (folder / "masks" / f"c{i}.jpg").write_bytes(png((32, 32), "L", kind="JPEG"))
    assert sum(map(len, build(KVASIR).splits.values())) == 6  # the healthy folder loads
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda f: (f / "images" / "c3.jpg").write_bytes(b"not an image"), "c3.jpg"),
        (lambda f: truncate(f / "images" / "c2.jpg"), "c2.jpg"),
        (lambda f: truncate(f / "masks" / "c4.jpg"), "c4.jpg"),
        (lambda f: (f / "masks" / "c1.jpg").unlink(), "c1.jpg has no mask"),
        (lambda f: (f / "images" / "c5.jpg").unlink(), "c5.jpg has no image"),
        (lambda f: (f / "masks" / "c0.jpg").write_bytes(png((20, 24), "L")), "20x24"),
        (lambda f: [p.unlink() for p in (f / "images").iterdir()], "holds no images"),
        (
            lambda f: [p.unlink() for p in (f / "masks").iterdir()] and (f / "masks").rmdir(),
            "masks",
        ),
    ],
    ids=[
        "corrupt",
        "truncated",
        "truncated_mask",
        "no_mask",
        "no_image",
        "sizes",
        "empty",
        "no_masks_dir",
    ],
)
def test_broken_image_folder_names_the_file(
    kvasir: Path, damage: Callable[[Path], Any], needle: str
) -> None:
    damage(kvasir)
    with pytest.raises(DataError, match=needle):
        build(KVASIR)


def test_mismatched_sizes_name_both_files(kvasir: Path) -> None:
    (kvasir / "masks" / "c0.jpg").write_bytes(png((20, 24), "L", kind="JPEG"))
    with pytest.raises(DataError) as caught:
        build(KVASIR)
    message = str(caught.value)
    assert "images/c0.jpg is 32x32" in message and "masks/c0.jpg is 20x24" in message


def write_npz(path: Path, **arrays_: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, **arrays_)


def good_medmnist() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 20), ("val", 6), ("test", 6)):
        out[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        out[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    return out


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda a: a.pop("val_labels"), "lacks the MedMNIST keys val_labels"),
        (lambda a: a.update(test_images=np.zeros((6, 28), np.uint8)), "shape"),
        (lambda a: a.update(train_labels=np.zeros((3, 1), np.uint8)), "20 images but 3 labels"),
        (lambda a: a.update(val_images=np.array([object()] * 6)), "cannot read val arrays"),
    ],
    ids=["missing_key", "wrong_shape", "label_count", "pickled_objects"],
)
def test_bad_npz_names_the_file_and_the_problem(
    data: Path, change: Callable[[dict], Any], needle: str
) -> None:
    contents = good_medmnist()
    change(contents)
    path = data / "medmnist" / "pneumoniamnist.npz"
    write_npz(path, **contents)
    with pytest.raises(DataError, match=needle) as caught:
        build(MEDMNIST)
    assert str(path) in str(caught.value)


def test_truncated_npz_is_a_data_error(data: Path) -> None:
    path = data / "medmnist" / "pneumoniamnist.npz"
    write_npz(path, **good_medmnist())
    assert build(MEDMNIST).splits is not None  # the healthy file loads
    truncate(path)
    with pytest.raises(DataError, match=r"pneumoniamnist\.npz"):
        build(MEDMNIST)


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A local HTTP server: ``files[path]`` is served; ``/short/...`` promises more bytes
    than it sends and hangs up (a connection dropped mid-download)."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.split("?")[0].removeprefix("/short"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) * 2))
            self.end_headers()
            self.wfile.write(body if self.path.startswith("/short") else body + body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_download_with_a_wrong_checksum_keeps_nothing(
    data: Path, server: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, files = server
    files["/pneumoniamnist.npz"] = b"a tampered file "  # served twice over: the full length
    monkeypatch.setattr(arrays, "MEDMNIST_URL", base + "/{file}")
    with pytest.raises(DataError) as caught:
        build([*MEDMNIST, "dataset.download=true"])
    message = str(caught.value)
    assert "pneumoniamnist.npz" in message and "md5" in message and "nothing was kept" in message
    assert leftovers(data / "medmnist") == []


def test_dropped_download_keeps_nothing(
    data: Path, server: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, files = server
    files["/pneumoniamnist.npz"] = b"only half of it"
    monkeypatch.setattr(arrays, "MEDMNIST_URL", base + "/short/{file}")
    with pytest.raises(
        DataError,
        match=r"could not download .*pneumoniamnist\.npz: the connection ended after 15 of 30",
    ):
        build([*MEDMNIST, "dataset.download=true"])
    assert leftovers(data / "medmnist") == []


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, body in entries.items():
            zf.writestr(name, body)
    return out.getvalue()


def test_kvasir_archive_checked_then_extracted_whole_or_not_at_all(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "kvasir-seg.zip"
    archive.write_bytes(zip_bytes({"Kvasir-SEG/readme.txt": b"no images here"}))
    monkeypatch.setattr(images, "KVASIR_URL", archive.as_uri())  # file:// download
    with pytest.raises(DataError, match=r"sha256 .* expected"):  # the published checksum
        build([*KVASIR, "dataset.download=true"])
    assert leftovers(data) == []

    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(images, "KVASIR_SHA256", digest)
    with pytest.raises(DataError, match="does not hold Kvasir-SEG/images"):
        build([*KVASIR, "dataset.download=true"])
    assert leftovers(data) == ["kvasir-seg.zip"]  # the verified archive, nothing extracted
