"""GAN-SS: a segmentation network as the discriminator of a semi-supervised GAN.

Paper: Souly, Spampinato, Shah, "Semi and Weakly Supervised Semantic Segmentation Using Generative
Adversarial Network", ICCV 2017, arXiv:1703.09695.

What the paper fixes (its abstract; docs/models.md): the discriminator labels every
pixel with one of K classes or "fake" (K+1 outputs); a generator supplies fake images; the
discriminator learns from labelled pixels, unlabelled real images and generated images; the weakly
supervised variant gives the generator class-level information. Its architectures, losses and
hyperparameters could not be read from any stored source and there is no official code, so what
follows is our choice, in the K+1-class semi-supervised GAN formulation the paper builds on (Odena,
"Semi-Supervised Learning with Generative Adversarial Networks", arXiv:1606.01583; Salimans et al.,
"Improved Techniques for Training GANs", arXiv:1606.03498), applied per pixel:

- **Discriminator**: any network of the pixelwise catalogue (``discriminator="enet"`` by default,
  the cheapest on a CPU; ``linknet``, ``segnet_basic``, ``unet`` ... by name, with
  ``discriminator_options``) built with K+1 output channels; channel K (the last) is "fake".
  ``model(x)`` returns the first K channels, so evaluation, prediction and comparison see an
  ordinary K-class network; ``model(x, with_fake=True)`` returns all K+1 (what training uses).
- **Generator** (DCGAN-style, Radford et al. arXiv:1511.06434): a spatial noise map of
  ``noise_channels`` (100) channels at 1/16 of the image size, N(0, 1) (spatial GAN, Jetchev et al.
  arXiv:1611.08207, so one generator serves any training size); a 3x3 conv to 8w channels + BN +
  ReLU; three 4x4 stride-2 transposed convs 8w -> 4w -> 2w -> w, each + BN + ReLU; a 4x4 stride-2
  transposed conv w -> 3 with bias and tanh (w = ``generator_width``, 64). The 16x map is cropped to
  the requested H x W. The tanh output t in [-1, 1] is the RGB image (t + 1) / 2 in [0, 1]; the
  training task maps it into the data's normalised space ((v - mean) / std) before D sees it.
  Weights start from N(0, 0.02), BN scale from N(1, 0.02), as in DCGAN.
- **Weakly supervised variant** (``conditional=True``): a K-vector of image-level labels (1 for
  each class present) is broadcast over the noise map and concatenated to it, so the first conv
  takes ``noise_channels + K`` channels.

The losses (:mod:`pixelwise.tasks.gan_ss`) are, per pixel with logits l (K+1) and
lse_K = logsumexp(l[:K]): labelled pixels K-class cross entropy over l[:K]; real pixels
-log(1 - p_fake) = softplus(l_fake - lse_K); generated pixels -log p_fake = softplus(lse_K - l_fake);
generator the non-saturating -log(1 - p_fake) on generated pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError
from pixelwise.models.backbones import WeightsSource
from pixelwise.models.registry import build_model, register_model

__all__ = ["GANSS", "Generator", "gan_ss"]

# The generator doubles its map four times: noise lives at 1/16 of the image.
GENERATOR_STRIDE = 16


class Generator(nn.Module):
    """Noise (and optionally image-level labels) -> a 3 x H x W image in [-1, 1] (tanh).

    Args:
        noise_channels: channels of the N(0, 1) noise map at 1/16 of the image size.
        width: channels of the last hidden layer (w); the layers have 8w, 4w, 2w, w.
        num_classes: K, the length of the label vector when ``conditional``.
        conditional: concatenate the image-level labels to the noise (the weak variant).
    """

    def __init__(
        self, *, noise_channels: int, width: int, num_classes: int, conditional: bool
    ) -> None:
        super().__init__()
        self.noise_channels = noise_channels
        self.num_classes = num_classes
        self.conditional = conditional
        in_channels = noise_channels + (num_classes if conditional else 0)
        widths = [8 * width, 4 * width, 2 * width, width]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, stride=2, padding=1), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        _init_like_dcgan(self)

    def noise_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The noise map's H x W for an image of ``size`` (rounded up; the output is cropped)."""
        return math.ceil(size[0] / GENERATOR_STRIDE), math.ceil(size[1] / GENERATOR_STRIDE)

    def sample_noise(
        self,
        batch: int,
        size: tuple[int, int],
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """N(0, 1) noise of shape ``batch x noise_channels x ceil(H/16) x ceil(W/16)``."""
        h, w = self.noise_size(size)
        return torch.randn(batch, self.noise_channels, h, w, device=device, generator=generator)

    def forward(self, noise: Tensor, size: tuple[int, int], labels: Tensor | None = None) -> Tensor:
        """Images N x 3 x H x W in [-1, 1] from ``noise`` (and ``labels`` N x K when conditional)."""
        if self.conditional:
            if labels is None or labels.shape != (noise.shape[0], self.num_classes):
                got = None if labels is None else tuple(labels.shape)
                raise PixelwiseError(
                    f"The conditional GAN-SS generator needs image-level labels of shape "
                    f"({noise.shape[0]}, {self.num_classes}), got {got}; pass one 0/1 vector per image."
                )
            grid = labels.to(noise.dtype)[:, :, None, None].expand(-1, -1, *noise.shape[-2:])
            noise = torch.cat([noise, grid], dim=1)
        elif labels is not None:
            raise PixelwiseError(
                "This GAN-SS generator is not conditional but was given image-level labels; "
                "build it with conditional=True or pass no labels."
            )
        return self.layers(noise)[..., : size[0], : size[1]]


def _init_like_dcgan(module: nn.Module) -> None:
    """DCGAN's initialisation: conv weights N(0, 0.02); BN scale N(1, 0.02), shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class GANSS(nn.Module):
    """A K+1-output segmentation network (``discriminator``) and its ``generator``.

    ``forward(x)`` gives the K class logits N x K x H x W (the fake channel dropped) in both
    train and eval mode; ``forward(x, with_fake=True)`` all K+1, channel K being "fake".
    """

    def __init__(self, discriminator: nn.Module, generator: Generator, num_classes: int) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.num_classes = num_classes

    @property
    def fake_index(self) -> int:
        return self.num_classes

    def forward(self, x: Tensor, *, with_fake: bool = False) -> Tensor:
        logits = self.discriminator(x)
        return logits if with_fake else logits[:, : self.num_classes]

    def parts(self) -> dict[str, nn.Module]:
        """The two players, for the parameter counts ``pixelwise models`` prints."""
        return {"discriminator": self.discriminator, "generator": self.generator}


def _build_gan_ss(
    *,
    num_classes: int,
    discriminator: str,
    discriminator_options: dict | None,
    noise_channels: int,
    generator_width: int,
    conditional: bool,
    weights_backbone: WeightsSource,
) -> GANSS:
    if discriminator == "gan_ss":
        raise PixelwiseError(
            "GAN-SS cannot be its own discriminator; set model.options.discriminator to a "
            "segmentation network such as enet, linknet, segnet_basic or unet."
        )
    options = dict(discriminator_options or {})
    if weights_backbone is not None:
        options["weights_backbone"] = weights_backbone
    d_net = build_model(discriminator, num_classes + 1, **options)
    g_net = Generator(
        noise_channels=noise_channels,
        width=generator_width,
        num_classes=num_classes,
        conditional=conditional,
    )
    return GANSS(d_net, g_net, num_classes)


@register_model(
    "gan_ss",
    paper="Souly, Spampinato, Shah, Semi and Weakly Supervised Semantic Segmentation Using GAN "
    "(ICCV 2017; arXiv:1703.09695)",
    year=2017,
    input_size=(360, 480),  # CamVid, one of the paper's four datasets
    num_classes=11,
    task="gan_ss",
)
def gan_ss(
    *,
    num_classes: int,
    discriminator: str = "enet",
    discriminator_options: dict | None = None,
    noise_channels: int = 100,
    generator_width: int = 64,
    conditional: bool = False,
    weights_backbone: WeightsSource = None,
) -> GANSS:
    """GAN-SS with a catalogue network as the K+1-class discriminator (see the module docstring).

    Args:
        num_classes: K, the real classes (the discriminator has K+1 outputs).
        discriminator: registered name of the segmentation network used as the discriminator.
        discriminator_options: keyword options of that network (e.g. ``{"base_channels": 16}``).
        noise_channels: channels of the generator's noise map (DCGAN's z has 100).
        generator_width: w, the generator's last hidden width (DCGAN: 64).
        conditional: the weakly supervised variant (generator conditioned on image-level labels).
        weights_backbone: passed to the discriminator's builder (for those that take one).
    """
    return _build_gan_ss(
        num_classes=num_classes,
        discriminator=discriminator,
        discriminator_options=discriminator_options,
        noise_channels=noise_channels,
        generator_width=generator_width,
        conditional=conditional,
        weights_backbone=weights_backbone,
    )
