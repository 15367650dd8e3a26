"""The two networks of the avatar DCGAN: a generator that turns 72 numbers into a 96x96 face, and
a discriminator that tells real faces from generated ones.

A faithful port of ZMpursue/AvatarGenerator (PaddlePaddle 1.7, 2020) to the `paddle.nn` dynamic
graph, itself a descendant of mattya/chainer-DCGAN and of DCGAN (Radford et al. 2015,
https://arxiv.org/abs/1511.06434). Layer by layer as the original, with one deliberate change:
the generator ends in Tanh on images scaled to [-1, 1], as DCGAN does, where the original ended
in ReLU on [0, 1] (README.md, "The five changes to the Chainer original").

This file holds layers only: no file access, no argument parsing.
"""
import contextlib

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

Z_DIM = 72  # length of the noise vector; 72 = 2 * 6 * 6, so it reshapes to a 2x6x6 "image"
Z_SHAPE = (2, 6, 6)
IMAGE_SIZE = 96
IMAGE_CHANNELS = 3

# Paddle's momentum is the weight of the running statistic (running = m * running + (1 - m) * batch).
# The original used 0.5: the running mean follows the last few batches closely, which matters
# because the generator's batches change quickly while it learns.
BN_MOMENTUM = 0.5
LEAKY_SLOPE = 0.2
DROPOUT = 0.4


def batch_norm(channels):
    return nn.BatchNorm2D(channels, momentum=BN_MOMENTUM)


def add_channel_bias(x, bias):
    """x [N, C, H, W] plus one bias per channel. A bias shaped [C, 1, 1] is the same sum as the
    [1, C, 1, 1] that Paddle's own convolution layers add, but Paddle's CPU kernels broadcast it
    several times faster, forward and backward (benchmarks/README.md)."""
    return x + bias.reshape([-1, 1, 1])


def conv2d_as_one_gemm(x, weight, stride, padding):
    """F.conv2d(x, weight, stride, padding), computed as one matrix product over the whole batch.

    Paddle's CPU convolution multiplies one image at a time; on a small feature map each of those
    products is too small to keep the cores busy. Here every image's patches (im2col) become
    columns of one matrix, [C*k*k, N*H'*W'], and the weights multiply them all at once."""
    n, channels, height, width = x.shape
    out_channels, _, kernel, _ = weight.shape
    side = (height + 2 * padding - kernel) // stride + 1
    columns = F.unfold(x, kernel, strides=stride, paddings=padding)  # [N, C*k*k, H'*W']
    columns = columns.transpose([1, 0, 2]).reshape([channels * kernel * kernel, n * side * side])
    y = paddle.matmul(weight.reshape([out_channels, -1]), columns)  # [C', N*H'*W']
    return y.reshape([out_channels, n, side, side]).transpose([1, 0, 2, 3])


def conv2d_transpose_as_one_gemm(x, weight, stride, padding):
    """F.conv2d_transpose(x, weight, stride, padding) as one matrix product over the whole batch,
    for the reason conv2d_as_one_gemm gives: every input pixel's contribution to the output,
    [C'*k*k, N*H*W] in one product, then summed into place by col2im (F.fold)."""
    n, channels, height, width = x.shape
    _, out_channels, kernel, _ = weight.shape
    side = (height - 1) * stride - 2 * padding + kernel
    pixels = x.transpose([1, 0, 2, 3]).reshape([channels, n * height * width])
    columns = paddle.matmul(weight.reshape([channels, -1]), pixels, transpose_x=True)  # [C'*k*k, N*H*W]
    columns = columns.reshape([out_channels * kernel * kernel, n, height * width]).transpose([1, 0, 2])
    return F.fold(columns, [side, side], kernel, strides=stride, paddings=padding)


def training_on_cpu(layer, x):
    """Whether layer is training on x in a CPU tensor, in the dynamic graph (a traced program,
    as paddle.jit builds, keeps Paddle's own kernels)."""
    return layer.training and paddle.in_dynamic_mode() and x.place.is_cpu_place()


