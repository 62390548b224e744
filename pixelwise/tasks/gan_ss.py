"""GAN-SS training: the K+1-class semi-supervised GAN losses, per pixel.

The discriminator's logits l have K+1 channels, channel K being "fake"; p = softmax(l) over all
K+1, lse_K = logsumexp(l[:K]). The losses (Salimans et al. 2016, arXiv:1606.03498, Sec. 5, with
Odena 2016's explicit K+1-th output; written in log-sum-exp form so none under- or overflows):

- labelled real pixels: K-class cross entropy over l[:K] (= -log p(y | x, y <= K)), mean over the
  labelled pixels of the batch (255 = ignore; a batch without any gives 0, not NaN);
- every real pixel, labelled or not: -log(1 - p_fake) = lse(l) - lse_K = softplus(l_K - lse_K);
- every generated pixel: -log p_fake = lse(l) - l_K = softplus(lse_K - l_K);
- D's loss: ``supervised + real + fake`` (Salimans' L_supervised + L_unsupervised, weights 1);
- G's loss (non-saturating, Goodfellow et al. 2014): -log(1 - p_fake) on generated pixels, i.e.
  the generator is pushed to make pixels that D gives any real class. Salimans' feature matching
  would need one named feature layer in every catalogue network; it is not offered.

Each term is a mean over pixels (and images), so its scale does not depend on the image size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.data.base import IGNORE_INDEX
from pixelwise.data.subset import (
    Balanced,
    apply_labeled_subset,
    dict_target_transform,
    image_labels_of,
)
from pixelwise.engine.distributed import unwrap
from pixelwise.engine.precision import Precision
from pixelwise.engine.schedule import build_optimizer
from pixelwise.errors import PixelwiseError
from pixelwise.models.gan_ss import GANSS
from pixelwise.tasks import register_task
from pixelwise.tasks.base import StepResult, Update, finish_update
from pixelwise.tasks.semantic import SemanticTask, class_weights_for


def _split(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(lse over the K class logits, the fake logit), each N x H x W."""
    return logits[:, :-1].logsumexp(dim=1), logits[:, -1]


