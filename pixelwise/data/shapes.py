"""``shapes``: the built-in synthetic dataset, so that everything runs with no download.

Each sample is drawn from ``numpy.random.default_rng([seed, split, index])``, so the same seed
gives the same images on any machine, in any order, with any number of workers. Objects of five
classes (disc, square, triangle, ring, bar) lie over a textured background, with random size,
rotation, colour and mutual occlusion. Colours of objects and background come from one shared
distribution, so colour says nothing about the class: a network must learn shape (a ring is a disc
with a hole; a bar is a long square) and context. About a third of the objects get an ignore band
(255) along their border, exercising the ignore path of losses and metrics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor

from pixelwise.data.base import IGNORE_INDEX, SegmentationDataset, register_dataset

SHAPES_CLASSES = ("background", "disc", "square", "triangle", "ring", "bar")
SHAPES_PALETTE = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
)  # fmt: skip
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_TRIANGLE_HALF_PLANES = (
    np.stack([np.cos(a + np.pi / 2) for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)]),
    np.stack([np.sin(a + np.pi / 2) for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)]),
)


def _inside(kind: int, u: np.ndarray, v: np.ndarray, size: float, rng: np.random.Generator):
    """Boolean mask of one object in its own rotated frame (u, v), centred at 0."""
    r = np.hypot(u, v)
    if kind == 1:  # disc
        return r <= size
    if kind == 2:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= size * 0.85
    if kind == 3:  # equilateral triangle: inside all three edges' half-planes
        nx, ny = _TRIANGLE_HALF_PLANES
        dots = u[..., None] * nx + v[..., None] * ny
        return (dots <= size * 0.55).all(axis=-1)
    if kind == 4:  # ring: a disc with a hole of 40-65 % of its radius
        return (r <= size) & (r >= size * rng.uniform(0.4, 0.65))
    # bar: at least three times longer than wide
    return (np.abs(u) <= size * 1.4) & (np.abs(v) <= size * rng.uniform(0.2, 0.35))


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Two random colours blended by a sum of low-frequency waves: HxWx3 float in 0..1."""
    wave = np.zeros_like(yy)
    for _ in range(3):
        fy, fx = rng.uniform(-0.25, 0.25, size=2)
        wave += np.sin(fy * yy + fx * xx + rng.uniform(0, 2 * np.pi))
    blend = (wave / 6 + 0.5)[..., None]
    first, second = rng.uniform(0, 1, size=(2, 3))
    return first * blend + second * (1 - blend)


def _border(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of the object's boundary (dilation minus erosion)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    k = 2 * width + 1
    dilated = nnf.max_pool2d(t, k, stride=1, padding=width)
    eroded = -nnf.max_pool2d(-t, k, stride=1, padding=width)
    return (dilated - eroded)[0, 0].numpy() > 0


def render_sample(
    seed: int, split: str, index: int, image_size: tuple[int, int], max_objects: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Draw sample ``index`` of ``split``: uint8 HxWx3 image and uint8 HxW label (255 = ignore)."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    height, width = image_size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = _texture(rng, yy, xx)
    label = np.zeros((height, width), dtype=np.uint8)
    scale = min(height, width)
    for _ in range(rng.integers(1, max_objects + 1)):
        kind = int(rng.integers(1, len(SHAPES_CLASSES)))
        size = rng.uniform(0.11, 0.22) * scale
        cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        angle = rng.uniform(0, 2 * np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        inside = _inside(kind, u, v, size, rng)
        image[inside] = _texture(rng, yy, xx)[inside]  # a later object occludes earlier ones
        label[inside] = kind
        if rng.uniform() < 0.3:
            label[_border(inside, width=max(1, scale // 64))] = IGNORE_INDEX
    noise = rng.normal(0, 0.03, size=image.shape)
    return (np.clip(image + noise, 0, 1) * 255).astype(np.uint8), label


@register_dataset("shapes")
class Shapes(SegmentationDataset):
    """Synthetic shapes over texture; ``root`` is unused (nothing is read from disk).

    Args:
        root: ignored; accepted so that ``build_dataset("shapes", root)`` works like any dataset.
        split: ``train``, ``val`` or ``test`` (disjoint random streams).
        num_samples: images in the split; default 1000 for train and 200 otherwise.
        image_size: (H, W) of every image.
        seed: the stream's seed; the same seed gives the same data everywhere.
        max_objects: at most this many objects per image (at least one).
    """

    classes = SHAPES_CLASSES
    palette = SHAPES_PALETTE
    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str | None = None,
        split: str = "train",
        transforms=None,
        *,
        num_samples: int | None = None,
        image_size: tuple[int, int] = (96, 96),
        seed: int = 0,
        max_objects: int = 4,
    ) -> None:
        super().__init__(root or ".", split=split, transforms=transforms)
        self.num_samples = (
            num_samples if num_samples is not None else (1000 if split == "train" else 200)
        )
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.seed = seed
        self.max_objects = max_objects

    def check_root(self) -> None:
        """Nothing to check: the data is generated."""

    def build_index(self) -> list[int]:
        return list(range(self.num_samples))

    def describe(self, sample: int) -> str:
        return f"shapes/{self.split}/{sample}"

    def load_pair(self, sample: int) -> tuple[Tensor, Tensor]:
        image, label = render_sample(
            self.seed, self.split, sample, self.image_size, self.max_objects
        )
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label).long()

    def load_image(self, sample: int) -> Tensor:
        return self.load_pair(sample)[0]

    def load_mask(self, sample: int) -> Tensor:
        return self.load_pair(sample)[1]