class ChannelBiasConv2D(nn.Conv2D):
    """nn.Conv2D whose bias is added by add_channel_bias: the same weights, bias and checkpoint
    names, the same sums. Only what this file's layers use can be asked for (NCHW, square
    kernels, no groups, no dilation), so nothing is silently dropped.

    one_gemm=True: while training on a CPU, compute it with conv2d_as_one_gemm, faster on small
    feature maps (benchmarks/README.md); the same sums, rounded in another order."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, one_gemm=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.one_gemm, self.stride, self.padding = one_gemm, stride, padding

    def forward(self, x):
        if self.one_gemm and training_on_cpu(self, x):
            y = conv2d_as_one_gemm(x, self.weight, self.stride, self.padding)
        else:
            y = F.conv2d(x, self.weight, stride=self._stride, padding=self._padding)
        return add_channel_bias(y, self.bias)


class ChannelBiasConv2DTranspose(nn.Conv2DTranspose):
    """nn.Conv2DTranspose whose bias is added by add_channel_bias, as ChannelBiasConv2D, and
    one_gemm likewise (conv2d_transpose_as_one_gemm)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, one_gemm=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.one_gemm, self.stride, self.padding = one_gemm, stride, padding

    def forward(self, x):
        if self.one_gemm and training_on_cpu(self, x):
            y = conv2d_transpose_as_one_gemm(x, self.weight, self.stride, self.padding)
        else:
            y = F.conv2d_transpose(x, self.weight, stride=self._stride, padding=self._padding)
        return add_channel_bias(y, self.bias)


class RandintDropout(nn.Dropout):
    """nn.Dropout(p) with its mask drawn by paddle.randint: the same operation (while training,
    each value is zeroed with probability p and the rest are scaled by 1 / (1 - p); nothing in
    evaluation), but Paddle's CPU dropout kernel draws its random numbers several times slower
    than randint does (benchmarks/README.md)."""

    RANGE = 2**31 - 1  # randint's values, 0 .. RANGE - 1; p * RANGE of them drop: p to within 1e-9

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = paddle.randint(0, self.RANGE, x.shape, dtype="int32") >= round(self.p * self.RANGE)
        return x * keep.astype(x.dtype) * (1 / (1 - self.p))


class ResidualBlock(nn.Layer):
    """A basic residual block (He et al. 2015): two 3x3 convolutions, plus a 1x1 projection on the
    shortcut because the channel count changes. It stands where DCGAN has its first fully
    connected layer, growing the 2x6x6 noise into 256 feature maps."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = ChannelBiasConv2D(in_channels, out_channels, 3, padding=1)
        self.bn1 = batch_norm(out_channels)
        self.conv2 = ChannelBiasConv2D(out_channels, out_channels, 3, padding=1)
        self.bn2 = batch_norm(out_channels)
        self.shortcut = nn.Sequential(ChannelBiasConv2D(in_channels, out_channels, 1), batch_norm(out_channels))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


def up_block(in_channels, out_channels, one_gemm=False):
    """Double the picture's size: a stride-2 transposed convolution, BatchNorm, ReLU."""
    return nn.Sequential(
        ChannelBiasConv2DTranspose(in_channels, out_channels, 4, stride=2, padding=1, one_gemm=one_gemm),
        batch_norm(out_channels),
        nn.ReLU(),
    )


