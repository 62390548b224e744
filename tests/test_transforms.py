import torch

from pixelwise.data.transforms import (
    JointTransform,
    RandomScale,
    build_eval_transforms,
    build_train_transforms,
)


def test_masks_are_resized_nearest_never_blended():
    image = torch.zeros(3, 10, 10, dtype=torch.uint8)
    mask = torch.zeros(10, 10, dtype=torch.long)
    mask[:, 5:] = 7
    mask[0, 0] = 255
    torch.manual_seed(0)
    t = JointTransform([RandomScale((1.7, 1.7))])
    _, out = t(image, mask)
    assert out.shape == (17, 17)
    assert set(out.unique().tolist()) <= {0, 7, 255}


def test_crop_pads_mask_with_ignore_and_image_with_zero():
    image = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    mask = torch.ones(8, 8, dtype=torch.long)
    t = build_train_transforms(crop_size=(12, 12), hflip=False, mean=(0, 0, 0), std=(1, 1, 1))
    x, y = t(image, mask)
    assert x.shape == (3, 12, 12) and y.shape == (12, 12) and y.dtype == torch.long
    assert (y == 255).sum() == 12 * 12 - 64 and (y == 1).sum() == 64
    assert torch.allclose(x[:, y == 1], torch.tensor(200 / 255))
    assert (x[:, y == 255] == 0).all()


def test_flip_moves_image_and_mask_together():
    image = torch.zeros(3, 4, 6, dtype=torch.uint8)
    image[:, :, 0] = 255
    mask = torch.zeros(4, 6, dtype=torch.long)
    mask[:, 0] = 3
    t = build_train_transforms(hflip=True, mean=(0, 0, 0), std=(1, 1, 1))
    for seed in range(6):
        torch.manual_seed(seed)
        x, y = t(image, mask)
        assert torch.equal(x[0] == 1.0, y == 3)


def test_eval_transform_normalises_only():
    image = torch.full((3, 5, 7), 255, dtype=torch.uint8)
    mask = torch.arange(35).view(5, 7) % 3
    x, y = build_eval_transforms(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(image, mask)
    assert torch.allclose(x, torch.full_like(x, 2.0)) and torch.equal(y, mask)


def test_colour_jitter_leaves_mask_alone():
    image = torch.randint(0, 255, (3, 6, 6), dtype=torch.uint8)
    mask = torch.randint(0, 4, (6, 6))
    t = build_train_transforms(hflip=False, color_jitter=0.5)
    _, y = t(image, mask)
    assert torch.equal(y, mask)
