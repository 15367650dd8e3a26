"""Train.py's diversity flags: --loss hinge, --d-norm spectral, --r1 with --r1-every, --d-lr,
--mbstd and --mode-seeking, each a recorded hyper-parameter that resumes exactly and is off under
--original; --fresh-d and a new form of D start D afresh when continuing, except --mbstd turned on,
which D grows into; r_t, D's overfitting signal, in state.json."""
import json
import subprocess

import numpy as np
import paddle
import paddle.nn as nn
import pytest
from safetensors.numpy import load_file

import Recipe
import Train
from Checkpoint import RunState, grown_optimizer_state, load_weights, optimizer_state, save_weights
from Files import UserError
from Net import Discriminator, Generator, init_dcgan_weights, minibatch_std, twice_differentiable
from test_train import saved_state, train_args

EVERY_FLAG = ("--loss", "hinge", "--d-norm", "spectral", "--r1", "0.5", "--r1-every", "2", "--d-lr", "3e-4",
              "--mbstd", "--flip", "--mode-seeking", "1")


def count(network):
    return sum(int(np.prod(p.shape)) for p in network.parameters() if not p.stop_gradient)


# ------------------------------------------------------------------------------------- the losses

def test_hinge_losses_on_known_logits():
    logits = paddle.to_tensor([[0.0, 2.0], [1.0, 0.5]])  # realness (real minus generated logit): 2 and -0.5
    assert float(Recipe.d_loss(logits, Recipe.REAL, "hinge")) == pytest.approx((0 + 1.5) / 2)
    assert float(Recipe.d_loss(logits, Recipe.FAKE, "hinge")) == pytest.approx((3 + 0.5) / 2)
    assert float(Recipe.g_loss(logits, "hinge")) == pytest.approx(-(2 - 0.5) / 2)


def test_bce_is_the_originals_cross_entropy_a_softplus_of_the_realness():
    logits = paddle.to_tensor([[0.0, 2.0], [1.0, 0.5]])
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    assert float(Recipe.d_loss(logits, Recipe.REAL, "bce")) == pytest.approx(np.mean(softplus(-np.array([2, -0.5]))))
    assert float(Recipe.d_loss(logits, Recipe.FAKE, "bce")) == pytest.approx(np.mean(softplus(np.array([2, -0.5]))))
    labels = paddle.full([2, 1], Recipe.REAL, dtype="int64")  # G's faces labelled "real", as the original
    cross_entropy = float(paddle.nn.functional.cross_entropy(logits, labels))
    assert float(Recipe.g_loss(logits, "bce")) == pytest.approx(cross_entropy)


def test_the_loss_curve_names_the_loss_or_its_changes():
    assert Recipe.loss_axis_name("bce") == "softmax cross entropy"
    assert Recipe.loss_axis_name("hinge", [{"step": 5, "ema": 0.998}]) == "hinge loss"
    changes = [{"step": 5, "ema": 0.998}, {"step": 40, "loss": "hinge"}, {"step": 90, "loss": "bce"}]
    assert Recipe.loss_axis_name("bce", changes) == "loss (--loss hinge from step 40; --loss bce from step 90)"


# ------------------------------------------------------------------------------------ D's forms

@pytest.mark.slow
def test_spectral_normalisation_brings_each_layers_largest_singular_value_to_one():
    paddle.seed(0)
    D = Discriminator(norm="spectral")
    init_dcgan_weights(D)
    normalised = [layer for layer in D.sublayers() if hasattr(layer, "weight_orig")]
    assert len(normalised) == 5  # four convolutions and the linear layer
    assert not [layer for layer in D.sublayers() if isinstance(layer, nn.BatchNorm2D)]
    before = [np.linalg.norm(layer.weight_orig.numpy().reshape(layer.weight_orig.shape[0], -1), 2)
              for layer in normalised]
    assert all(abs(sigma - 1) > 0.1 for sigma in before)
    D.train()
    with paddle.no_grad():
        for _ in range(30):  # one power iteration per forward pass
            D(paddle.rand([2, 3, 96, 96]) * 2 - 1)
    after = [np.linalg.norm(layer.weight.numpy().reshape(layer.weight.shape[0], -1), 2) for layer in normalised]
    assert after == pytest.approx([1.0] * 5, abs=0.02)


