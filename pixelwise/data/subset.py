"""Fewer pixel labels: a fixed, seeded part of a training split keeps its masks, the rest does not.

Three ways to choose the labelled samples, at most one a run:

- ``data.labeled_per_class: N`` (:func:`per_class_subset`), the semi-supervised papers' protocol
  (DecoupledNet's 25, 10 and 5 strong annotations per class on VOC): every class that the split
  shows gets at least N labelled images that contain it (all of them where the split has fewer).
  Classes are served rarest first (fewest images in the split; ties by class id), each taking the
  images it still lacks from one seeded order of the split, skipping those already chosen; an
  image chosen for one class counts for every class it shows, so the subset is usually smaller
  than N x classes.
- ``data.labeled_fraction`` draws ``round(fraction × N)`` (at least one) of the split's N samples.
- ``data.labeled_list`` names them in a text file, one sample id a line.

A draw is a pure function of ``train.seed`` and the split: it never touches torch's or numpy's
global RNG, so a resumed run and every rank of a distributed run hold the same subset.
:func:`write_labeled_list` writes the subset a run holds as such a list (each line annotated with
the classes the image shows), so that it can be read, and named again with ``data.labeled_list``
to train on exactly the same images.

Two views of a split follow from the subset:

- :class:`LabeledSubset` holds the labelled samples alone. A fully supervised network trains on it
  (an unlabelled image carries no signal for it, and a batch of all-ignore masks would make a mean
  cross entropy NaN).
- :class:`SemiSupervised` holds every sample; an unlabelled one's mask is all ignore (255), so no
  pixel label of it can reach a loss, and ``image_labels`` gives the multi-hot image-level labels
  (from the original mask) that weakly supervised methods learn from. With ``targets="dict"`` a
  sample is ``(image, {"mask", "image_labels", "labeled"})``; :func:`dict_target_transform` and
  :func:`collate_dict_targets` carry such targets through the joint transforms and into a batch.

A sample id is what a list file names: the stem of the sample's image file (``2007_000032`` for
VOC, ``0001TP_006690`` for CamVid), or the sample's number where a dataset generates or indexes its
samples by number (``shapes``, NYUDv2's official frames; counted from 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pixelwise.data.base import IGNORE_INDEX
from pixelwise.errors import PixelwiseError

#: Mixed into the seed so that the labelled subset is not the first samples of epoch 0's order
#: (the loader draws its permutations from the same ``train.seed``).
_SUBSET_STREAM = 0x5EB5E7
#: The per-class draw's own stream, apart from the fraction draw's.
_PER_CLASS_STREAM = 0xC1A55
#: The file a run's labelled subset is written to, in its run folder.
LABELED_LIST_NAME = "labeled.txt"


def sample_id(dataset: Any, index: int) -> str:
    """The id a list file names sample ``index`` by: its image file's stem, or its number."""
    sample = dataset.samples[index]
    if isinstance(sample, tuple | list) and sample:
        sample = sample[0]
    if isinstance(sample, int | np.integer):
        return str(int(sample))
    return Path(str(sample)).stem


def fraction_subset(size: int, fraction: float, seed: int) -> list[int]:
    """``round(fraction × size)`` (at least 1) indices of ``range(size)``, drawn from ``seed``.

    Sorted, and the same for the same ``(size, fraction, seed)`` whatever the global RNG state,
    process or rank. Rounding is half up (``0.5 × 5`` keeps 3), not Python's half-to-even.
    """
    if not 0 < fraction <= 1:
        raise PixelwiseError(
            f"data.labeled_fraction is {fraction}; it must lie in (0, 1], e.g. 0.125."
        )
    count = min(size, max(1, math.floor(fraction * size + 0.5)))
    order = np.random.default_rng([seed, _SUBSET_STREAM]).permutation(size)
    return sorted(int(i) for i in order[:count])


