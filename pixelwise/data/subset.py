"""Fewer pixel labels: a fixed, seeded part of a training split keeps its masks, the rest does not.

``data.labeled_fraction`` draws ``round(fraction × N)`` (at least one) of the split's N samples
from ``train.seed`` alone; ``data.labeled_list`` names them in a text file, one sample id a line.
The draw is a pure function of the seed and N: it never touches torch's or numpy's global RNG, so a
resumed run and every rank of a distributed run hold the same subset.

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


def labeled_subset(dataset: Any, cfg: Any) -> list[int] | None:
    """The indices of ``dataset`` that keep their pixel labels under ``cfg.data``.

    None when neither ``data.labeled_fraction`` nor ``data.labeled_list`` is set (all labelled).
    A pure function of the config (``train.seed``) and the dataset: every rank computes the same.
    """
    d = cfg.data
    if d.labeled_list is not None:
        return list_subset(dataset, d.labeled_list)
    if d.labeled_fraction is not None:
        return fraction_subset(len(dataset), d.labeled_fraction, cfg.train.seed)
    return None


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