@pytest.mark.parametrize("norm", ["batch", "spectral"])
def test_a_d_grown_into_mbstd_from_saved_weights_computes_what_the_saved_d_did(norm, tmp_path):
    paddle.seed(0)
    saved, grown = Discriminator(norm=norm), Discriminator(norm=norm, mbstd=True)
    init_dcgan_weights(saved)
    save_weights(saved, tmp_path / "D.safetensors")
    with pytest.raises(UserError, match="holds weights of another network"):
        load_weights(grown, tmp_path / "D.safetensors")  # only where growing is asked for
    load_weights(grown, tmp_path / "D.safetensors", grown=True)
    linear = getattr(grown.classify, "weight_orig", grown.classify.weight).numpy()
    assert linear.shape == (513 * 6 * 6, 2) and not linear[512 * 6 * 6:].any()  # the new inputs weigh zero
    saved.eval(), grown.eval()
    faces = paddle.rand([8, 3, 96, 96]) * 2 - 1
    assert minibatch_std(saved.features(faces))[:, -1].numpy().min() > 0  # the new feature is there
    np.testing.assert_allclose(grown(faces).numpy(), saved(faces).numpy(), rtol=1e-5, atol=1e-6)


def test_adams_moments_of_a_grown_weight_are_padded_with_zeros_and_the_rest_kept():
    paddle.seed(0)
    saved, grown = Discriminator(), Discriminator(mbstd=True)
    optimizer = paddle.optimizer.Adam(1e-3, parameters=saved.parameters())
    saved(paddle.rand([4, 3, 96, 96])).mean().backward()
    optimizer.step()
    state = optimizer_state(saved, optimizer)
    after = grown_optimizer_state(grown, state)
    assert set(after) == set(state)
    for moment in ("classify.weight_moment1_0", "classify.weight_moment2_0"):
        before = np.asarray(state[moment])
        assert list(after[moment].shape) == [513 * 6 * 6, 2] and before.shape == (512 * 6 * 6, 2) and before.any()
        np.testing.assert_array_equal(np.asarray(after[moment])[:512 * 6 * 6], before)
        assert not np.asarray(after[moment])[512 * 6 * 6:].any()
    assert all(after[key] is state[key] for key in state if not key.startswith("classify.weight_moment"))


def test_spectral_d_has_the_originals_layer_shapes_and_no_batch_norm():
    plain, spectral = Discriminator(input_norm=False), Discriminator(norm="spectral")
    def shapes(network):
        return [(type(layer), getattr(layer, "weight_orig", layer.weight).shape, layer.bias.shape)
                for layer in network.sublayers() if isinstance(layer, (nn.Conv2D, nn.Linear))]

    assert shapes(spectral) == shapes(plain)


def test_mbstd_adds_only_the_linear_layers_extra_inputs_to_d():
    assert count(Discriminator(mbstd=True)) - count(Discriminator()) == 6 * 6 * 2
    assert count(Discriminator(norm="spectral", mbstd=True)) - count(Discriminator(norm="spectral")) == 6 * 6 * 2


def test_the_minibatch_feature_is_the_spread_across_each_group_of_images():
    alike = paddle.ones([8, 2, 3, 3])
    assert minibatch_std(alike).shape == [8, 3, 3, 3]
    assert float(minibatch_std(alike)[:, 2].abs().max()) < 1e-3
    varied = paddle.to_tensor(np.arange(8, dtype="float32").reshape([8, 1, 1, 1]).repeat(2, 1).repeat(3, 2)
                              .repeat(3, 3))
    feature = minibatch_std(varied)[:, 2].numpy()
    # groups of 4: images i and i + 2, i + 4, i + 6, whose values 0, 2, 4, 6 have the standard deviation sqrt(5)
    assert feature == pytest.approx(np.full([8, 3, 3], np.sqrt(5)), abs=1e-3)
    assert minibatch_std(paddle.ones([3, 2, 3, 3])).shape == [3, 3, 3, 3]  # 3 images: groups of 3


