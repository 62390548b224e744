"""The engine behind ``pixelwise datasets check NAME ROOT [--split S]``.

It walks every sample of a split through the dataset's own ``build_index`` / ``load_image`` /
``load_mask`` but, unlike ``__getitem__``, collects problems instead of raising on the first one:

* ``duplicate_entry``: one sample listed more than once (a list file naming the same pair twice,
  say), which trains on it twice as often; the example names the entry, how many times, and the
  list (the dataset's ``index_source()``);
* ``split_leak``: an image of this split that is also in a split it must be kept apart from
  (VOC's ``trainaug`` and ``val``, any dataset's ``train`` and ``val``; :mod:`pixelwise.data.leaks`
  says which pairs and what an image's identity is);
* ``missing_image`` / ``missing_label``: a file the index names is absent (readers index such a
  sample inside ``base.index_missing_files()`` instead of raising, as they do for training);
* ``unreadable_image`` / ``unreadable_label``: the file exists but does not decode (truncated or
  corrupt), or a non-image label (.mat, JSON) was refused by its loader;
* ``size_mismatch``: image and label sizes differ;
* ``rgb_label``: a label saved as an RGB (3-channel) picture that the loader refused, where the
  dataset wants single-channel class indices;
* ``bad_values``: label values that are neither a class id ``0..C-1`` nor 255 after decoding, or
  raw values the loader refused (``base.apply_lut``) in a label image that itself decodes;
* ``loader_error``: a loader failed in a way it should not (an exception other than pixelwise's
  one-sentence error or a file error). That is a bug in the reader, not a problem of the data, so
  such a report has ``exit_code`` 2, never 1.

It also counts the pixels of every class and of ignore (``np.bincount``, no per-pixel Python);
a label its loader refused adds nothing to these counts.
A root that is not the dataset at all raises :class:`PixelwiseError` (the CLI exits 2); a report
with problems has ``exit_code`` 1, a clean one 0, one with loader errors 2.

Files of a sample come from the dataset's ``sample_files(sample)`` when it has one (a dict with
``"image"`` and ``"label"`` paths), otherwise from the first and last ``Path`` of the sample tuple.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.base import IGNORE_INDEX, SegmentationDataset, index_missing_files
from pixelwise.data.leaks import find_leaks
from pixelwise.errors import PixelwiseError

#: Problem kinds in report order, with the words ``format_report`` prints for them.
PROBLEM_KINDS = {
    "duplicate_entry": "entries listed more than once",
    "split_leak": "images also in a split this one must be kept apart from (see pixelwise.data.leaks)",
    "missing_image": "missing images",
    "missing_label": "missing labels",
    "unreadable_image": "unreadable or truncated images",
    "unreadable_label": "unreadable or invalid labels",
    "size_mismatch": "image/label size mismatches",
    "rgb_label": "labels saved as RGB; convert them to single-channel class-index PNGs",
    "bad_values": "labels with values outside the classes",
    "loader_error": "samples the reader failed on unexpectedly (a bug in pixelwise; please report it)",
}
#: Errors a broken file can raise through a loader; anything else is a bug and propagates.
_DATA_ERRORS = (PixelwiseError, OSError, ValueError, SyntaxError, KeyError, IndexError)


@dataclass
class Problems:
    """How many samples had one kind of problem, and the first few of them."""

    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """What ``check_dataset`` found in one split."""

    dataset: str
    root: str
    split: str
    classes: tuple[str, ...]
    samples: int = 0
    class_pixels: list[int] = field(default_factory=list)
    ignore_pixels: int = 0
    bad_pixels: int = 0
    problems: dict[str, Problems] = field(
        default_factory=lambda: {kind: Problems() for kind in PROBLEM_KINDS}
    )
    seconds: float = 0.0

    @property
    def problem_count(self) -> int:
        return sum(p.count for p in self.problems.values())

    @property
    def exit_code(self) -> int:
        """0 when clean, 1 when the data has problems, 2 when a reader failed unexpectedly.

        A wrong root or bad options raise instead (the CLI exits 2 for them too).
        """
        if self.problems["loader_error"].count:
            return 2
        return 1 if self.problem_count else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "split": self.split,
            "samples": self.samples,
            "classes": list(self.classes),
            "class_pixels": self.class_pixels,
            "ignore_pixels": self.ignore_pixels,
            "bad_pixels": self.bad_pixels,
            "problems": {
                k: {"count": p.count, "examples": p.examples} for k, p in self.problems.items()
            },
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }


@dataclass
class _SampleResult:
    problems: list[tuple[str, str]]
    histogram: np.ndarray | None = None
    ignore: int = 0
    bad: int = 0


def sample_files(dataset: SegmentationDataset, sample: Any) -> dict[str, Path]:
    """The image and label files of ``sample`` (see the module docstring)."""
    own = getattr(dataset, "sample_files", None)
    if callable(own):
        return dict(own(sample))
    paths = [p for p in sample if isinstance(p, Path)] if isinstance(sample, tuple | list) else []
    files = {"image": paths[0]} if paths else {}
    if len(paths) > 1:
        files["label"] = paths[-1]
    return files


def _image_decodes(path: Path) -> bool:
    """True when ``path`` is an image file that PIL decodes completely."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, ValueError, SyntaxError):
        return False
    return True


