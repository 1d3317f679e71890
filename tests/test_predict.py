import cv2
import numpy as np
import pytest
from PIL import Image

from robustmnist.predict import ImageError, centre_of_mass, expand_inputs, load_gray, mnistify
from robustmnist.synthetic import FONTS, draw_photo, save_jpeg


def _photo_file(tmp_path, digit=3, pen=2.5, **kw):
    rng = np.random.default_rng(digit * 100 + int(pen * 10))
    return save_jpeg(tmp_path / f"d{digit}-{pen}.jpg", draw_photo(digit, pen, rng, **kw))


def _ink_box(image, threshold=10):
    ys, xs = np.nonzero(image > threshold)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


@pytest.mark.parametrize("digit", range(10))
@pytest.mark.parametrize("pen", [1.0, 2.5, 4.5])
@pytest.mark.parametrize("font", FONTS[:2])
def test_preprocessing_is_mnist_like(tmp_path, digit, pen, font):
    pre = mnistify(load_gray(_photo_file(tmp_path, digit, pen, font=font)))
    image = pre.image
    assert image.shape == (28, 28) and image.dtype == np.uint8 and pre.inverted
    cy, cx = centre_of_mass(image)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    h, w = _ink_box(image, threshold=0)
    assert h <= 20 and w <= 20 and max(h, w) >= 18
    assert image.max() >= 240 and np.mean(image == 0) > 0.5  # black background, full ink


def test_grid_and_shadow_do_not_become_ink(tmp_path):
    plain = mnistify(load_gray(_photo_file(tmp_path, 7, 2.5))).image
    gridded = mnistify(load_gray(_photo_file(tmp_path, 7, 2.5, grid=True))).image
    # the same digit (same seed): the grid must not change what the model sees much
    assert np.abs(plain.astype(int) - gridded.astype(int)).mean() < 12


def test_light_ink_on_dark_is_detected(tmp_path):
    pre = mnistify(load_gray(_photo_file(tmp_path, 5, 2.5, light_ink=True)))
    assert not pre.inverted
    cy, cx = centre_of_mass(pre.image)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1


def test_sixteen_bit_alpha_and_animated_inputs(tmp_path):
    photo = draw_photo(2, 2.5, np.random.default_rng(0))
    reference = mnistify(load_gray(save_jpeg(tmp_path / "ref.jpg", photo))).image
    Image.fromarray(photo.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    rgba = np.zeros((*photo.shape, 4), np.uint8)
    rgba[..., 3] = 255 - photo  # ink opaque black, paper transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    frames = [Image.fromarray(photo), Image.fromarray(np.full_like(photo, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(photo).save(tmp_path / "x.webp")
    Image.fromarray(photo).save(tmp_path / "x.tiff")
    Image.fromarray(photo).save(tmp_path / "x.bmp")
    for name in ("deep.png", "alpha.png", "anim.gif", "x.webp", "x.tiff", "x.bmp"):
        image = mnistify(load_gray(tmp_path / name), name=name).image
        assert np.abs(image.astype(int) - reference.astype(int)).mean() < 12, name


def test_huge_image_is_downscaled(tmp_path):
    photo = cv2.resize(draw_photo(4, 2.5, np.random.default_rng(1)), (4000, 4800))
    gray = load_gray(save_jpeg(tmp_path / "huge.jpg", photo))
    assert max(gray.shape) <= 1024
    assert mnistify(gray).image.max() >= 240


def test_bad_inputs(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_gray(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ImageError, match="not a readable image"):
        load_gray(tmp_path / "notes.png")
    good = _photo_file(tmp_path).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 3])
    with pytest.raises(ImageError, match="truncated"):
        load_gray(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="no ink"):
        mnistify(np.full((100, 80), 0.8, np.float32))


def test_normalize_thickness_redraws_strokes(tmp_path):
    from robustmnist.measure import measure_thickness

    gray = load_gray(_photo_file(tmp_path, 8, 4.5))
    thick = mnistify(gray).image
    thinner = mnistify(gray, normalize_thickness_px=2.0).image
    assert measure_thickness(thinner[None])[0] < measure_thickness(thick[None])[0] - 0.8


def test_expand_inputs(tmp_path):
    a = _photo_file(tmp_path, 1)
    b = _photo_file(tmp_path, 2)
    (tmp_path / "notes.txt").write_text("x")
    assert expand_inputs([str(tmp_path)]) == sorted([a, b])
    assert expand_inputs([str(tmp_path / "d1*.jpg")]) == [a]


@pytest.mark.slow
@pytest.mark.realdata
def test_trained_model_reads_clean_synthetic_photos(tmp_path):
    """Mostly correct on medium-pen photos after 2 real epochs (rate in benchmarks/README.md)."""
    import torch

    from robustmnist.checkpoint import Classifier, load_checkpoint
    from robustmnist.config import TrainConfig
    from robustmnist.training import train

    train(TrainConfig(epochs=2, device="cpu"), tmp_path / "run")
    model = Classifier.from_checkpoint(load_checkpoint(tmp_path / "run"))
    rng = np.random.default_rng(11)
    labels = np.arange(60) % 10
    photos = [draw_photo(int(d), 2.5, rng, font=FONTS[i % 3]) for i, d in enumerate(labels)]
    images = np.stack([mnistify(p.astype(np.float32) / 255).image for p in photos])
    predicted = model.log_proba(torch.from_numpy(images).unsqueeze(1)).argmax(1).numpy()
    accuracy = float(np.mean(predicted == labels))
    assert accuracy > 0.6