# ------------------------------------------------------------------------------------------- R1

class TinyD(nn.Layer):
    """A discriminator small enough for finite differences: a convolution, leaky ReLU, two logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(3, 2, 3, stride=2, padding=1)
        self.classify = nn.Linear(2 * 2 * 2, 2)

    def forward(self, x):
        x = nn.functional.leaky_relu(self.conv(x), 0.2)
        return self.classify(x.reshape([x.shape[0], -1]))


def test_the_r1_penalty_and_its_gradient_match_finite_differences():
    paddle.set_default_dtype("float64")
    try:
        paddle.seed(3)
        D = TinyD()
        real = paddle.rand([2, 3, 4, 4], dtype="float64")

        def realness_sum(images):
            return float(Recipe.realness_of(D(paddle.to_tensor(images))).sum())

        def numeric_penalty():
            images, h = real.numpy(), 1e-6
            gradient = np.zeros_like(images)
            for index in np.ndindex(images.shape):
                up, down = images.copy(), images.copy()
                up[index] += h
                down[index] -= h
                gradient[index] = (realness_sum(up) - realness_sum(down)) / (2 * h)
            return float((gradient ** 2).sum(axis=(1, 2, 3)).mean())

        penalty, _ = Recipe.r1_penalty(D, D, real)
        assert float(penalty) == pytest.approx(numeric_penalty(), rel=1e-5)
        penalty.backward()  # the second derivative: how the penalty changes with one of D's weights
        weight, index, h = D.conv.weight, (1, 0, 1, 2), 1e-5
        analytic = float(weight.grad[index])
        values = weight.numpy()
        sides = []
        for shift in (h, -h):
            moved = values.copy()
            moved[index] += shift
            weight.set_value(moved)
            sides.append(numeric_penalty())
        weight.set_value(values)
        assert analytic == pytest.approx((sides[0] - sides[1]) / (2 * h), rel=1e-3)
    finally:
        paddle.set_default_dtype("float32")


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["batch", "spectral"])
def test_r1_differentiates_the_real_d_twice_through_augmentation_and_restores_its_fast_kernels(norm):
    paddle.seed(0)
    G, D = Generator(), Discriminator(input_norm=False, norm=norm, mbstd=True)
    opt_g, opt_d = (paddle.optimizer.Adam(1e-4, parameters=net.parameters()) for net in (G, D))
    fast = [layer for layer in D.sublayers() if getattr(layer, "one_gemm", False)]
    config = Recipe.StepConfig(augment="color,translation,cutout", loss="hinge", r1=10.0)
    result = Recipe.train_step(Recipe.Players(G, D, opt_g, opt_d), paddle.rand([4, 3, 96, 96]) * 2 - 1, config)
    assert all(np.isfinite(float(value)) for value in result)
    assert fast and all(layer.one_gemm for layer in fast)
    with twice_differentiable(D):
        assert not any(layer.one_gemm for layer in fast)


def test_r1_is_lazy_every_r1_every_steps_and_scaled_to_match():
    hp = {"r1": 0.5, "r1_every": 4}
    assert [Recipe.r1_weight(hp, step) for step in range(6)] == [2.0, 0, 0, 0, 2.0, 0]
    assert Recipe.r1_weight({"r1": 0.0, "r1_every": 4}, 0) == 0


# ---------------------------------------------------------------------------------- mode seeking

def test_the_mode_seeking_term_is_one_over_the_halves_face_distance_per_noise_distance():
    faces = paddle.to_tensor(np.array([0.5, -0.5, 0.25, 1.0, 0.5, 0.5], dtype="float32").reshape([3, 2, 1, 1]))
    noise = paddle.to_tensor([[0.0, 0.0], [1.0, 0.5], [9.0, 9.0]])  # an odd batch: the last one is left out
    # the first face against the second: |0.5 - 0.25| and |-0.5 - 1.0|; their noise: |0 - 1| and |0 - 0.5|
    apart = np.mean([0.25, 1.5]) / np.mean([1.0, 0.5])
    assert float(Recipe.mode_seeking_term(faces, noise)) == pytest.approx(1 / (apart + 1e-5))


def test_lowering_the_mode_seeking_term_draws_the_two_halves_apart():
    paddle.seed(0)
    faces, noise = paddle.rand([8, 3, 4, 4]), paddle.rand([8, 4])
    faces.stop_gradient = False
    term = Recipe.mode_seeking_term(faces, noise)
    term.backward()
    moved = faces.detach() - 0.01 * faces.grad
    assert float(Recipe.mode_seeking_term(moved, noise)) < float(term)
    assert float((moved[:4] - moved[4:]).abs().mean()) > float((faces[:4] - faces[4:]).abs().mean())


@pytest.mark.slow
def test_mode_seeking_changes_only_gs_update_and_stays_out_of_gs_logged_loss():
    def one_step(mode_seeking):
        paddle.seed(0)
        G, D = Generator(), Discriminator(input_norm=False)
        init_dcgan_weights(G)
        init_dcgan_weights(D)
        # plain gradient descent for G: Adam's first step moves each weight by its rate whatever the gradient
        opt_g = paddle.optimizer.SGD(1e-2, parameters=G.parameters())
        opt_d = paddle.optimizer.Adam(1e-3, parameters=D.parameters())
        result = Recipe.train_step(Recipe.Players(G, D, opt_g, opt_d), paddle.rand([4, 3, 96, 96]) * 2 - 1,
                                   Recipe.StepConfig(mode_seeking=mode_seeking))
        trained = {name: weight.numpy() for name, weight in G.named_parameters() if not weight.stop_gradient}
        return [float(value) for value in result], trained, {k: v.numpy() for k, v in D.state_dict().items()}

    (plain, g_plain, d_plain), (seeking, g_seeking, d_seeking) = one_step(0.0), one_step(1.0)
    assert plain == seeking  # D's two losses, G's (the same faces, judged before G's update) and r_t
    assert all(np.array_equal(d_plain[key], d_seeking[key]) for key in d_plain)
    assert all(not np.array_equal(g_plain[key], g_seeking[key]) for key in g_plain)  # every weight G trains


def test_mode_seeking_needs_two_faces_a_batch():
    with pytest.raises(UserError, match="--mode-seeking compares the two halves of each batch, so it needs a "
                                        "--batch-size of at least 2."):
        Train.settle_hyper_parameters(Train.parse_args(["--mode-seeking", "1", "--batch-size", "1"]), None)
    settled, _ = Train.settle_hyper_parameters(Train.parse_args(["--batch-size", "1", "--seed", "1"]), None)
    assert settled["mode_seeking"] == 0.0


def test_d_lr_is_ds_own_adam_rate_and_g_keeps_lr():
    settled, _ = Train.settle_hyper_parameters(Train.parse_args(["--seed", "1", "--lr", "1e-4", "--d-lr", "4e-4"]),
                                               None)
    nets = Train.build_networks(settled, "cpu", 1)
    assert (nets.opt_g.get_lr(), nets.opt_d.get_lr()) == (1e-4, 4e-4)
    default, _ = Train.settle_hyper_parameters(Train.parse_args(["--seed", "1", "--lr", "1e-4"]), None)
    assert Train.build_networks(default, "cpu", 1).opt_d.get_lr() == 4e-4  # the diversity round's winner
    original, _ = Train.settle_hyper_parameters(Train.parse_args(["--seed", "1", "--original"]), None)
    assert Train.build_networks(original, "cpu", 1).opt_d.get_lr() == 2e-4  # the original's one rate


def test_a_checkpoint_from_before_flip_and_d_lr_goes_on_with_the_winners_recipe_and_keeps_gs_rate():
    """The case of the model shipped before step 12,298: its state.json predates --flip and --d-lr,
    and it trains G at 1e-4."""
    shipped = RunState(hyper_parameters={**Recipe.ORIGINAL, "lr": 1e-4, "seed": 1})
    for name in ("loss", "d_norm", "mbstd", "r1", "r1_every", "flip", "d_lr", "mode_seeking"):
        del shipped.hyper_parameters[name]
    settled, changed = Train.settle_hyper_parameters(Train.parse_args([]), shipped)
    assert changed == {"flip": True, "d_lr": 4e-4}  # recorded in state.json's changes
    said = [Train.a_change(name, value, Train.trained_with(shipped)[name]) for name, value in changed.items()]
    assert said == ["--flip (until now off)", "--d-lr 0.0004 (until now 0.0001)"]
    assert (settled["lr"], settled["d_lr"], settled["flip"], settled["loss"], settled["d_norm"]) == (
        1e-4, 4e-4, True, "bce", "batch")


@pytest.mark.parametrize("lr", [None, 5e-5])
def test_a_checkpoint_that_recorded_no_rate_for_d_goes_on_with_ds_default_and_keeps_its_flip(lr):
    """Between --d-lr's coming and its default of 4e-4, checkpoints recorded "d_lr": null (D at G's
    rate) beside every other hyper-parameter of today, --flip among them. D goes on at 4e-4 whatever
    G's --lr; the recorded --flip stays."""
    before = RunState(hyper_parameters={**Recipe.ORIGINAL, "batch_size": 32, "lr": 1e-4, "seed": 1, "d_lr": None})
    assert set(before.hyper_parameters) == set(Recipe.HYPER_PARAMETERS) and before.hyper_parameters["flip"] is False
    settled, changed = Train.settle_hyper_parameters(Train.parse_args([] if lr is None else ["--lr", str(lr)]), before)
    assert changed == ({"d_lr": 4e-4} if lr is None else {"lr": lr, "d_lr": 4e-4})
    assert Train.a_change("d_lr", 4e-4, Train.trained_with(before)["d_lr"]) == "--d-lr 0.0004 (until now 0.0001)"
    assert (settled["d_lr"], settled["flip"], settled["lr"]) == (4e-4, False, lr or 1e-4)
    assert Train.build_networks(settled, "cpu", 1).opt_d.get_lr() == 4e-4


