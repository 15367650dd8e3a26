"""Augment.py: each DiffAugment transform does what the paper's does, on images in [-1, 1], keeps
the batch's shape, passes gradients, and repeats under the same paddle.seed."""
import Utils  # noqa: F401  sets up the CPU for Paddle, so it comes first

import numpy as np
import paddle
import pytest

import Augment

TRANSFORMS = [Augment.brightness, Augment.saturation, Augment.contrast, Augment.translation, Augment.cutout]
IMAGES = 64


def faces(seed=0):
    """A batch of random pictures in [-1, 1], none of whose values is 0."""
    paddle.seed(seed)
    images = paddle.rand([IMAGES, 3, 96, 96]) * 1.8 - 0.9
    return images + paddle.sign(images) * 0.1


def transformed(transform, x, seed=1):
    paddle.seed(seed)
    return transform(x).numpy()


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.__name__)
def test_every_transform_keeps_the_shape_and_type_of_the_batch(transform):
    x = faces()
    y = transform(x)
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.__name__)
def test_every_transform_passes_gradients_to_its_input(transform):
    x = faces()
    x.stop_gradient = False
    weights = paddle.rand(x.shape)
    paddle.seed(1)
    (transform(x) * weights).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0.1 * x.size


def test_cutout_passes_gradients_everywhere_but_in_its_square():
    x = faces()
    x.stop_gradient = False
    paddle.seed(1)
    y = Augment.cutout(x)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), (y.numpy() != 0).astype(np.float32))


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.__name__)
def test_every_transform_repeats_under_the_same_paddle_seed_and_not_under_another(transform):
    x = faces()
    np.testing.assert_array_equal(transformed(transform, x, seed=1), transformed(transform, x, seed=1))
    assert not np.array_equal(transformed(transform, x, seed=1), transformed(transform, x, seed=2))


def test_brightness_adds_one_number_from_minus_half_to_half_per_image():
    x = faces()
    added = transformed(Augment.brightness, x) - x.numpy()
    per_image = added[:, :1, :1, :1]
    np.testing.assert_allclose(added, np.broadcast_to(per_image, added.shape), atol=1e-6)
    assert -0.5 <= per_image.min() < -0.3 and 0.3 < per_image.max() < 0.5


def scale_factor(y, x, centre):
    """Per image, the least-squares factor f of y - centre = f * (x - centre)."""
    x, y = x - centre, y - centre
    return (x * y).sum(axis=(1, 2, 3)) / (x * x).sum(axis=(1, 2, 3))


def test_saturation_keeps_each_pixels_grey_and_scales_its_colour_by_0_to_2():
    x = faces().numpy()
    y = transformed(Augment.saturation, paddle.to_tensor(x))
    grey = x.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(y.mean(axis=1, keepdims=True), grey, atol=1e-5)
    factor = scale_factor(y, x, grey)
    np.testing.assert_allclose(y - grey, (x - grey) * factor[:, None, None, None], atol=1e-4)
    assert 0 <= factor.min() < 0.4 and 1.6 < factor.max() < 2


def test_contrast_keeps_each_images_mean_and_scales_around_it_by_half_to_one_and_a_half():
    x = faces().numpy()
    y = transformed(Augment.contrast, paddle.to_tensor(x))
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3), keepdims=True), mean, atol=1e-5)
    factor = scale_factor(y, x, mean)
    np.testing.assert_allclose(y - mean, (x - mean) * factor[:, None, None, None], atol=1e-4)
    assert 0.5 <= factor.min() < 0.7 and 1.3 < factor.max() < 1.5


def shift_of(image, source):
    """The (rows, columns) by which image is source moved, read from its first non-zero pixel;
    source's pixels are all different."""
    row, col = np.argwhere(image[0] != 0)[0]
    from_row, from_col = np.argwhere(source[0] == image[0, row, col])[0]
    return from_row - row, from_col - col


def shifted(source, rows, cols):
    """source [C, H, W] with pixel (i, j) taken from (i + rows, j + cols), zero where that is outside."""
    _, height, width = source.shape
    moved = np.zeros_like(source)
    moved[:, max(0, -rows):height - max(0, rows), max(0, -cols):width - max(0, cols)] = \
        source[:, max(0, rows):height + min(0, rows), max(0, cols):width + min(0, cols)]
    return moved


def test_translation_moves_each_image_whole_by_up_to_12_pixels_and_fills_with_zeros():
    x = np.broadcast_to(np.arange(1, 3 * 96 * 96 + 1, dtype=np.float32).reshape(3, 96, 96) / 3e4,
                        (IMAGES, 3, 96, 96)).copy()  # every pixel different, none 0
    y = transformed(Augment.translation, paddle.to_tensor(x))
    shifts = np.array([shift_of(image, source) for image, source in zip(y, x)])
    for image, source, (rows, cols) in zip(y, x, shifts):
        np.testing.assert_array_equal(image, shifted(source, rows, cols))
    assert np.abs(shifts).max() == 12 and shifts.min() < 0 < shifts.max()


def test_translation_for_a_second_derivative_moves_the_same_pixels_and_differentiates_twice():
    x = faces()
    with Augment.twice_differentiable():
        by_matrices = transformed(Augment.translation, x)
    assert np.array_equal(by_matrices, transformed(Augment.translation, x))  # bit for bit
    # R1's pattern: the gradient of a function of the translated images, differentiated again.
    x.stop_gradient = False
    with Augment.twice_differentiable():
        paddle.seed(1)
        gradient, = paddle.grad((Augment.translation(x) ** 3).sum(), x, create_graph=True)
    second, = paddle.grad(gradient.sum(), x)
    paddle.seed(1)
    kept, = paddle.grad(Augment.translation(x).sum(), x)  # 1 where a pixel stays in the picture, else 0
    assert 0.5 < kept.numpy().mean() < 1
    assert np.allclose(second.numpy(), 6 * x.numpy() * kept.numpy(), atol=1e-5)


def test_cutout_zeroes_one_square_of_up_to_48_pixels_a_side_and_keeps_the_rest():
    x = faces().numpy()
    y = transformed(Augment.cutout, paddle.to_tensor(x))
    sides = []
    for image, source in zip(y, x):
        rows, cols = np.nonzero((image == 0).all(axis=0))
        square = np.zeros((96, 96), bool)
        square[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        np.testing.assert_array_equal(image, source * ~square)  # one rectangle, the rest untouched
        sides.append((rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()))
    assert np.max(sides) == 48 and (48, 48) in sides and np.min(sides) < 48  # some reach past an edge


def test_a_policy_applies_its_transforms_in_the_papers_order_and_none_is_the_batch_itself():
    x = faces()
    assert Augment.diff_augment(x, "none") is x
    expected = transformed(lambda images: Augment.cutout(Augment.contrast(Augment.saturation(
        Augment.brightness(images)))), x)
    np.testing.assert_array_equal(transformed(lambda images: Augment.diff_augment(images, "color,cutout"), x),
                                  expected)


@pytest.mark.parametrize("text, policy", [("none", "none"), ("cutout,color", "color,cutout"), ("color", "color"),
                                          (" translation , color,translation", "color,translation"),
                                          ("color,translation,cutout", "color,translation,cutout")])
def test_a_policy_is_kept_in_one_spelling(text, policy):
    assert Augment.parse_policy(text) == policy


@pytest.mark.parametrize("text", ["colour", "none,color", "", "color,", "all"])
def test_anything_but_none_or_known_transforms_is_refused(text):
    with pytest.raises(ValueError, match="is not none or a comma-separated list of color, translation, cutout"):
        Augment.parse_policy(text)
