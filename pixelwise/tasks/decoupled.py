"""DecoupledNet training: image-level labels for every image, figure-ground masks for a few.

The task of :mod:`pixelwise.models.decouplednet` (``task="decoupled"``). Each step:

- classification: multi-label binary cross entropy of the image-level scores (N x K, K = C - 1
  foreground classes) against the image's labels, on every image of the batch, labelled or not.
  The labels come from the original mask (:class:`~pixelwise.data.subset.SemiSupervised` derives
  them; that is the "weak annotation" the paper assumes for all images);
- figure-ground: for every labelled image and every foreground class its image-level labels hold,
  one pass of the segmentation network fed by that class's class-specific map, scored by a 2-way
  cross entropy against the binary mask (pixels of the class 1, of other classes 0, 255 ignored),
  as the release's ``select_seg_binary`` layer builds it; the mean over the pairs' pixels.

Both terms are logged (``train/classification``, ``train/figure_ground``). With
``train.classifier_iters: N`` the run has the release's two stages: the first N iterations
minimise the classification term alone, the rest the figure-ground term alone with the classifier
frozen (its parameters never updated, its BatchNorm on running statistics); the schedule starts
again at N, as a second run would. With N = 0 (the default) the loss is their sum from the first
step, and the classifier still learns from the image-level labels alone (see below).
Evaluation, ``eval``, ``predict`` and ``compare`` treat the model like any other: its ``forward``
returns the combined map's log-scores, whose softmax is the combined map.

Deviations from the release (``training/00*``, REFERENCE.md part C):

- Both stages are one run (``train.classifier_iters``) where the release has two; each stage draws
  from its own stream, as the release's runs do: the classifier stage from every image, the
  segmentation stage from the labelled images alone. The classifier stage's recipe is
  unconfirmed. A batch holds ``data.batch_size`` images, and each labelled image gives one
  figure-ground pair per foreground class it shows; the release's batches are of pairs.
- With ``classifier_iters: 0`` both train at once on one stream, the labelled images repeated to
  about half of it (:class:`~pixelwise.data.subset.Balanced`) so that each batch has
  figure-ground pairs; the segmentation loss still never reaches the classifier (the model
  detaches pool5 and the class-specific map).
- Random crops of ``data.crop_size`` keep the image-level labels of the whole image; the recipes
  here resize instead (a class cropped away would be a wrong label).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.data.base import IGNORE_INDEX
from pixelwise.data.subset import Balanced, apply_labeled_subset, dict_target_transform
from pixelwise.engine.distributed import unwrap
from pixelwise.engine.precision import Precision
from pixelwise.errors import PixelwiseError
from pixelwise.tasks import register_task
from pixelwise.tasks.base import Task
from pixelwise.tasks.semantic import SemanticTask


def figure_ground_pairs(image_labels: Tensor, labeled: Tensor) -> Tensor:
    """P x 2 ``(image, foreground class)`` for every labelled image and every class it holds.

    Args:
        image_labels: N x C multi-hot over all classes (class 0, background, is not a pair).
        labeled: N booleans.
    """
    foreground = image_labels[:, 1:] > 0
    return (foreground & labeled[:, None].bool()).nonzero()


def figure_ground_targets(mask: Tensor, pairs: Tensor) -> Tensor:
    """P x H x W binary targets: 1 where the pair's image shows its class, 0 elsewhere, ignore kept."""
    masks = mask[pairs[:, 0]]
    target = (masks == (pairs[:, 1] + 1)[:, None, None]).long()
    return target.masked_fill(masks == IGNORE_INDEX, IGNORE_INDEX)


def decoupled_loss(output: Any, targets: dict[str, Tensor], pairs: Tensor) -> dict[str, Tensor]:
    """The two terms of one batch: ``classification`` and ``figure_ground`` (0 without pairs)."""
    labels = targets["image_labels"][:, 1:].to(output.class_logits.dtype)
    classification = F.binary_cross_entropy_with_logits(output.class_logits.float(), labels.float())
    logits = output.figure_ground.float()
    target = figure_ground_targets(targets["mask"], pairs)
    valid = target != IGNORE_INDEX
    if pairs.shape[0] == 0 or not bool(valid.any()):
        # The forward ran on a stand-in pair (DDP wants every parameter used): a zero that keeps
        # the graph, never a NaN mean over no pixels.
        figure_ground = logits.sum() * 0.0
    else:
        figure_ground = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    return {"classification": classification, "figure_ground": figure_ground}


