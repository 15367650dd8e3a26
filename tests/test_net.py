"""The two networks match the brief layer by layer (../shared/REFERENCE.md section 1)."""
import numpy as np
import paddle
import pytest

from Net import (
    IMAGE_SIZE,
    Z_DIM,
    ChannelBiasConv2D,
    ChannelBiasConv2DTranspose,
    Discriminator,
    Generator,
    RandintDropout,
    ResidualBlock,
    init_dcgan_weights,
)


def count(layer, trainable=True):
    return sum(int(np.prod(p.shape)) for p in layer.parameters() if (not p.stop_gradient) == trainable)


def test_brief_numbers_are_named_once():
    assert Z_DIM == 72 and IMAGE_SIZE == 96


def test_generator_turns_72_uniform_numbers_into_96x96_rgb_in_tanh_range():
    generator = Generator()
    images = generator(paddle.rand([3, Z_DIM]))
    assert images.shape == [3, 3, 96, 96]
    assert float(images.abs().max()) <= 1.0
    assert not any(isinstance(layer, paddle.nn.Linear) for layer in generator.sublayers())


def test_discriminator_gives_two_logits_per_image():
    assert Discriminator()(paddle.rand([3, 3, 96, 96]) * 2 - 1).shape == [3, 2]


def test_parameter_counts_are_pinned():
    # trainable weights; BatchNorm running statistics (Paddle keeps them as parameters) apart
    assert count(Generator()) == 2_305_603
    assert count(Discriminator()) == 2_795_330
    assert count(Generator(), trainable=False) == 2 * (256 + 256 + 256 + 256 + 128 + 64)
    assert count(Discriminator(), trainable=False) == 2 * (64 + 128 + 256 + 512)


def test_every_batch_norm_has_momentum_one_half():
    norms = [layer for net in (Generator(), Discriminator()) for layer in net.sublayers()
             if isinstance(layer, paddle.nn.BatchNorm2D)]
    assert len(norms) == 6 + 4
    assert all(norm._momentum == 0.5 for norm in norms)


def test_discriminator_blocks_are_conv_bn_leaky_relu_dropout():
    discriminator = Discriminator()
    blocks = list(discriminator.features.children())
    assert [block[0]._out_channels for block in blocks] == [64, 128, 256, 512]
    for conv, norm, leaky, dropout in blocks:
        assert conv._kernel_size == [4, 4] and conv._stride == [2, 2] and conv._padding == 1
        assert isinstance(norm, paddle.nn.BatchNorm2D)
        assert isinstance(leaky, paddle.nn.LeakyReLU) and leaky._negative_slope == 0.2
        assert isinstance(dropout, paddle.nn.Dropout) and dropout.p == 0.4
    assert discriminator.classify.weight.shape == [512 * 6 * 6, 2]


def test_generator_upsamples_6_12_24_48_96():
    generator = Generator()
    generator.eval()
    x = generator.residual(paddle.rand([1, 2, 6, 6]))
    sizes = [x.shape]
    for block in generator.up:
        x = block(x)
        sizes.append(x.shape)
    sizes.append(generator.to_rgb(x).shape)
    assert sizes == [[1, 256, 6, 6], [1, 256, 12, 12], [1, 128, 24, 24], [1, 64, 48, 48], [1, 3, 96, 96]]


def test_residual_block_adds_a_projected_shortcut_before_the_last_relu():
    block = ResidualBlock(2, 256)
    block.eval()
    conv, norm = block.shortcut[0], block.shortcut[1]
    assert conv._kernel_size == [1, 1] and conv._in_channels == 2 and conv._out_channels == 256
    x = paddle.rand([2, 2, 6, 6])
    main = block.bn2(block.conv2(paddle.nn.functional.relu(block.bn1(block.conv1(x)))))
    expected = paddle.nn.functional.relu(main + norm(conv(x)))
    np.testing.assert_allclose(block(x).numpy(), expected.numpy(), atol=1e-6)


def test_generator_reads_z_as_a_2x6x6_picture():
    generator = Generator()
    generator.eval()
    z = paddle.rand([2, Z_DIM])
    by_hand = paddle.tanh(generator.to_rgb(generator.up(generator.residual(z.reshape([2, 2, 6, 6])))))
    np.testing.assert_allclose(generator(z).numpy(), by_hand.numpy(), atol=1e-6)


