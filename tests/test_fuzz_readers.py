"""Fuzz every dataset reader: damaged files give PixelwiseError (or a valid sample), never more.

Each reader gets a tiny dataset in its real on-disk format (PNG, JPEG, MATLAB v5 and v7.3/HDF5
.mat, COCO JSON, list files); one case copies it, damages one file with seeded byte flips and/or a
truncation, and reads every sample. Anything other than :class:`PixelwiseError` escaping, a sample
that breaks the ``(image, mask)`` contract, or a case running past its time limit fails.

The CI test runs a fixed number of cases per reader. For a bigger run by hand::

    python tests/test_fuzz_readers.py --cases 2000 --seed 1

which prints how many cases escaped, by reader and exception type.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

if __name__ == "__main__":  # run by hand: import pixelwise from the checkout this file is in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import torch  # noqa: E402

from pixelwise.data import build_dataset  # noqa: E402
from pixelwise.errors import PixelwiseError  # noqa: E402

H, W = 8, 12
#: Seconds one case may take; every fixture decodes in milliseconds.
CASE_SECONDS = 10.0
#: Cases per reader in the CI test (about 0.03 s each).
CI_CASES = 12

# -- writers of the real formats --------------------------------------------------------------


def _png(path: Path, array: np.ndarray, mode: str | None = None, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette:
        img.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])
    img.save(path)


def _jpg(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, quality=90)


def _rgb_png(path: Path, value: int = 90) -> None:
    rng = np.random.default_rng(value)
    _png(path, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def _ids(high: int, seed: int = 0, dtype: type = np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (H, W)).astype(dtype)


def _lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# -- one tiny dataset per reader: (dataset name, options, files worth damaging) ---------------
Fixture = tuple[str, dict, list[str]]


def fx_voc(root: Path) -> Fixture:
    for k, i in enumerate(("a", "b")):
        _jpg(root / "JPEGImages" / f"{i}.jpg", k)
        _png(root / "SegmentationClass" / f"{i}.png", _ids(21, k), mode="P", palette=True)
    _lines(root / "ImageSets/Segmentation/train.txt", ["a", "b"])
    files = ["JPEGImages/a.jpg", "SegmentationClass/a.png", "ImageSets/Segmentation/train.txt"]
    return "voc", {}, files


def fx_sbd(root: Path) -> Fixture:
    (root / "voc/JPEGImages").mkdir(parents=True)
    (root / "voc/SegmentationClass").mkdir(parents=True)
    (root / "voc/ImageSets/Segmentation").mkdir(parents=True)
    sbd = root / "sbd"
    for k, i in enumerate(("a", "b")):
        _jpg(sbd / "img" / f"{i}.jpg", k)
        (sbd / "cls").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(sbd / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": _ids(21, k)}})
    _lines(sbd / "train.txt", ["a", "b"])
    _lines(sbd / "val.txt", ["a"])
    # "@sbd": a path under the case's own copy, resolved when read
    options = {"sbd_root": "@sbd", "_root": "voc", "split": "sbd_train"}
    return "voc", options, ["sbd/cls/a.mat", "sbd/img/a.jpg", "sbd/train.txt"]


def fx_camvid(root: Path) -> Fixture:
    lines = []
    for k, name in enumerate(("0001TP_000001.png", "0001TP_000002.png")):
        _rgb_png(root / "train" / name, k)
        _png(root / "trainannot" / name, _ids(12, k), mode="L")
        lines.append(f"/SegNet/CamVid/train/{name} /SegNet/CamVid/trainannot/{name}")
    _lines(root / "train.txt", lines)
    return "camvid", {}, ["train/0001TP_000001.png", "trainannot/0001TP_000001.png", "train.txt"]


def fx_camvid32(root: Path) -> Fixture:
    from pixelwise.data.camvid32 import CAMVID32_PALETTE

    colours = np.asarray(CAMVID32_PALETTE, dtype=np.uint8)
    for k, frame in enumerate(("Seq05VD_f00000", "Seq05VD_f00030")):
        _rgb_png(root / "701_StillsRaw_full" / f"{frame}.png", k)
        _png(root / "LabeledApproved_full" / f"{frame}_L.png", colours[_ids(31, k)])
    files = ["701_StillsRaw_full/Seq05VD_f00000.png", "LabeledApproved_full/Seq05VD_f00000_L.png"]
    return "camvid32", {"split": "test"}, files


def fx_cityscapes(root: Path) -> Fixture:
    for k, base in enumerate(("aachen_000000_000019", "aachen_000001_000019")):
        _rgb_png(root / "leftImg8bit/train/aachen" / f"{base}_leftImg8bit.png", k)
        _png(root / "gtFine/train/aachen" / f"{base}_gtFine_labelIds.png", _ids(34, k), mode="L")
    files = [
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
        "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
    ]
    return "cityscapes", {}, files


def fx_ade20k(root: Path) -> Fixture:
    for k in (1, 2):
        _jpg(root / f"images/training/ADE_train_{k:08d}.jpg", k)
        _png(root / f"annotations/training/ADE_train_{k:08d}.png", _ids(151, k), mode="L")
    files = [
        "images/training/ADE_train_00000001.jpg",
        "annotations/training/ADE_train_00000001.png",
    ]
    return "ade20k", {}, files


def fx_coco_stuff(root: Path) -> Fixture:
    for k, stem in enumerate(("000000000009", "000000000025")):
        _jpg(root / f"images/train2017/{stem}.jpg", k)
        _png(root / f"annotations/train2017/{stem}.png", _ids(11, k), mode="L")
    files = ["images/train2017/000000000009.jpg", "annotations/train2017/000000000009.png"]
    return "coco_stuff", {}, files


def fx_sunrgbd(root: Path) -> Fixture:
    for k in (1, 2):
        _jpg(root / f"SUNRGBD-train_images/img-{k:06d}.jpg", k)
        _png(root / f"sunrgbd_train_test_labels/img-{5050 + k:06d}.png", _ids(38, k), mode="L")
    _lines(root / "sunrgbd_training_images.txt", ["SUNRGBD/a/image/x.jpg", "SUNRGBD/b/image/y.jpg"])
    files = [
        "SUNRGBD-train_images/img-000001.jpg",
        "sunrgbd_train_test_labels/img-005051.png",
        "sunrgbd_training_images.txt",
    ]
    return "sunrgbd", {}, files


def fx_nyudv2(root: Path) -> Fixture:
    """The official layout: a v7.3 (HDF5) file stored transposed, splits.mat, classMapping40.mat."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    path = root / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["images"] = rng.integers(0, 256, (2, 3, W, H), dtype=np.uint8)
        f["labels"] = rng.integers(0, 895, (2, W, H)).astype(np.uint16)
        f["depths"] = rng.uniform(0.5, 9.0, (2, W, H)).astype(np.float32)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .")
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": [[1], [2]], "testNdxs": [[2]]})
    mapping = rng.integers(1, 41, (1, 894)).astype(np.uint8)
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": mapping})
    files = ["nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat"]
    return "nyudv2", {"class_set": 13}, files