# ---------------------------------------------------------------------------------- training runs

@pytest.mark.slow
def test_every_flag_trains_two_epochs_exactly_as_one_then_a_resume_then_one_more(faces_dir, tmp_path):
    Train.main(train_args(faces_dir, tmp_path / "straight", "--epochs", "2", *EVERY_FLAG))
    Train.main(train_args(faces_dir, tmp_path / "resumed", "--epochs", "1", *EVERY_FLAG))
    Train.main(train_args(faces_dir, tmp_path / "resumed", "--epochs", "2"))  # the checkpoint's recipe
    for name in ("G.safetensors", "D.safetensors", "G_ema.safetensors"):
        straight = load_file(str(tmp_path / "straight" / "Model" / name))
        resumed = load_file(str(tmp_path / "resumed" / "Model" / name))
        assert set(straight) == set(resumed)
        assert max(np.abs(straight[key] - resumed[key]).max() for key in straight) < 1e-5
    assert "features.0.0.weight_u" in load_file(str(tmp_path / "straight" / "Model" / "D.safetensors"))
    states = [saved_state(tmp_path / run) for run in ("straight", "resumed")]
    assert states[0]["losses"] == states[1]["losses"]
    assert states[0]["real_sign"] == states[1]["real_sign"] and states[0]["overfitting"] == states[1]["overfitting"]
    recorded = ("loss", "d_norm", "r1", "r1_every", "d_lr", "mbstd", "flip", "mode_seeking")
    assert {key: states[1]["hyper_parameters"][key] for key in recorded} == {
        "loss": "hinge", "d_norm": "spectral", "r1": 0.5, "r1_every": 2, "d_lr": 3e-4, "mbstd": True, "flip": True,
        "mode_seeking": 1.0}