def test_dropout_is_active_in_training_and_off_in_evaluation():
    discriminator = Discriminator()
    images = paddle.rand([4, 3, 96, 96])
    discriminator.eval()
    np.testing.assert_allclose(discriminator(images).numpy(), discriminator(images).numpy())
    discriminator.train()
    assert not np.allclose(discriminator(images).numpy(), discriminator(images).numpy())


@pytest.mark.parametrize("ours, paddles", [(ChannelBiasConv2D, paddle.nn.Conv2D),
                                           (ChannelBiasConv2DTranspose, paddle.nn.Conv2DTranspose)])
def test_the_faster_convolutions_compute_what_paddles_own_layers_do(ours, paddles):
    fast, reference = ours(8, 16, 4, stride=2, padding=1), paddles(8, 16, 4, stride=2, padding=1)
    fast.set_state_dict(reference.state_dict())  # same parameter names, so checkpoints load as before
    x = paddle.randn([3, 8, 12, 12])
    outputs, bias_gradients = [], []
    for layer in (fast, reference):
        y = layer(x)
        (y * y).sum().backward()
        outputs.append(y.numpy())
        bias_gradients.append(layer.bias.grad.numpy())
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
    np.testing.assert_allclose(bias_gradients[0], bias_gradients[1], rtol=1e-4)


def test_dropout_zeroes_a_fraction_p_and_rescales_the_rest():
    dropout = RandintDropout(0.4)
    x = paddle.ones([1000, 1000])
    x.stop_gradient = False
    paddle.seed(3)
    y = dropout(x)
    kept = y.numpy() > 0
    assert kept.mean() == pytest.approx(0.6, abs=0.002)
    np.testing.assert_allclose(y.numpy()[kept], 1 / 0.6, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), y.numpy(), rtol=1e-6)  # the gradient goes where the values went
    paddle.seed(3)
    np.testing.assert_array_equal(dropout(x).numpy(), y.numpy())  # paddle.seed decides the mask
    dropout.eval()
    np.testing.assert_array_equal(dropout(x).numpy(), x.numpy())


def test_dcgan_initialisation_draws_weights_with_spread_0_02():
    generator = Generator()
    init_dcgan_weights(generator)
    weights = generator.residual.conv2.weight.numpy()
    assert weights.std() == pytest.approx(0.02, rel=0.05)
    assert np.all(generator.residual.conv2.bias.numpy() == 0)


def test_the_discriminator_can_leave_out_its_input_batch_norm_as_dcgan_does():
    plain = Discriminator(input_norm=False)
    assert isinstance(plain.features[0][1], paddle.nn.Identity)
    assert count(plain) == count(Discriminator()) - 2 * 64
    assert plain(paddle.rand([2, 3, 96, 96])).shape == [2, 2]


@pytest.mark.parametrize("layer", [ChannelBiasConv2D, ChannelBiasConv2DTranspose])
def test_the_faster_convolutions_refuse_what_they_do_not_compute(layer):
    for unsupported in ({"groups": 2}, {"dilation": 2}, {"data_format": "NHWC"}):
        with pytest.raises(TypeError):
            layer(8, 16, 3, **unsupported)


@pytest.mark.parametrize("ours, paddles, side", [(ChannelBiasConv2D, paddle.nn.Conv2D, 12),
                                                 (ChannelBiasConv2DTranspose, paddle.nn.Conv2DTranspose, 6)])
def test_one_gemm_over_the_batch_computes_what_paddles_own_layers_do_forward_and_backward(ours, paddles, side):
    fast = ours(16, 24, 4, stride=2, padding=1, one_gemm=True)
    reference = paddles(16, 24, 4, stride=2, padding=1)
    fast.set_state_dict(reference.state_dict())
    results = []
    for layer in (fast, reference):
        x = paddle.randn([5, 16, side, side]) if not results else paddle.to_tensor(results[0][0])
        x.stop_gradient = False
        y = layer(x)
        (y * y).sum().backward()
        results.append([x.numpy(), y.numpy(), x.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()])
    for mine, paddles_own in zip(results[0][1:], results[1][1:]):
        np.testing.assert_allclose(mine, paddles_own, rtol=1e-5, atol=1e-5 * np.abs(paddles_own).max())


def test_the_networks_use_one_gemm_on_their_small_feature_maps_only():
    chosen = {(type(layer).__name__, tuple(layer.weight.shape[:2])) for network in (Generator(), Discriminator())
              for layer in network.sublayers() if getattr(layer, "one_gemm", False)}
    assert chosen == {("ChannelBiasConv2D", (256, 128)), ("ChannelBiasConv2D", (512, 256)),
                      ("ChannelBiasConv2DTranspose", (256, 256))}
