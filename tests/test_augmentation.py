import pytest
import torch

from robustmnist.augmentation import POLICIES, AugConfig, AugParams, apply, augment, preview, sample


def _batch(device, n=32):
    g = torch.Generator(device=device).manual_seed(123)
    x = torch.zeros(n, 1, 28, 28, device=device)
    x[:, :, 8:20, 12:15] = torch.rand(n, 1, 12, 3, generator=g, device=device) * 0.5 + 0.5
    return x


@pytest.mark.parametrize("policy", list(POLICIES))
def test_same_seed_same_batch(policy, device):
    config = AugConfig.from_policy(policy)
    x = _batch(device)
    a = augment(x, config, torch.Generator(device=device).manual_seed(7))
    b = augment(x, config, torch.Generator(device=device).manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.device == x.device and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1


def test_none_is_bit_identical(device):
    x = _batch(device)
    assert augment(x, AugConfig.from_policy("none"), torch.Generator().manual_seed(0)) is x


def test_thin_removes_ink_and_thick_adds_it(device):
    x = _batch(device)
    g = torch.Generator(device=device).manual_seed(0)
    thin = augment(x, AugConfig.from_policy("thin", p_untouched=0.0), g)
    thick = augment(x, AugConfig.from_policy("thick", p_untouched=0.0), g)
    assert (thin.sum((1, 2, 3)) <= x.sum((1, 2, 3)) + 1e-4).all()
    assert (thick.sum((1, 2, 3)) >= x.sum((1, 2, 3)) - 1e-4).all()


def test_sampled_levels_respect_range_and_p_untouched(device):
    config = AugConfig.from_policy("thickness", delta_min_px=-0.5, delta_max_px=1.5, p_untouched=0.3)
    params = sample(config, 20_000, torch.Generator(device=device).manual_seed(1))
    d = params.stroke_delta_px
    assert d.min() >= -0.5 and d.max() <= 1.5
    assert abs((d == 0).float().mean().item() - 0.3) < 0.02


def test_augment_is_sample_then_apply(device):
    config = AugConfig.from_policy("thickness+affine")
    x = _batch(device)
    params = sample(config, len(x), torch.Generator(device=device).manual_seed(5))
    assert params.affine is not None and params.affine.shape == (len(x), 3, 3)
    replayed = augment(x, config, torch.Generator(device=device).manual_seed(5))
    torch.testing.assert_close(replayed, apply(x, params), rtol=0, atol=0)
    assert not torch.equal(replayed, x)


@pytest.mark.parametrize("i", [0, 13, 31])
def test_each_draw_applies_to_its_own_image(device, i):
    """Image i of a batch gets draw i, whatever else is in the batch."""
    config = AugConfig.from_policy("thickness+affine", p_untouched=0.0)
    x = _batch(device)
    params = sample(config, len(x), torch.Generator(device=device).manual_seed(5))
    assert params.affine is not None
    alone = apply(x[i:i + 1], AugParams(params.stroke_delta_px[i:i + 1], params.affine[i:i + 1]))
    torch.testing.assert_close(alone, apply(x, params)[i:i + 1])


def test_zero_draw_is_the_identity(device):
    x = _batch(device)
    still = AugParams(torch.zeros(len(x), device=device), torch.eye(3, device=device).repeat(len(x), 1, 1))
    torch.testing.assert_close(apply(x, still), x)


def test_preview_grid_shape(device):
    images = (_batch(device, 3) * 255).to(torch.uint8)
    grid, levels = preview(images, AugConfig.from_policy("thickness"), draws=4)
    assert grid.shape == (3, 5, 28, 28) and grid.dtype == torch.uint8
    assert levels.shape == (3, 4)
    torch.testing.assert_close(grid[:, 0], images[:, 0].cpu())