def test_r_t_is_the_epochs_mean_sign_of_ds_realness_on_real_batches(trained, capsys):
    state = json.loads((trained[0] / "Model" / "state.json").read_text())
    assert len(state["real_sign"]) == state["global_step"] == 2
    assert all(-1 <= sign <= 1 for sign in state["real_sign"])
    assert state["overfitting"] == [{"epoch": 1, "step": 2, "r_t": pytest.approx(np.mean(state["real_sign"]))}]
    assert "Epoch 1: D's overfitting signal r_t = " in trained[1].stdout


def copy_of(trained, tmp_path):
    subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(tmp_path / "Model")], check=True)


@pytest.mark.parametrize("flags, reason", [(("--d-norm", "spectral"), "--d-norm changed the form of D"),
                                           (("--d-norm", "spectral", "--mbstd"),
                                            "--d-norm and --mbstd changed the form of D"),
                                           (("--fresh-d",), "--fresh-d")])
@pytest.mark.slow
def test_a_new_form_of_d_or_fresh_d_continues_g_and_starts_d_afresh_and_says_so(trained, faces_dir, tmp_path, capsys,
                                                                                flags, reason):
    copy_of(trained, tmp_path)
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5", *flags))
    out = capsys.readouterr().out
    assert "Resuming from" in out and "Adam starts afresh" not in out  # G's weights and Adam state go on
    assert f"D starts afresh ({reason}), with new weights and Adam state; G continues from step 2." in out
    state = saved_state(tmp_path)
    assert {"step": 2, "fresh_d": reason} in state["changes"] and state["global_step"] == 4
    fresh, _ = Train.settle_hyper_parameters(Train.parse_args(train_args(faces_dir, tmp_path, "--seed", "5", *flags)),
                                             None)
    fresh_d = Train.build_networks(fresh, "cpu", 1).D
    assert set(load_file(str(tmp_path / "Model" / "D.safetensors"))) == set(fresh_d.state_dict())