def _error_text(error: BaseException) -> str:
    return str(error) if isinstance(error, PixelwiseError) else f"{type(error).__name__}: {error}"


def _is_rgb(path: Path) -> bool:
    """True when ``path`` decodes as a 3- or 4-channel colour picture."""
    try:
        with Image.open(path) as img:
            return img.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
    except (OSError, ValueError, SyntaxError):
        return False


def check_sample(dataset: SegmentationDataset, sample: Any) -> _SampleResult:
    """Decode one sample and list its problems; never raises.

    A reader failure that is neither :class:`PixelwiseError` nor a file error is recorded as
    ``loader_error`` (with the file and the exception), so one bad reader path cannot stop the walk.
    """
    try:
        return _check_sample(dataset, sample)
    except Exception as error:  # noqa: BLE001 - recorded and reported as a reader bug, exit 2
        files = ", ".join(str(p) for p in sample_files(dataset, sample).values())
        return _SampleResult(
            problems=[("loader_error", f"{files}: {type(error).__name__}: {error}")]
        )


def _check_sample(dataset: SegmentationDataset, sample: Any) -> _SampleResult:
    where = dataset.describe(sample)
    result = _SampleResult(problems=[])
    for role, path in sample_files(dataset, sample).items():
        if not Path(path).exists():
            result.problems.append((f"missing_{role}", str(path)))
    if result.problems:
        return result
    image = mask = None
    try:
        image = dataset.load_image(sample)
    except _DATA_ERRORS as error:
        result.problems.append(("unreadable_image", _error_text(error)))
    try:
        mask = dataset.load_mask(sample)
    except _DATA_ERRORS as error:
        # Loaders refuse undefined raw values (base.apply_lut); a label file that decodes by
        # itself but is refused has bad values, one that does not decode is unreadable.
        label = sample_files(dataset, sample).get("label")
        if label is not None and _is_rgb(Path(label)):
            kind = "rgb_label"
        elif label is not None and _image_decodes(Path(label)):
            kind = "bad_values"
        else:
            kind = "unreadable_label"
        result.problems.append((kind, _error_text(error)))
    if mask is None:
        return result
    if image is not None and tuple(image.shape[-2:]) != tuple(mask.shape[-2:]):
        result.problems.append(
            (
                "size_mismatch",
                f"{where}: image {tuple(image.shape[-2:])}, label {tuple(mask.shape[-2:])}",
            )
        )
    flat = mask.reshape(-1).numpy()
    num_classes = dataset.num_classes
    valid = (flat >= 0) & (flat < num_classes)
    result.histogram = np.bincount(flat[valid], minlength=num_classes)
    ignore = flat == IGNORE_INDEX
    result.ignore = int(np.count_nonzero(ignore))
    bad = ~(valid | ignore)
    result.bad = int(np.count_nonzero(bad))
    if result.bad:
        values = np.unique(flat[bad])
        shown = ", ".join(map(str, values[:8].tolist())) + (", ..." if values.size > 8 else "")
        result.problems.append(("bad_values", f"{where}: values {shown} ({result.bad} pixels)"))
    return result