def class_presence(dataset: Any) -> np.ndarray:
    """N x C booleans: which classes each sample's mask shows (ignore aside).

    Decodes every mask of the split once (the per-class draw needs the whole split's labels).
    """
    classes = dataset.num_classes
    presence = np.zeros((len(dataset), classes), dtype=bool)
    for index in range(len(dataset)):
        mask = dataset.load_mask(dataset.samples[index])
        presence[index] = image_labels_of(mask, classes).numpy() > 0
    return presence


def per_class_subset(presence: np.ndarray, per_class: int, seed: int) -> list[int]:
    """Indices such that every class shown by some sample is shown by at least ``per_class`` of
    them (by all of them where fewer show it), drawn from ``seed``.

    Greedy over the classes from the rarest (fewest samples showing it; ties by class id): each
    takes the samples it still lacks in the order of one seeded permutation of all samples,
    skipping those already chosen, and every class a taken sample shows is counted as served.

    Args:
        presence: N x C booleans, sample n shows class c (:func:`class_presence`).
        per_class: N, at least 1.
        seed: ``train.seed``.

    Returns:
        Sorted indices; the same for the same ``(presence, per_class, seed)`` whatever the global
        RNG state, process or rank.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int | np.integer) or per_class < 1:
        raise PixelwiseError(
            f"data.labeled_per_class is {per_class!r}; it must be a whole number of images per "
            "class of at least 1, e.g. 25 (the paper's 25, 10 or 5)."
        )
    presence = np.asarray(presence, dtype=bool)
    size = presence.shape[0]
    order = np.random.default_rng([seed, _PER_CLASS_STREAM]).permutation(size)
    shown = presence[order]  # rows in the drawn order
    taken = np.zeros(size, dtype=bool)  # by position in the drawn order
    served = np.zeros(presence.shape[1], dtype=np.int64)
    images_per_class = presence.sum(axis=0)
    for cls in sorted(np.flatnonzero(images_per_class), key=lambda c: (images_per_class[c], c)):
        lacking = per_class - int(served[cls])
        if lacking <= 0:
            continue
        picks = np.flatnonzero(shown[:, cls] & ~taken)[:lacking]
        taken[picks] = True
        served += shown[picks].sum(axis=0)
    return sorted(int(i) for i in order[taken])


def list_subset(dataset: Any, list_file: str | Path) -> list[int]:
    """The indices of the samples ``list_file`` names (one sample id a line; ``#`` comments).

    Raises:
        PixelwiseError: the file is absent or empty, or a line names no sample of the split (the
            error names the file, the line number and the id, and shows ids that do exist).
    """
    path = Path(list_file).expanduser()
    if not path.is_file():
        raise PixelwiseError(
            f"data.labeled_list {path} does not exist; write the ids of the labelled training "
            "samples there, one a line."
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PixelwiseError(
            f"data.labeled_list {path} is not a readable text file ({type(error).__name__}); "
            "write the sample ids as plain UTF-8 text, one a line."
        ) from None
    by_id: dict[str, list[int]] = {}
    for index in range(len(dataset)):
        by_id.setdefault(sample_id(dataset, index), []).append(index)
    chosen: set[int] = set()
    for number, line in enumerate(lines, start=1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name not in by_id:
            examples = ", ".join(list(by_id)[:3])
            raise PixelwiseError(
                f"data.labeled_list {path} line {number} names {name!r}, which is no sample of "
                f"the {getattr(dataset, 'split', 'training')!r} split of {getattr(dataset, 'name', '')}; "
                f"ids are image file stems or sample numbers such as {examples}."
            )
        chosen.update(by_id[name])
    if not chosen:
        raise PixelwiseError(
            f"data.labeled_list {path} names no sample; write the ids of the labelled training "
            "samples there, one a line."
        )
    return sorted(chosen)


def subset_mode(cfg: Any) -> str | None:
    """Which of ``data.labeled_per_class``, ``data.labeled_fraction`` and ``data.labeled_list``
    chooses the labelled subset (its key), or None when none is set (all labelled).

    Raises:
        PixelwiseError: more than one is set.
    """
    d = cfg.data
    # getattr: a config whose data section has no labeled_per_class field reads as unset.
    values = {
        "labeled_per_class": getattr(d, "labeled_per_class", None),
        "labeled_fraction": d.labeled_fraction,
        "labeled_list": d.labeled_list,
    }
    given = [f"data.{key}" for key, value in values.items() if value is not None]
    if len(given) > 1:
        raise PixelwiseError(
            f"{' and '.join(given)} are set together; keep one (a number per class or a fraction "
            "draws the labelled images, a list names them)."
        )
    return given[0].removeprefix("data.") if given else None


def labeled_subset(dataset: Any, cfg: Any) -> list[int] | None:
    """The indices of ``dataset`` that keep their pixel labels under ``cfg.data``.

    None when none of ``data.labeled_per_class``, ``data.labeled_fraction`` and
    ``data.labeled_list`` is set (all labelled). A pure function of the config (``train.seed``)
    and the dataset: every rank computes the same.
    """
    d = cfg.data
    mode = subset_mode(cfg)
    if mode == "labeled_list":
        return list_subset(dataset, d.labeled_list)
    if mode == "labeled_fraction":
        return fraction_subset(len(dataset), d.labeled_fraction, cfg.train.seed)
    if mode == "labeled_per_class":
        return per_class_subset(class_presence(dataset), d.labeled_per_class, cfg.train.seed)
    return None


def write_labeled_list(
    path: str | Path, dataset: Any, indices: Sequence[int], header: Sequence[str] = ()
) -> Path:
    """Write the ids of ``dataset``'s samples ``indices`` to ``path``, one a line, as
    ``data.labeled_list`` reads them (:func:`list_subset` gives ``indices`` back).

    Each line ends with a comment naming the classes the sample's mask shows, and the file opens
    with ``header`` and the number of chosen images per class, as comments. Written to a
    temporary file and renamed, so a reader never sees half a list.
    """
    path = Path(path)
    names = list(getattr(dataset, "classes", ())) or [str(c) for c in range(dataset.num_classes)]
    per_class = np.zeros(dataset.num_classes, dtype=np.int64)
    lines = []
    for index in sorted(int(i) for i in indices):
        shown = image_labels_of(dataset.load_mask(dataset.samples[index]), dataset.num_classes)
        classes = np.flatnonzero(shown.numpy() > 0)
        per_class[classes] += 1
        lines.append(f"{sample_id(dataset, index)}  # {' '.join(names[c] for c in classes)}")
    counts = ", ".join(f"{names[c]} {int(n)}" for c, n in enumerate(per_class))
    split = f"{getattr(dataset, 'name', '')} {getattr(dataset, 'split', '')}".strip()
    top = [
        *header,
        f"{len(lines)} of the {len(dataset)} samples of {split or 'the split'}",
        f"images per class: {counts}",
    ]
    text = "".join(f"# {line}\n" for line in top) + "".join(f"{line}\n" for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


def save_labeled_list(train_set: Any, cfg: Any, folder: str | Path) -> Path | None:
    """Write the labelled subset ``train_set`` holds to ``folder/labeled.txt``
    (:func:`write_labeled_list`); None, and nothing written, when ``cfg`` sets no subset.

    ``train_set`` is what the task made of the split (:func:`apply_labeled_subset`, possibly
    inside :class:`Balanced`); its header names the option and the seed that chose it.
    """
    mode = subset_mode(cfg)
    if mode is None:
        return None
    view = train_set.source if isinstance(train_set, Balanced) else train_set
    if isinstance(view, SemiSupervised):
        indices = view.labeled_indices
    elif isinstance(view, LabeledSubset):
        indices = view.indices
    else:
        raise TypeError(f"{train_set!r} is no labelled-subset view of a training split")
    value = getattr(cfg.data, mode)
    header = [f"data.{mode}: {value}, train.seed: {cfg.train.seed}"]
    return write_labeled_list(Path(folder) / LABELED_LIST_NAME, view.base, indices, header)


def apply_labeled_subset(dataset: Any, cfg: Any, *, keep_unlabeled: bool = False, **kwargs: Any):
    """``dataset`` as the task trains on it under ``cfg.data``'s labelled subset.

    Args:
        dataset: the training split.
        cfg: the run's :class:`~pixelwise.config.Config`.
        keep_unlabeled: False (fully supervised networks): the labelled samples alone, as a
            :class:`LabeledSubset`. True (semi-supervised methods): every sample, as a
            :class:`SemiSupervised` whose unlabelled masks are all ignore.
        **kwargs: passed to :class:`SemiSupervised` (``targets="dict"``).

    Returns:
        ``dataset`` itself when no subset is configured and ``keep_unlabeled`` is False; otherwise
        the view (a :class:`SemiSupervised` with every sample labelled when none is configured).
    """
    indices = labeled_subset(dataset, cfg)
    if keep_unlabeled:
        return SemiSupervised(
            dataset, range(len(dataset)) if indices is None else indices, **kwargs
        )
    return dataset if indices is None else LabeledSubset(dataset, indices)


def image_labels_of(mask: Tensor, num_classes: int) -> Tensor:
    """Multi-hot ``float32`` vector of length C: 1 where the mask holds the class (ignore aside)."""
    values = mask.flatten()
    values = values[(values >= 0) & (values < num_classes)]
    return (torch.bincount(values, minlength=num_classes)[:num_classes] > 0).float()


class _View(Dataset):
    """A dataset seen through positions into another; the base's classes and palette show through.

    ``samples`` are positions into the base, so dataset walkers that read
    ``load_mask(samples[i])`` (class weights, ``datasets check``) see this view's masks.
    """

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        size = len(base)
        bad = [i for i in self.indices if not 0 <= i < size]
        if bad:
            raise ValueError(f"indices {bad[:3]} lie outside the {size} samples of {base!r}")

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the view lacks: classes, palette, ignore_index, name, split.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    def base_sample(self, position: int) -> Any:
        return self.base.samples[self.indices[position]]

    def sample_id(self, position: int) -> str:
        return sample_id(self.base, self.indices[position])

    def describe(self, position: int) -> str:
        return self.base.describe(self.base_sample(position))

    def load_image(self, position: int) -> Tensor:
        return self.base.load_image(self.base_sample(position))


class LabeledSubset(_View):
    """The labelled samples alone, each ``(image, mask)`` as the base gives it."""

    @property
    def samples(self) -> list[int]:
        return list(range(len(self.indices)))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor]:
        return self.base[self.indices[position]]

    def load_mask(self, position: int) -> Tensor:
        return self.base.load_mask(self.base_sample(position))

    def __repr__(self) -> str:
        return f"LabeledSubset({self.base!r}, {len(self.indices)} labelled)"


class SemiSupervised(_View):
    """Every sample of ``dataset``; those outside ``labeled_indices`` lose their pixel labels.

    Args:
        dataset: the training split (a :class:`~pixelwise.data.base.SegmentationDataset`).
        labeled_indices: the samples that keep their masks (see :func:`labeled_subset`).
        targets: ``"mask"``: a sample is ``(image, mask)``, the mask all 255 when unlabelled;
            ``"dict"``: ``(image, {"mask": mask, "image_labels": multi-hot float C,
            "labeled": bool tensor})``, the image labels from the original mask.
    """

    def __init__(
        self, dataset: Any, labeled_indices: Sequence[int], *, targets: str = "mask"
    ) -> None:
        super().__init__(dataset, range(len(dataset)))
        if targets not in ("mask", "dict"):
            raise ValueError(f"targets must be 'mask' or 'dict', got {targets!r}")
        self.targets = targets
        self.labeled = np.zeros(len(dataset), dtype=bool)
        labeled = [int(i) for i in labeled_indices]
        if any(not 0 <= i < len(dataset) for i in labeled):
            raise ValueError(f"labeled_indices lie outside the {len(dataset)} samples")
        self.labeled[labeled] = True
        self._image_labels: dict[int, Tensor] = {}

    @property
    def samples(self) -> list[int]:
        return self.indices

    def __len__(self) -> int:
        return len(self.indices)

    def is_labeled(self, index: int) -> bool:
        return bool(self.labeled[index])

    @property
    def labeled_indices(self) -> list[int]:
        return np.flatnonzero(self.labeled).tolist()

    def image_labels(self, index: int) -> Tensor:
        """Multi-hot labels of sample ``index`` over the C classes, from its original mask.

        Cached: the first call per sample decodes its mask, later calls do not.
        """
        if index not in self._image_labels:
            mask = self.base.load_mask(self.base.samples[index])
            self._image_labels[index] = image_labels_of(mask, self.num_classes)
        return self._image_labels[index].clone()

    def load_mask(self, index: int) -> Tensor:
        mask = self.base.load_mask(self.base.samples[index])
        return mask if self.labeled[index] else torch.full_like(mask, IGNORE_INDEX)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image, mask = self.base[index]
        if self.targets == "dict" and index not in self._image_labels:
            # The original mask is at hand: caching here spares image_labels() a second decode.
            self._image_labels[index] = image_labels_of(mask, self.num_classes)
        labeled = bool(self.labeled[index])
        if not labeled:
            mask = torch.full_like(mask, IGNORE_INDEX)
        if self.targets == "mask":
            return image, mask
        target = {
            "mask": mask,
            "image_labels": self._image_labels[index].clone(),
            "labeled": torch.tensor(labeled),
        }
        return image, target

    def __repr__(self) -> str:
        return f"SemiSupervised({self.base!r}, {int(self.labeled.sum())} of {len(self)} labelled)"


def dict_target_transform(
    transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None,
) -> Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]:
    """A joint ``(image, mask)`` transform applied to ``(image, {"mask": ..., ...})``.

    The mask moves with the image; the other entries (image labels, the labelled flag) pass
    through unchanged.
    """

    def apply(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        if transform is None:
            return image, target
        image, mask = transform(image, target["mask"])
        return image, {**target, "mask": mask}

    return apply


class Balanced(Dataset):
    """A :class:`SemiSupervised` split whose labelled samples are repeated so that they make up
    about half of an epoch's samples.

    Salimans et al. and Odena draw a labelled and an unlabelled batch of the same size at every
    step; the engine draws one stream (per training stage), so the labelled images are repeated
    ``round(unlabelled / labelled)`` times instead (1/8 labelled: each 7 times). An epoch is then
    every unlabelled image once and every labelled one r times; with all samples labelled (or none
    unlabelled) it is the split itself. The order is a pure function of the subset.

    Attributes:
        source: the :class:`SemiSupervised` view (its masks, classes, palette, labelled flags).
        positions: the source index of each of this dataset's samples.
    """

    def __init__(self, source: SemiSupervised) -> None:
        self.source = source
        labelled = source.labeled_indices
        unlabelled = len(source) - len(labelled)
        repeats = max(1, round(unlabelled / len(labelled))) if labelled else 1
        self.repeats = repeats
        self.positions = list(range(len(source))) + [
            i for i in labelled for _ in range(repeats - 1)
        ]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        return self.source[self.positions[index]]

    def __getattr__(self, name: str) -> Any:
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def is_labeled(self, index: int) -> bool:
        return self.source.is_labeled(self.positions[index])

    def __repr__(self) -> str:
        return f"Balanced({self.source!r}, labelled x{self.repeats})"
