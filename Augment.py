"""DiffAugment: random, differentiable changes to every batch the discriminator sees, written with
Paddle ops (Train.py --augment).

Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"
(https://arxiv.org/abs/2006.10738), after the authors' DiffAugment_pytorch.py. On a few thousand
faces D soon memorises the real ones, and then its verdicts stop teaching G anything. Augmenting
the real faces alone would teach G to draw augmented faces; DiffAugment augments the real and the
generated batches alike, in D's updates and in G's, and every operation passes gradients, so G
learns through the augmentation what D would say of its unaugmented faces.

Images are [N, 3, H, W] in [-1, 1], the range the original's constants were chosen for. Every
random number comes from Paddle's generator, which Train.py seeds from (seed, rank, step), so a
resumed run draws the same augmentations as one that never stopped.
"""
import contextlib

import paddle
import paddle.nn.functional as F

NONE = "none"
_by_matrices = False  # translation's form: see twice_differentiable


def brightness(x):
    """Add one number from U[-0.5, 0.5) to every pixel of each image."""
    return x + (_uniform(x) - 0.5)


def saturation(x):
    """Scale each pixel's colour around its grey (the mean of its three channels) by one factor
    from U[0, 2) per image: 0 turns the image grey, 1 keeps it."""
    grey = x.mean(axis=1, keepdim=True)
    return (x - grey) * (_uniform(x) * 2) + grey


def contrast(x):
    """Scale each image around its mean value by one factor from U[0.5, 1.5) per image."""
    mean = x.mean(axis=[1, 2, 3], keepdim=True)
    return (x - mean) * (_uniform(x) + 0.5) + mean


def translation(x, ratio=1 / 8):
    """Shift each image by a whole number of pixels, up to ratio of its size in each direction
    (12 of 96), filling what is uncovered with zeros (mid grey on [-1, 1], as in the original)."""
    count, channels, height, width = x.shape
    padded = F.pad(x, [1, 1, 1, 1])  # index 0 and size + 1 of each side are the zeros a shift uncovers
    rows = _shifted_indices(count, height, int(height * ratio + 0.5)).reshape([count, 1, height, 1])
    cols = _shifted_indices(count, width, int(width * ratio + 0.5)).reshape([count, 1, 1, width])
    if _by_matrices:  # row i of an image takes row rows[i] of padded: a one-hot matrix product
        x = F.one_hot(rows.reshape([count, 1, height]), height + 2) @ padded
        return x @ F.one_hot(cols.reshape([count, 1, width]), width + 2).transpose([0, 1, 3, 2])
    x = paddle.take_along_axis(padded, rows.expand([count, channels, height, width + 2]), axis=2)
    return paddle.take_along_axis(x, cols.expand([count, channels, height, width]), axis=3)


@contextlib.contextmanager
def twice_differentiable():
    """Within this block translation shifts by products with one-hot matrices instead of
    take_along_axis, whose gradient Paddle 2.6 cannot differentiate again (Paddle 3 can): the R1
    penalty differentiates D's gradient through DiffAugment. Both forms give the same pixels, bit
    for bit (each output pixel is one input pixel times 1 plus zeros); the products cost more, so
    only the penalty's pass takes them."""
    global _by_matrices
    _by_matrices = True
    try:
        yield
    finally:
        _by_matrices = False


def cutout(x, ratio=1 / 2):
    """Set a square of ratio of the image's side (48 of 96) to zero (mid grey) in each image,
    centred anywhere on the image, so part of it may fall outside."""
    count, _, height, width = x.shape
    rows = _square_side(count, height, int(height * ratio + 0.5)).reshape([count, 1, height, 1])
    cols = _square_side(count, width, int(width * ratio + 0.5)).reshape([count, 1, 1, width])
    return x * (1 - paddle.logical_and(rows, cols).astype(x.dtype))


# color first, then translation, then cutout: the order of the original's policy 'color,translation,cutout'
POLICIES = {"color": (brightness, saturation, contrast), "translation": (translation,), "cutout": (cutout,)}


def parse_policy(text):
    """A policy as Train.py --augment takes it ("none", or names of POLICIES joined by commas) ->
    the one spelling state.json keeps (POLICIES' order, each name once). Raises ValueError for
    anything else."""
    names = {name.strip() for name in text.split(",")}
    if names == {NONE}:
        return NONE
    if not names <= set(POLICIES):
        raise ValueError(f"{text!r} is not {NONE} or a comma-separated list of {', '.join(POLICIES)}")
    return ",".join(name for name in POLICIES if name in names)


def diff_augment(x, policy):
    """x passed through every transform of policy (as parse_policy returns it); x itself for "none"."""
    if policy in (None, NONE):
        return x
    for name in policy.split(","):
        for transform in POLICIES[name]:
            x = transform(x)
    return x


def _uniform(x):
    """One number from U[0, 1) per image of x, shaped to broadcast over it, in x's dtype."""
    return paddle.rand([x.shape[0], 1, 1, 1]).astype(x.dtype)


def _shifted_indices(count, size, most):
    """For each of count images, the indices into a side padded by one zero at each end that shift
    it by one whole number from -most to most; indices past either end land on the zeros."""
    shift = paddle.randint(-most, most + 1, [count, 1])
    return paddle.clip(paddle.arange(size).reshape([1, size]) + shift + 1, 0, size + 1)


def _square_side(count, size, side):
    """For each of count images, which of size positions a random stretch of side positions covers,
    its centre anywhere from 0 to size (as the original draws it), as booleans [count, size]."""
    start = paddle.randint(0, size + 1 - side % 2, [count, 1]) - side // 2
    positions = paddle.arange(size).reshape([1, size])
    return paddle.logical_and(positions >= start, positions < start + side)