def fx_nyudv2_fcn(root: Path) -> Fixture:
    (root / "segmentation").mkdir(parents=True)
    for k, name in enumerate(("5001", "5002")):
        _rgb_png(root / "data/images" / f"img_{name}.png", k)
        scipy.io.savemat(root / "segmentation" / f"img_{name}.mat", {"segmentation": _ids(41, k)})
    _lines(root / "train.txt", ["5001", "5002"])
    return "nyudv2", {}, ["data/images/img_5001.png", "segmentation/img_5001.mat", "train.txt"]


def fx_coco(root: Path) -> Fixture:
    (root / "annotations").mkdir(parents=True)
    images, annotations = [], []
    for image_id in (1, 2):
        name = f"{image_id:012d}.jpg"
        _jpg(root / "val2017" / name, image_id)
        images.append({"id": image_id, "file_name": name, "height": H, "width": W})
    polygon = [[1, 1, 6, 1, 6, 5, 1, 5]]
    crowd = {"size": [H, W], "counts": [5, 3] * (H * W // 8)}
    for ann_id, (image_id, cat, seg, crowd_flag) in enumerate(
        ((1, 1, polygon, 0), (1, 18, crowd, 1), (2, 3, polygon, 0)), start=1
    ):
        annotations.append(
            {
                "id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg,
                "bbox": [1, 1, 5, 4], "area": 20.0, "iscrowd": crowd_flag,
            }
        )  # fmt: skip
    categories = [{"id": c, "name": str(c)} for c in range(1, 91)]
    document = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations/instances_val2017.json").write_text(json.dumps(document))
    return (
        "coco",
        {"split": "val"},
        ["annotations/instances_val2017.json", "val2017/000000000001.jpg"],
    )


def fx_folder(root: Path) -> Fixture:
    for k, stem in enumerate(("a", "b")):
        _jpg(root / "images" / f"{stem}.jpg", k)
        _png(root / "masks" / f"{stem}.png", _ids(3, k), mode="P", palette=True)
    (root / "classes.yaml").write_text(
        "classes:\n"
        "  - {name: bg, color: [0, 255, 0]}\n"
        "  - {name: cat, color: [1, 254, 7]}\n"
        "  - {name: dog, color: [2, 253, 14]}\n"
    )
    return "folder", {"split": "all"}, ["images/a.jpg", "masks/a.png", "classes.yaml"]


FIXTURES: dict[str, Callable[[Path], Fixture]] = {
    "voc": fx_voc,
    "sbd": fx_sbd,
    "camvid": fx_camvid,
    "camvid32": fx_camvid32,
    "cityscapes": fx_cityscapes,
    "ade20k": fx_ade20k,
    "coco_stuff": fx_coco_stuff,
    "sunrgbd": fx_sunrgbd,
    "nyudv2": fx_nyudv2,
    "nyudv2_fcn": fx_nyudv2_fcn,
    "coco": fx_coco,
    "folder": fx_folder,
}

# -- damage and read ----------------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Seeded damage: flip 1-16 random bytes, truncate, or both; never returns ``data`` unchanged."""
    out = bytearray(data)
    kind = rng.choice(("flip", "flip", "truncate", "both"))
    if kind in ("flip", "both") and out:
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    if kind in ("truncate", "both"):
        out = out[: rng.randrange(len(out) + 1)] if out else out
    if bytes(out) == data:  # a flip that wrote the same byte: truncate by one instead
        out = out[:-1]
    return bytes(out)


class CaseTimeout(Exception):
    """A case ran past :data:`CASE_SECONDS` (a hang in a decoder)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum, frame):
        raise CaseTimeout(f"case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_everything(name: str, root: Path, options: dict) -> None:
    """Build the dataset and decode every sample (and COCO's instances), checking the contract."""
    options = {
        k: root / v[1:] if isinstance(v, str) and v.startswith("@") else v
        for k, v in options.items()
    }
    sub = options.pop("_root", None)
    split = options.pop("split", "train")
    dataset = build_dataset(name, root / sub if sub else root, split=split, **options)
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.ndim == 3 and image.shape[0] in (3, 4), image.shape
        assert mask.dtype == torch.int64 and mask.shape == image.shape[-2:], mask.shape
        bad = (mask < 0) | ((mask >= dataset.num_classes) & (mask != 255))
        assert not bool(bad.any()), "mask values outside the classes escaped the check"
        if name == "coco":
            dataset.load_instances(index)


def run_case(reader: str, template: Path, fixture: Fixture, rng: random.Random, work: Path) -> str:
    """Damage one file of a copy of ``template`` and read it; '' when fine, else what escaped."""
    name, options, files = fixture
    root = work / "root"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(template, root)
    target = root / rng.choice(files)
    target.write_bytes(mutate(target.read_bytes(), rng))
    try:
        with time_limit(CASE_SECONDS):
            read_everything(name, root, options)
    except PixelwiseError as error:
        message = str(error)
        if "\n" in message or not message.strip():
            return f"PixelwiseError that is not one sentence: {message!r}"
        return ""
    except CaseTimeout:
        return "timeout"
    except Exception as error:  # noqa: BLE001 - counting what escapes is the point
        return f"{type(error).__name__}: {str(error)[:120]}"
    return ""


def build_templates(base: Path, readers: list[str]) -> dict[str, tuple[Path, Fixture]]:
    templates = {}
    for reader in readers:
        template = base / "templates" / reader
        template.mkdir(parents=True)
        fixture = FIXTURES[reader](template)
        # The pristine copy must read cleanly, or the fuzz proves nothing.
        read_everything(fixture[0], template, fixture[1])
        templates[reader] = (template, fixture)
    return templates


# -- the CI test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, tuple[Path, Fixture]]:
    base = tmp_path_factory.mktemp("fuzz")
    return build_templates(base, list(FIXTURES))


@pytest.mark.parametrize("reader", list(FIXTURES))
def test_damaged_files_give_pixelwise_errors(reader, templates, tmp_path, monkeypatch) -> None:
    template, fixture = templates[reader]
    rng = random.Random(f"pixelwise-fuzz-{reader}")
    escaped = []
    for case in range(CI_CASES):
        monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / f"cache{case}"))
        outcome = run_case(reader, template, fixture, rng, tmp_path)
        if outcome:
            escaped.append(f"case {case}: {outcome}")
    assert not escaped, "\n".join(escaped)


# -- the bigger run by hand ---------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="damaged files in all")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    import os

    readers = list(FIXTURES)
    escaped: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        templates = build_templates(base, readers)
        rng = random.Random(args.seed)
        for case in range(args.cases):
            reader = readers[case % len(readers)]
            os.environ["PIXELWISE_CACHE"] = str(base / f"cache{case}")
            with io.StringIO() as sink, _quiet(sink):
                outcome = run_case(reader, *templates[reader], rng, base / "work")
            if outcome:
                escaped[reader] += 1
                kinds[f"{reader}: {outcome.split(':')[0]}"] += 1
    total = sum(escaped.values())
    print(f"{args.cases} damaged files, {total} escaped ({time.perf_counter() - start:.1f} s)")
    for kind, count in kinds.most_common():
        print(f"  {count:5d}  {kind}")
    return 1 if total else 0


@contextmanager
def _quiet(sink: io.StringIO) -> Iterator[None]:
    """Keep library warnings (Pillow's, h5py's) out of the summary."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


if __name__ == "__main__":
    sys.exit(main())