@register_task("decoupled")
class DecoupledTask(SemanticTask):
    """Classification on every image, figure-ground segmentation on the labelled ones; in two
    stages with ``train.classifier_iters`` (see the module docstring)."""

    staged = True
    # One decoder pass per class the classifier detects: no fixed graph to count, time or trace.
    fixed_forward = False
    bench_refusal = (
        "its forward runs the decoder once per class the classifier detects, so its time "
        "depends on the image"
    )

    def stage_starts(self, total_iters: int) -> list[int]:
        first = self.cfg.train.classifier_iters
        if not first:
            return [0]
        if first >= total_iters:
            raise PixelwiseError(
                f"train.classifier_iters is {first}, but the run has {total_iters} iterations in "
                "all, which leaves none for the segmentation stage; make it smaller than "
                "train.iters (e.g. two thirds of it)."
            )
        return [0, first]

    @property
    def stage(self) -> str:
        """``"both"``, ``"classifier"`` or ``"segmentation"``: what the coming step trains."""
        first = self.cfg.train.classifier_iters
        if not first:
            return "both"
        return "classifier" if self.step < first else "segmentation"

    def frozen_parameters(self, net: nn.Module) -> list[nn.Parameter]:
        model = unwrap(net)
        classifier = list(model.parts()["classifier"].parameters())
        if self.stage == "classifier":
            ids = {id(p) for p in classifier}
            return [p for p in model.parameters() if id(p) not in ids]
        return classifier if self.stage == "segmentation" else []

    def train_dataset(self, dataset: Any) -> Any:
        """Every training image with its image-level labels; masks only on the labelled subset.

        Trained in two stages, each stage has its stream (:meth:`stage_samples`); trained jointly,
        the labelled images are repeated to about half of the one stream.
        """
        semi = apply_labeled_subset(dataset, self.cfg, keep_unlabeled=True, targets="dict")
        return semi if self.cfg.train.classifier_iters else Balanced(semi)

    def stage_samples(self, stage: int, train_set: Any) -> list[int] | None:
        """The classifier stage learns from every image (the weak set), the segmentation stage
        from the labelled images alone (the strong set), as the release's two runs do."""
        if self.cfg.train.classifier_iters and stage == 1:
            return train_set.labeled_indices
        return None

    def train_transforms(self) -> Callable:
        return dict_target_transform(super().train_transforms())

    def setup(
        self, model: nn.Module, device: torch.device, train_set: Any, precision: Precision
    ) -> None:
        """Nothing to build: the two losses are fixed (``loss.*`` settings do not apply)."""
        del model, device, train_set, precision

    def export_module(self, model: nn.Module) -> nn.Module:
        return Task.export_module(self, model)  # the refusal: see fixed_forward

    def loss(
        self, net: nn.Module, inputs: Tensor, targets: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        stage = self.stage
        # The frozen classifier segments on its running statistics, as at inference.
        unwrap(net).backbone.train(stage != "segmentation")
        pairs = figure_ground_pairs(targets["image_labels"], targets["labeled"])
        if stage == "classifier":
            pairs = pairs[:0]  # the stand-in pair below keeps every parameter in the graph
        run = pairs if pairs.shape[0] else pairs.new_zeros(1, 2)
        terms = decoupled_loss(net(inputs, run), targets, pairs)
        # A stage's frozen term stays in the graph at weight 0: DistributedDataParallel expects a
        # gradient for every parameter; frozen_parameters() drops them before the update.
        weights = {"classification": float(stage != "segmentation"),
                   "figure_ground": float(stage != "classifier")}  # fmt: skip
        return sum(terms[k] * w for k, w in weights.items()), terms