def supervised_loss(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """K-class cross entropy of the labelled pixels over the first K of the K+1 logits.

    Args:
        logits: N x (K+1) x H x W.
        target: N x H x W class ids in 0..K-1, ``ignore_index`` where unlabelled.
        class_weights: optional K weights (``loss.class_weights``), a weighted mean as in
            :class:`~pixelwise.losses.CrossEntropy`.
    """
    classes = logits[:, :-1]
    if not bool((target != ignore_index).any()):
        return classes.sum() * 0.0  # no labelled pixel in the batch: no signal, and no NaN
    return F.cross_entropy(classes, target, weight=class_weights, ignore_index=ignore_index)


def real_loss(logits: Tensor) -> Tensor:
    """Mean over real pixels of -log(1 - p_fake) = softplus(l_fake - lse_K)."""
    lse_k, fake = _split(logits)
    return F.softplus(fake - lse_k).mean()


def fake_loss(logits: Tensor) -> Tensor:
    """Mean over generated pixels of -log p_fake = softplus(lse_K - l_fake)."""
    lse_k, fake = _split(logits)
    return F.softplus(lse_k - fake).mean()


def generator_loss(logits: Tensor) -> Tensor:
    """Non-saturating generator loss: mean over generated pixels of -log(1 - p_fake)."""
    return real_loss(logits)


# -- the two-player task -----------------------------------------------------------------------


@contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Batch norm normalises with the batch's statistics but leaves its running ones as they were.

    D sees generated batches too; were their statistics averaged into the running ones, the
    evaluation (which uses those) would normalise real images with a real/fake mixture.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


@contextmanager
def _no_weight_gradients(module: nn.Module) -> Iterator[None]:
    """Gradients flow through ``module`` to its input but not into its weights (G's step)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def average_gradients(params: Sequence[nn.Parameter], loss: Tensor) -> Tensor:
    """Average ``params``' gradients over the processes, as DistributedDataParallel would.

    One flat all-reduce of every trainable parameter's gradient (zeros where a process has none,
    so that every process reduces the same vector), of whether each process had one, and of the
    loss; returns the mean loss. A parameter no process gave a gradient keeps none, so the
    optimizer leaves it alone as it would in one process. A process whose loss or gradients are
    not finite makes the mean not finite on every process, so all skip or all step together.
    """
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    loss = loss.detach().reshape(1).float()
    had = torch.tensor([float(p.grad is not None) for p in params], device=loss.device)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [had, loss])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g, present in zip(params, grads, flat[-1 - len(params) : -1].tolist(), strict=True):
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
        p.grad = g if present > 0 else None
    return flat[-1]


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics) on every process, as DDP does before a forward."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


@register_task("gan_ss")
class GANSSTask(SemanticTask):
    """Train GAN-SS's discriminator and generator in turn; evaluate the discriminator's K classes.

    Data: the training split as :class:`~pixelwise.data.subset.SemiSupervised` under
    ``data.labeled_fraction`` / ``data.labeled_list`` (:meth:`train_dataset`): unlabelled images
    come with all-ignore masks, so their pixel labels cannot reach any loss; the conditional (weak)
    variant also reads each image's image-level labels (``targets="dict"``).

    One step (:meth:`train_step`) on a batch of N real images:

    1. G draws N images from fresh N(0, 1) noise (conditioned on the batch's image-level labels in
       the weak variant), mapped into the data's normalised space.
    2. D's update (the run's ``optimizer``, schedule and scaler): supervised + real + fake loss on
       the real batch and, separately, the generated batch (detached from G); the generated batch
       leaves D's batch-norm running statistics untouched.
    3. G's update (its own optimizer, built from the same ``optim`` section and following the
       same schedule factor): the non-saturating loss through the updated D, whose weights get no
       gradient from it.

    Under ``torchrun`` each process takes its shard of the batch and draws its own noise (seeded
    by ``train.seed``, the step and the rank); both players' gradients are averaged over the
    processes before each update (:func:`average_gradients`: the two players' alternating
    updates, three forwards of D a step and D's frozen weights in G's step do not fit DDP's one
    forward, one backward), and rank 0's batch-norm statistics are given to all before each step,
    as DDP does. So every process holds the same weights after every step.

    Terms logged: ``d_supervised``, ``d_real``, ``d_fake`` (D's ``loss`` is their sum) and
    ``g_adversarial``. The generator's optimizer (and AMP scaler) are task state, saved in every
    checkpoint and restored on resume. The evaluation picture gets a row of generated images from
    fixed noise (the same at every evaluation) under the image | truth | prediction grid.
    """

    fixed_forward = True
    bench_refusal = (
        "it trains two players in turn, and pixelwise bench times one network's forward and update"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.cfg
        self.g_optimizer: torch.optim.Optimizer | None = None
        self.class_weights: Tensor | None = None
        self.g_scaler: torch.amp.GradScaler | None = None
        self.conditional = bool(config.model.options.get("conditional", False))
        mean, std = config.data.mean, config.data.std
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    # -- data ----------------------------------------------------------------------------------
    def train_dataset(self, dataset: Any) -> Any:
        """Every training sample, those outside the labelled subset with all-ignore masks, the
        labelled ones repeated so that they make up about half of the stream
        (:class:`~pixelwise.data.subset.Balanced`)."""
        semi = apply_labeled_subset(
            dataset, self.cfg, keep_unlabeled=True, targets="dict" if self.conditional else "mask"
        )
        return Balanced(semi)

    def train_transforms(self) -> Callable:
        transform = super().train_transforms()
        return dict_target_transform(transform) if self.conditional else transform

    def to_data_space(self, generated: Tensor) -> Tensor:
        """G's tanh output t (RGB (t + 1) / 2 in [0, 1]) normalised with ``data.mean``/``std``."""
        mean, std = self._mean.to(generated.device), self._std.to(generated.device)
        return ((generated + 1) / 2 - mean) / std

    def _image_labels(self, targets: Any) -> Tensor | None:
        if not self.conditional:
            return None
        if isinstance(targets, dict):
            return targets["image_labels"].float()
        # Without image-level labels in the batch, only the labelled masks say what is there.
        return torch.stack([image_labels_of(m, self.num_classes) for m in targets])

    # -- training ------------------------------------------------------------------------------
    def setup(
        self, model: nn.Module, device: torch.device, train_set: Any, precision: Precision
    ) -> None:
        """The generator's optimizer (``optim`` as for D); the losses need no module."""
        gan = unwrap(model)
        if not isinstance(gan, GANSS):
            raise PixelwiseError(
                f"The gan_ss task trains a GAN-SS model, got {type(gan).__name__}; set model.name: gan_ss."
            )
        if self.cfg.loss.name != "ce" or self.cfg.loss.aux_weights:
            raise PixelwiseError(
                f"gan_ss trains its discriminator with cross entropy on the labelled pixels; "
                f"set loss.name: ce and loss.aux_weights: [] (got {self.cfg.loss.name!r}, "
                f"{self.cfg.loss.aux_weights})."
            )
        weights = class_weights_for(self.cfg, getattr(train_set, "source", train_set))
        self.class_weights = None if weights is None else weights.to(device)
        self.g_optimizer = build_optimizer(gan.generator.parameters(), self.cfg.optim)
        # G's own scaler: under float16 its loss is scaled like D's (its gradients underflow alike).
        self.g_scaler = precision.grad_scaler()

    def loss(self, net: nn.Module, inputs: Any, targets: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """D's loss on the real batch alone (supervised + real); what a caller without G sees."""
        logits = unwrap(net)(inputs, with_fake=True)
        mask = targets["mask"] if isinstance(targets, dict) else targets
        terms = {
            "d_supervised": supervised_loss(logits, mask, self.class_weights),
            "d_real": real_loss(logits),
        }
        return sum(terms.values()), terms

    def train_step(self, net: nn.Module, inputs: Any, targets: Any, update: Update) -> StepResult:
        """One update of D, then one of G (see the class docstring)."""
        assert self.g_optimizer is not None and self.g_scaler is not None, "setup() first"
        optimizer, scaler, precision = update.optimizer, update.scaler, update.precision
        distributed = isinstance(net, nn.parallel.DistributedDataParallel)
        gan: GANSS = unwrap(net)
        device = inputs.device
        mask = targets["mask"] if isinstance(targets, dict) else targets
        size = tuple(inputs.shape[-2:])
        if distributed:
            broadcast_buffers(gan)
        noise = self._noise(gan, inputs.shape[0], size, device, distributed)

        # D: real pixels (labelled ones also by class) against generated ones.
        with precision.autocast():
            fake = self.to_data_space(gan.generator(noise, size, self._image_labels(targets)))
            real_logits = gan(inputs, with_fake=True)
            with _frozen_running_stats(gan.discriminator):
                fake_logits = gan(fake.detach(), with_fake=True)
            terms = {
                "d_supervised": supervised_loss(real_logits, mask, self.class_weights),
                "d_real": real_loss(real_logits),
                "d_fake": fake_loss(fake_logits),
            }
            d_loss = terms["d_supervised"] + terms["d_real"] + terms["d_fake"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(d_loss).backward()
        named = {k: float(v.detach()) for k, v in terms.items()}
        value = float(d_loss.detach())
        if distributed:
            value = float(average_gradients(list(gan.discriminator.parameters()), d_loss))
        if not finish_update(value, optimizer, scaler, skip_nonfinite=update.skip_nonfinite):
            return StepResult(value, named, False)

        # G: through the updated D, towards pixels D takes for any real class.
        self._follow_schedule(optimizer)
        with _frozen_running_stats(gan.discriminator), _no_weight_gradients(gan.discriminator):
            with precision.autocast():
                g_loss = generator_loss(gan(fake, with_fake=True))
            self.g_optimizer.zero_grad(set_to_none=True)
            self.g_scaler.scale(g_loss).backward()
        named["g_adversarial"] = float(g_loss.detach())
        if distributed:
            named["g_adversarial"] = float(
                average_gradients(list(gan.generator.parameters()), g_loss)
            )
        finish_update(named["g_adversarial"], self.g_optimizer, self.g_scaler)
        return StepResult(value, named, True)

    def _noise(
        self,
        gan: GANSS,
        batch: int,
        size: tuple[int, int],
        device: torch.device,
        distributed: bool,
    ) -> Tensor:
        """G's input for this step. One process draws from torch's RNG (a checkpoint saves it);
        under torchrun each process draws from ``(train.seed, step, rank)``, since every process
        starts from the same seed and would otherwise make the same images."""
        if not distributed:
            return gan.generator.sample_noise(batch, size, device=device)
        rank = dist.get_rank()
        seed = (self.cfg.train.seed * 1_000_003 + self.step) * 4_099 + rank
        rng = torch.Generator().manual_seed(seed)
        return gan.generator.sample_noise(batch, size, generator=rng).to(device)

    def _follow_schedule(self, optimizer: torch.optim.Optimizer) -> None:
        """G's learning rate: its base ``optim.lr`` times D's current schedule factor."""
        group = optimizer.param_groups[0]
        factor = group["lr"] / group.get("initial_lr", group["lr"]) if group["lr"] else 0.0
        for g in self.g_optimizer.param_groups:
            g["lr"] = self.cfg.optim.lr * factor

    def state_dict(self) -> dict[str, Any]:
        assert self.g_optimizer is not None and self.g_scaler is not None, "setup() first"
        return {
            "g_optimizer": self.g_optimizer.state_dict(),
            "g_scaler": self.g_scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.g_optimizer is not None and self.g_scaler is not None, "setup() first"
        if "g_optimizer" not in state:
            raise PixelwiseError(
                "The checkpoint holds no generator optimizer state for gan_ss; resume from a "
                "last.pt written by a gan_ss run."
            )
        self.g_optimizer.load_state_dict(state["g_optimizer"])
        self.g_scaler.load_state_dict(state["g_scaler"])

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def picture(
        self, model: nn.Module, dataset: Any, indices: Sequence[int], device: torch.device
    ) -> np.ndarray:
        """The semantic grid, then a row of images G makes from fixed noise (seeded by
        ``train.seed``, the same at every evaluation, so the row shows the generator learn)."""
        grid = super().picture(model, dataset, indices, device)
        gan: GANSS = unwrap(model)
        transforms = self.eval_transforms()
        shown = [transforms(*dataset[i]) for i in indices[:GENERATED_SHOWN]]
        crop = self.cfg.data.crop_size
        size = tuple(crop) if crop else tuple(shown[0][0].shape[-2:])
        rng = torch.Generator().manual_seed(self.cfg.train.seed)
        noise = gan.generator.sample_noise(len(shown), size, generator=rng).to(device)
        labels = None
        if self.conditional:  # made for the classes of the validation images above
            labels = torch.stack([image_labels_of(t, self.num_classes) for _, t in shown]).to(
                device
            )
        images = (gan.generator(noise, size, labels) + 1) / 2
        row = [(x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy() for x in images]
        return stack_under(grid, image_row(row, "generated (fixed noise)"))


# How many generated images the evaluation picture shows.
GENERATED_SHOWN = 4


def image_row(
    images: Sequence[np.ndarray], title: str, gap: int = 4, min_height: int = 128
) -> np.ndarray:
    """H x W x 3 images side by side (enlarged to ``min_height``), white gaps, a title above."""
    from PIL import Image, ImageDraw

    factor = max(1, -(-min_height // images[0].shape[0]))
    tiles = [a.repeat(factor, axis=0).repeat(factor, axis=1) for a in images]
    spacer = np.full((tiles[0].shape[0], gap, 3), 255, dtype=np.uint8)
    row = np.concatenate([x for t in tiles for x in (t, spacer)][:-1], axis=1)
    strip = Image.new("RGB", (row.shape[1], 16), (255, 255, 255))
    ImageDraw.Draw(strip).text((2, 2), title, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), row], axis=0)


def stack_under(top: np.ndarray, bottom: np.ndarray, gap: int = 4) -> np.ndarray:
    """``bottom`` below ``top`` with a white gap, the narrower padded white on the right."""
    width = max(top.shape[1], bottom.shape[1])
    pad = [
        np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=255)
        for a in (top, bottom)
    ]
    return np.concatenate([pad[0], np.full((gap, width, 3), 255, dtype=np.uint8), pad[1]], axis=0)