def check_dataset(
    name: str,
    root: str | Path,
    split: str,
    *,
    max_examples: int = 5,
    options: dict[str, Any] | None = None,
    workers: int | None = None,
) -> CheckReport:
    """Walk every sample of ``name``'s ``split`` under ``root`` and report what is wrong.

    Args:
        name: a registered dataset name.
        root: the dataset root.
        split: the split to walk.
        max_examples: how many examples of each problem kind to keep.
        options: keyword options of the dataset class.
        workers: decoding threads (PIL and zlib release the GIL); default ``min(4, cpus)``.

    Raises:
        PixelwiseError: when ``root`` is not that dataset (names the folder that was expected),
            or the name, split or options are invalid.
    """
    start = time.perf_counter()
    dataset = build_dataset(name, root, split=split, **(options or {}))
    try:
        # A sample whose file is absent is indexed and counted below, not raised for here.
        with index_missing_files():
            samples = dataset.samples  # raises for a root that is not this dataset at all
    except PixelwiseError:
        raise
    except Exception as error:  # noqa: BLE001 - a reader bug: one sentence and exit 2, never 1
        raise PixelwiseError(
            f"{name} {split} at {root} could not be indexed ({type(error).__name__}: {error}); "
            "this is a bug in pixelwise's reader, please report it."
        ) from error
    report = CheckReport(
        dataset=name,
        root=str(root),
        split=split,
        classes=tuple(dataset.classes),
        samples=len(samples),
        class_pixels=[0] * dataset.num_classes,
    )
    for text in duplicate_entries(dataset, samples):
        _add_problem(report, "duplicate_entry", text, max_examples)
    for text in find_leaks(name, root, split, dataset, samples, options):
        _add_problem(report, "split_leak", text, max_examples)
    histogram = np.zeros(dataset.num_classes, dtype=np.int64)
    for result in _map(dataset, samples, workers):
        for kind, text in result.problems:
            _add_problem(report, kind, text, max_examples)
        if result.histogram is not None:
            histogram += result.histogram
        report.ignore_pixels += result.ignore
        report.bad_pixels += result.bad
    report.class_pixels = histogram.tolist()
    report.seconds = time.perf_counter() - start
    return report


def _add_problem(report: CheckReport, kind: str, text: str, max_examples: int) -> None:
    entry = report.problems[kind]
    entry.count += 1
    if len(entry.examples) < max_examples:
        entry.examples.append(text)


def duplicate_entries(dataset: SegmentationDataset, samples: Sequence[Any]) -> list[str]:
    """One line per sample the index holds more than once, in order of first appearance.

    Each names the entry (its image file, else the dataset's ``describe``), how many times it is
    listed, and where (``index_source()``: the list file, or the folder the index was built from).
    """
    counts = Counter(_sample_key(sample) for sample in samples)
    lines, seen = [], set()
    for sample in samples:
        key = _sample_key(sample)
        if counts[key] > 1 and key not in seen:
            seen.add(key)
            name = sample_files(dataset, sample).get("image") or dataset.describe(sample)
            lines.append(f"{name} is listed {counts[key]} times in {dataset.index_source()}")
    return lines


def _sample_key(sample: Any) -> Any:
    """``sample`` itself where it can be hashed (tuples of paths and ids), else its repr."""
    try:
        hash(sample)
    except TypeError:
        return repr(sample)
    return sample


def _map(
    dataset: SegmentationDataset, samples: list[Any], workers: int | None
) -> Iterator[_SampleResult]:
    """Results in sample order, decoded by a few threads."""
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if workers <= 1:
        return (check_sample(dataset, s) for s in samples)
    pool = ThreadPoolExecutor(workers)

    def run() -> Iterator[_SampleResult]:
        with pool:
            yield from pool.map(lambda s: check_sample(dataset, s), samples)

    return run()


def format_report(report: CheckReport) -> str:
    """The report as the CLI prints it: a summary line, the problems, the class histogram."""
    lines = [
        f"{report.dataset} {report.split} at {report.root}: {report.samples} samples checked "
        f"in {report.seconds:.1f} s"
    ]
    if report.problem_count == 0:
        lines.append("problems: none")
    for kind, label in PROBLEM_KINDS.items():
        entry = report.problems[kind]
        if entry.count:
            lines.append(f"{label}: {entry.count}")
            lines.extend(f"  {example}" for example in entry.examples)
            if entry.count > len(entry.examples):
                lines.append(f"  ... and {entry.count - len(entry.examples)} more")
    total = sum(report.class_pixels) + report.ignore_pixels + report.bad_pixels
    width = max([len(n) for n in report.classes] + [6])
    lines.append("class pixels:")
    rows = [
        (str(i), n, c)
        for i, (n, c) in enumerate(zip(report.classes, report.class_pixels, strict=True))
    ]
    rows.append((str(IGNORE_INDEX), "ignore", report.ignore_pixels))
    if report.bad_pixels:
        rows.append(("?", "outside", report.bad_pixels))
    for index, name, count in rows:
        share = 100.0 * count / total if total else 0.0
        lines.append(f"  {index:>3}  {name:<{width}}  {count:>14,}  {share:6.2f} %")
    lines.append(f"exit code {report.exit_code}")
    return "\n".join(lines)