@pytest.mark.slow
def test_mbstd_turned_on_when_continuing_keeps_d_and_its_adam_state_and_grows_its_linear_layer(trained, faces_dir,
                                                                                                 tmp_path, capsys):
    copy_of(trained, tmp_path)
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5", "--mbstd"))
    out = capsys.readouterr().out
    assert "Continuing with --mbstd (until now off) from step 2." in out
    assert "D continues: its linear layer takes --mbstd's new feature with weights of zero" in out
    assert "D starts afresh" not in out and "Adam starts afresh" not in out
    state = saved_state(tmp_path)
    assert state["changes"] == [{"step": 2, "mbstd": True}] and state["global_step"] == 4
    before = load_file(str(trained[0] / "Model" / "D.safetensors"))
    after = load_file(str(tmp_path / "Model" / "D.safetensors"))
    assert after["classify.weight"].shape == (513 * 6 * 6, 2) and set(after) == set(before)
    adam = paddle.load(str(tmp_path / "Model" / "D.pdopt"))["adam"]
    assert list(adam["classify.weight_moment1_0"].shape) == [513 * 6 * 6, 2]


@pytest.mark.slow
def test_the_loss_r1_d_lr_and_mode_seeking_may_change_when_continuing_and_are_recorded(trained, faces_dir, tmp_path,
                                                                                      capsys):
    copy_of(trained, tmp_path)
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5", "--loss", "hinge", "--r1", "1",
                          "--d-lr", "1e-4", "--mode-seeking", "0.5"))
    out = capsys.readouterr().out
    assert "Continuing with --loss hinge (until now bce), --r1 1.0 (until now 0.0), --d-lr 0.0001 (until now " \
           "0.0004), --mode-seeking 0.5 (until now 0.0) from step 2." in out
    assert "D starts afresh" not in out
    assert saved_state(tmp_path)["changes"] == [{"step": 2, "loss": "hinge", "r1": 1.0, "d_lr": 1e-4,
                                                 "mode_seeking": 0.5}]
