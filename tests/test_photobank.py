"""The photo mix: the training digits' photographs (photobank.py) and the policy that uses them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robustmnist import photobank
from robustmnist.augmentation import AugConfig, apply, sample
from robustmnist.checkpoint import to_unit
from robustmnist.cli import app
from robustmnist.pen import build_atlas
from robustmnist.photobank import PHOTO_BANDS, PhotoBank, build_bank, load_or_build_bank, pen_fractions

POLICY = "photo+fine-pen+thickness+affine"


def test_pen_fractions_lie_in_their_bands_and_follow_the_pixels(tiny_arrays):
    images = np.unique(tiny_arrays["train"][0][:40], axis=0)  # distinct digits
    fractions = np.stack([pen_fractions(im) for im in images])
    for k, (lo, hi) in enumerate(PHOTO_BANDS):
        assert ((fractions[:, k] >= lo) & (fractions[:, k] < hi)).all()
    assert len(np.unique(fractions[:, 0])) == len(images)  # drawn per digit, not one for all


def test_a_digit_s_photos_do_not_depend_on_where_it_sits(tiny_arrays):
    images = tiny_arrays["train"][0][:6]
    bank, reversed_bank = build_bank(images, workers=1), build_bank(images[::-1].copy(), workers=1)
    assert torch.equal(reversed_bank.images, bank.images.flip(0))
    assert torch.equal(reversed_bank.fractions, bank.fractions.flip(0))


def test_the_bank_photographs_each_digit_thicker_in_the_thicker_band(tiny_arrays):
    images = tiny_arrays["train"][0][:12]
    bank = build_bank(images, workers=1)
    assert bank.images.shape == (12, len(PHOTO_BANDS), 28, 28) and bank.images.dtype == torch.uint8
    ink = bank.images.float().sum((-2, -1))          # (N, K): a wider pen, more ink per digit
    assert (ink[:, 1] > ink[:, 0]).float().mean() >= 0.9
    assert np.allclose(bank.fractions.numpy(), np.stack([pen_fractions(im) for im in images]))


def test_the_bank_is_cached_and_a_corrupt_file_rebuilt(tmp_path, tiny_arrays, monkeypatch):
    images = tiny_arrays["train"][0][:8]
    first, built = load_or_build_bank(images, tmp_path, workers=1)
    assert built
    calls = []
    monkeypatch.setattr(photobank, "build_bank", lambda *a, **k: calls.append(1) or first)
    again, built = load_or_build_bank(images, tmp_path, workers=1)
    assert not built and not calls and torch.equal(again.images, first.images)
    (path,) = tmp_path.glob("photos_8_*.npz")
    path.write_bytes(path.read_bytes()[:-100])
    _, built = load_or_build_bank(images, tmp_path, workers=1)
    assert built and calls == [1]
    # a valid file whose photos fail their checksum (one pixel changed) is rebuilt too
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["photos"][0, 0, 14, 14] ^= 1
    np.savez(path, **arrays)
    _, built = load_or_build_bank(images, tmp_path, workers=1)
    assert built and calls == [1, 1]
    monkeypatch.setattr(photobank, "BANK_VERSION", photobank.BANK_VERSION + 1)  # another bank: another file
    assert photobank.bank_id(images) != path.stem


def test_photo_rows_take_no_pen_nor_stroke_change_and_old_draws_replay():
    config = AugConfig.from_policy(POLICY, delta_min_px=-2.0, delta_max_px=4.0, pen_refit=0.8)
    old = AugConfig.from_policy("fine-pen+thickness+affine", delta_min_px=-2.0, delta_max_px=4.0,
                                pen_refit=0.8)
    n = 4000
    new_p = sample(config, n, torch.Generator().manual_seed(3))
    old_p = sample(old, n, torch.Generator().manual_seed(3))
    shot = new_p.photo >= 0
    assert abs(shot.float().mean().item() - config.p_photo) < 0.03
    assert set(new_p.photo[shot].tolist()) == set(range(len(PHOTO_BANDS)))
    assert not (new_p.pen_width_px[shot] > 0).any() and not (new_p.stroke_delta_px[shot] != 0).any()
    assert not new_p.refit[shot].any()
    # the photo draws come after the older ones: every other row and every affine is as before
    assert torch.equal(new_p.affine, old_p.affine)
    assert torch.equal(new_p.pen_width_px[~shot], old_p.pen_width_px[~shot])
    assert torch.equal(new_p.stroke_delta_px[~shot], old_p.stroke_delta_px[~shot])
    assert old_p.photo is None


def test_apply_puts_each_chosen_digit_s_photo_of_its_band_in_its_row(tiny_arrays):
    images = torch.from_numpy(tiny_arrays["train"][0][:32]).unsqueeze(1)
    bank = build_bank(images.numpy(), workers=1)
    config = AugConfig(p_photo=0.5)  # photos only: every other row is untouched
    params = sample(config, 32, torch.Generator().manual_seed(0))
    x = to_unit(images)
    out = apply(x, params, photos=bank)
    shot = torch.nonzero(params.photo >= 0).flatten().tolist()
    assert 0 < len(shot) < 32
    for i in range(32):
        band = int(params.photo[i])
        want = to_unit(bank.images[i:i + 1, band:band + 1]) if i in shot else x[i:i + 1]
        assert torch.equal(out[i:i + 1].squeeze(1), want.reshape(1, 28, 28)), i
    assert torch.equal(x, to_unit(images))  # the caller's batch is not written to
    with pytest.raises(ValueError, match="PhotoBank rows"):
        apply(x, params)
    with pytest.raises(ValueError, match="PhotoBank rows"):
        apply(x, params, photos=PhotoBank(bank.images[:4], bank.fractions[:4]))
    both = dataclasses.replace(params, stroke_delta_px=torch.where(params.photo >= 0, 1.0, 0.0))
    with pytest.raises(ValueError, match="cannot also be redrawn"):
        apply(x, both, photos=bank)


def test_the_whole_policy_leaves_a_photo_row_its_photo(tiny_arrays):
    # no pen, no re-fit, no full-ink step, no stroke change on a photo row (the affine off)
    images = torch.from_numpy(tiny_arrays["train"][0][:48]).unsqueeze(1)
    config = AugConfig.from_policy(POLICY, affine=False, delta_min_px=-2.0, delta_max_px=4.0,
                                   pen_refit=0.8)
    params = sample(config, 48, torch.Generator().manual_seed(2))
    bank = build_bank(images.numpy(), workers=1)
    out = apply(to_unit(images), params, build_atlas(images.numpy(), workers=1), photos=bank)
    shot = torch.nonzero(params.photo >= 0).flatten()
    assert len(shot) >= 8 and int((params.pen_width_px > 0).sum()) >= 8
    for i in shot.tolist():
        band = int(params.photo[i])
        assert torch.equal(out[i, 0], bank.images[i, band].float() / 255.0), i


def test_train_with_photos_records_the_bank_and_refuses_another_on_resume(tmp_path, tiny_data_dir,
                                                                         monkeypatch):
    runner = CliRunner()
    base = ["train", "--aug", POLICY, "--batch-size", "128", "--device", "cpu",
            "--out", str(tmp_path / "run"), "-q", "--threads", "2"]
    result = runner.invoke(app, [*base, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    recorded = ckpt["meta"]["photo_bank"]
    assert recorded.startswith("photos_600_") and (tiny_data_dir / "photos" / f"{recorded}.npz").is_file()
    assert ckpt["meta"]["pen_atlas"].startswith("atlas_600_")
    ckpt["config"]["epochs"], ckpt["complete"] = 2, False
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    monkeypatch.setattr(photobank, "BANK_VERSION", photobank.BANK_VERSION + 1)
    refused = runner.invoke(app, [*base, "--epochs", "2", "--resume"])
    assert refused.exit_code != 0 and recorded in refused.output and "--force" in refused.output
    assert "training photos" in refused.output


def test_the_preview_title_states_the_photo_share(tiny_arrays):
    from robustmnist.plots import preview_figure

    images = torch.from_numpy(tiny_arrays["train"][0][:2]).unsqueeze(1)
    fig, _ = preview_figure(images, AugConfig.from_policy(POLICY, p_photo=0.3), draws=1, seed=0)
    lines = fig._suptitle.get_text().split("\n")  # wrapped to the grid's width (2 columns)
    width_chars = int(fig.get_figwidth() * 12)
    assert len(lines) > 2 and all(len(line) <= width_chars for line in lines)
    title = " ".join(lines)
    assert "photos, pen 0.1-0.3 of the height (p 0.3)" in title and "(p 0.7 of the rest)" in title
    fig, _ = preview_figure(images, AugConfig.from_policy("fine-pen+thickness+affine"), draws=1, seed=0)
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "photos" not in title and "(p 0.7)" in title