class Generator(nn.Layer):
    """z [N, 72] in [0, 1) -> image [N, 3, 96, 96] in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.residual = ResidualBlock(Z_SHAPE[0], 256)                     # 256 x 6 x 6
        self.up = nn.Sequential(up_block(256, 256, one_gemm=True),  # 256 x 12 x 12
                                up_block(256, 128), up_block(128, 64))  # 64 x 48 x 48
        self.to_rgb = ChannelBiasConv2DTranspose(64, IMAGE_CHANNELS, 4, stride=2, padding=1)  # 3 x 96 x 96

    def forward(self, z):
        x = paddle.reshape(z, [-1, *Z_SHAPE])
        return paddle.tanh(self.to_rgb(self.up(self.residual(x))))


def down_block(in_channels, out_channels, norm="batch", one_gemm=False):
    """Halve the picture's size: a stride-2 convolution, BatchNorm (norm="batch"), leaky ReLU,
    dropout. norm="spectral" has no BatchNorm and spectrally normalises the convolution instead;
    norm=None has neither."""
    conv = ChannelBiasConv2D(in_channels, out_channels, 4, stride=2, padding=1, one_gemm=one_gemm)
    return nn.Sequential(
        spectrally_normalised(conv) if norm == "spectral" else conv,
        batch_norm(out_channels) if norm == "batch" else nn.Identity(),
        nn.LeakyReLU(LEAKY_SLOPE),
        RandintDropout(DROPOUT),
    )


def spectrally_normalised(layer):
    """layer with its weight divided by its largest singular value before every use (Miyato et al.
    2018, "Spectral Normalization for GANs", https://arxiv.org/abs/1802.05957): the layer can
    stretch no input by more than 1, so D's answer cannot change faster than its input does.
    The singular value is estimated by one power iteration per forward pass while training; its
    vectors (weight_u, weight_v) are saved with the weights, the weight itself as weight_orig."""
    return nn.utils.spectral_norm(layer, n_power_iterations=1)


def minibatch_std(x, group_size=4):
    """x [N, C, H, W] plus one feature map: within each group of up to group_size images, the
    standard deviation of every feature across the group's images, averaged to one number and
    repeated over H x W (Karras et al. 2018, "Progressive Growing of GANs", section 3,
    https://arxiv.org/abs/1710.10196). A batch of near-identical generated faces shows a small
    value there, so D can tell a collapsed G by it, and G is pushed to vary."""
    n, channels, height, width = x.shape
    group = max(size for size in range(1, min(group_size, n) + 1) if n % size == 0)
    grouped = x.reshape([group, n // group, channels, height, width])  # image i is in group i % (n // group)
    std = (grouped.var(axis=0, unbiased=False) + 1e-8).sqrt().mean(axis=[1, 2, 3])  # [N // group]
    feature = std.reshape([1, n // group, 1, 1, 1]).expand([group, n // group, 1, height, width])
    return paddle.concat([x, feature.reshape([n, 1, height, width])], axis=1)


class Discriminator(nn.Layer):
    """image [N, 3, 96, 96] -> logits [N, 2]: index 0 "generated", index 1 "real".

    input_norm=False leaves out the first block's BatchNorm, as DCGAN and the Chainer ancestor
    do: D sees each batch alone (all real or all generated), and a BatchNorm on its input
    normalises away the batch's colour and brightness, so G is never told when those are wrong
    (Radford et al. 2015, section 3: BatchNorm on D's input "resulted in sample oscillation and
    model instability"). The original keeps it.

    norm="spectral" (Train.py --d-norm) replaces every BatchNorm by spectral normalisation of the
    convolutions and the linear layer, with the same layer shapes; input_norm is then moot.
    mbstd=True (Train.py --mbstd) adds minibatch_std's feature map before the linear layer, the one
    addition to the original's layers: 6 x 6 more inputs for each of its two outputs."""

    def __init__(self, input_norm=True, norm="batch", mbstd=False):
        super().__init__()
        self.mbstd = mbstd
        self.features = nn.Sequential(
            down_block(IMAGE_CHANNELS, 64, norm=norm if input_norm or norm != "batch" else None),  # 48 x 48
            down_block(64, 128, norm=norm),  # 24 x 24
            down_block(128, 256, norm=norm, one_gemm=True),  # 12 x 12
            down_block(256, 512, norm=norm, one_gemm=True),  # 6 x 6
        )
        self.classify = nn.Linear((512 + mbstd) * 6 * 6, 2)
        if norm == "spectral":
            spectrally_normalised(self.classify)

    def forward(self, image):
        x = self.features(image)
        if self.mbstd:
            x = minibatch_std(x)
        # reshape, not paddle.flatten: Paddle has no second derivative of flatten, which R1 needs.
        return self.classify(x.reshape([x.shape[0], -1]))


@contextlib.contextmanager
def twice_differentiable(network):
    """Within this block, network's layers compute with Paddle's own convolution kernels instead of
    the one-GEMM form, whose F.unfold Paddle cannot differentiate twice: Train.py's R1 penalty
    differentiates D's gradient."""
    layers = [layer for layer in network.sublayers() if getattr(layer, "one_gemm", False)]
    for layer in layers:
        layer.one_gemm = False
    try:
        yield
    finally:
        for layer in layers:
            layer.one_gemm = True


def init_dcgan_weights(model):
    """DCGAN's initialisation: convolution weights from N(0, 0.02), BatchNorm scales from
    N(1, 0.02), biases zero. Paddle's default (Xavier-like) is used unless this is called."""
    normal = nn.initializer.Normal(0.0, 0.02)
    for layer in model.sublayers():
        if isinstance(layer, (nn.Conv2D, nn.Conv2DTranspose, nn.Linear)):
            normal(getattr(layer, "weight_orig", layer.weight))  # a spectrally normalised layer's own weight
            if layer.bias is not None:
                nn.initializer.Constant(0.0)(layer.bias)
        elif isinstance(layer, nn.BatchNorm2D):
            nn.initializer.Normal(1.0, 0.02)(layer.weight)
            nn.initializer.Constant(0.0)(layer.bias)
