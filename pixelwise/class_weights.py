"""Class-balancing loss weights computed from per-class pixel counts.

Pure functions of histograms, so they know no dataset: a loader (or the engine) counts the labelled
pixels of its training split, with the ignore label left out, and passes the counts here.

- ``enet_class_weights``: ENet's ``w = 1 / ln(c + p_class)`` (Paszke et al., arXiv:1606.02147,
  Sec. 5; e-lab/ENet-training ``train/models/decoder.lua`` with ``c = 1.02``).
- ``median_frequency_weights_from_counts``: median frequency balancing (Eigen & Fergus,
  arXiv:1411.4734), the weights SegNet trains with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pixelwise.errors import PixelwiseError


def _check_histogram(counts: Tensor, name: str) -> Tensor:
    """``counts`` as a float64 vector; raise if it is not a non-negative 1-D histogram."""
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(counts.shape)}")
    counts = counts.to(torch.float64)
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError(
            f"{name} must hold finite non-negative pixel counts, got {counts.tolist()}"
        )
    return counts


def enet_class_weights(class_pixel_counts: Tensor, c: float = 1.02) -> Tensor:
    """ENet's bounded inverse-log weighting ``w_class = 1 / ln(c + p_class)``.

    ``p_class`` is the class's share of all labelled pixels. Unlike inverse frequency, the weight
    stays bounded as ``p_class -> 0``: with ``c = 1.02`` every weight lies in
    ``(1 / ln(2.02), 1 / ln(1.02)] ~ (1.42, 50.5]``. As in the authors' ``decoder.lua``, a class
    with no pixels gets weight 0 (it never occurs in a target, so its weight never matters, and 0
    keeps it out of any normalisation of the weights).

    Args:
        class_pixel_counts: ``(C,)`` labelled pixels per class, ignore label excluded.
        c: the bound, > 1. The paper and ``decoder.lua`` use 1.02 (``encoder.lua`` uses 1.2).

    Returns:
        ``(C,)`` float32 weights for ``CrossEntropyLoss(weight=...)``.

    Raises:
        PixelwiseError: ``c <= 1`` or no labelled pixel at all.
    """
    counts = _check_histogram(class_pixel_counts, "class_pixel_counts")
    if not c > 1.0:
        # ln(c + p) <= 0 for some p when c <= 1: a division by zero or negative weights.
        raise PixelwiseError(f"ENet class weighting needs c > 1, got c={c}; use the paper's 1.02.")
    total = counts.sum()
    if total <= 0:
        raise PixelwiseError(
            "Cannot compute ENet class weights: the class histogram has no labelled pixel; "
            "check that the training split's labels are not all the ignore value."
        )
    weights = 1.0 / torch.log(c + counts / total)
    weights = torch.where(counts > 0, weights, torch.zeros_like(weights))
    return weights.to(torch.float32)


def median_frequency_weights_from_counts(counts: Tensor, image_pixels: Tensor) -> Tensor:
    """Median frequency balancing: ``w_class = median(freq) / freq_class``.

    ``freq_class = counts[class] / image_pixels[class]`` is the class's pixels over the total pixels
    of the images in which it appears (not of all images). The median is taken over the classes
    present, averaging the two middle values for an even number (``numpy.median``). Absent
    classes (``image_pixels == 0``) get weight 0.

    Args:
        counts: ``(C,)`` pixels of each class, ignore label excluded.
        image_pixels: ``(C,)`` for each class, the summed size (all pixels, ignore included) of
            the images that contain at least one pixel of that class.

    Returns:
        ``(C,)`` float32 weights.

    Raises:
        ValueError: shapes disagree, or a class has pixels but no image containing it.
        PixelwiseError: no class has any pixel.
    """
    counts = _check_histogram(counts, "counts")
    image_pixels = _check_histogram(image_pixels, "image_pixels")
    if counts.shape != image_pixels.shape:
        raise ValueError(
            f"counts {tuple(counts.shape)} and image_pixels {tuple(image_pixels.shape)} differ"
        )
    if bool(((counts > 0) & (image_pixels < counts)).any()):
        raise ValueError("image_pixels must be at least counts for every class present")
    present = counts > 0
    if not bool(present.any()):
        raise PixelwiseError(
            "Cannot compute median frequency weights: the class histogram has no labelled pixel; "
            "check that the training split's labels are not all the ignore value."
        )
    freq = torch.zeros_like(counts)
    freq[present] = counts[present] / image_pixels[present]
    median = torch.quantile(freq[present], 0.5)  # linear interpolation = numpy.median
    weights = torch.zeros_like(freq)
    weights[present] = median / freq[present]
    return weights.to(torch.float32)


def class_pixel_counts(dataset, max_samples: int | None = None) -> tuple[Tensor, Tensor]:
    """Walk a dataset's labels: pixels per class, and per class the pixels of the images holding it.

    Args:
        dataset: a :class:`~pixelwise.data.base.SegmentationDataset` (only its masks are decoded).
        max_samples: look at the first N samples only (quick estimates on big datasets).

    Returns:
        ``(counts, image_pixels)``, both float64 vectors of length C, ready for
        :func:`enet_class_weights` and :func:`median_frequency_weights_from_counts`.
    """
    c = dataset.num_classes
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    counts = torch.zeros(c, dtype=torch.float64)
    image_pixels = torch.zeros(c, dtype=torch.float64)
    for i in range(n):
        mask = dataset.load_mask(dataset.samples[i]).flatten()
        hist = torch.bincount(mask[mask < c], minlength=c).double()
        counts += hist
        image_pixels += (hist > 0).double() * mask.numel()
    return counts, image_pixels
