"""Train.py's flags of the crispness round: --top-k, G's adversarial loss from only the faces D
finds most real, on Sinha et al.'s shrinking schedule; and --cooldown, both learning rates falling
linearly to zero over a number of steps, where training stops. Each is a recorded hyper-parameter
that resumes exactly and is off under --original."""
import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file
from test_diversity import copy_of

import Recipe
import Train
from Net import Discriminator, Generator, init_dcgan_weights
from test_train import saved_state, train_args

softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731

# --------------------------------------------------------------------------------------- --top-k


def test_top_k_shrinks_from_the_whole_batch_by_a_hundredth_an_epoch_down_to_its_fraction():
    assert Recipe.top_k_count(0.5, 0, 32) == 32  # a new model learns from every face
    assert Recipe.top_k_count(0.5, 31, 32) == round(0.99 ** 31 * 32) == 23  # after 31 epochs, as step 21,636
    assert Recipe.top_k_count(0.5, 68, 32) == round(0.99 ** 68 * 32) == 16
    assert Recipe.top_k_count(0.5, 300, 32) == 16  # the floor: the fraction
    assert Recipe.top_k_count(0.75, 300, 100) == 75
    assert Recipe.top_k_count(0.01, 1000, 4) == 1  # at least one face
    assert Recipe.top_k_count(1.0, 1000, 32) == 32


@pytest.mark.parametrize("kind", ["bce", "hinge"])
def test_gs_top_k_loss_is_its_loss_over_the_faces_d_finds_most_real(kind):
    logits = paddle.to_tensor([[0.0, 2.0], [1.0, 0.5], [0.0, 1.0], [3.0, 0.0]])  # realness 2, -0.5, 1, -3
    best = np.array([2.0, 1.0])
    expected = np.mean(softplus(-best)) if kind == "bce" else -best.mean()
    assert float(Recipe.g_loss(logits, kind, top=2)) == pytest.approx(expected)
    assert float(Recipe.g_loss(logits, kind, top=4)) == float(Recipe.g_loss(logits, kind))  # the whole batch
    # bce over every face is the original's cross entropy, which softplus of the realness equals
    assert float(Recipe.g_loss(logits, "bce")) == pytest.approx(np.mean(softplus(-np.array([2, -0.5, 1, -3]))))


def test_the_faces_left_out_of_top_k_give_g_no_gradient():
    logits = paddle.to_tensor([[0.0, 2.0], [1.0, 0.5], [0.0, 1.0], [3.0, 0.0]], stop_gradient=False)
    Recipe.g_loss(logits, "bce", top=2).backward()
    gradient = np.abs(logits.grad.numpy()).sum(axis=1)
    assert (gradient[[0, 2]] > 0).all() and (gradient[[1, 3]] == 0).all()


def one_step(top, mode_seeking=0.0):
    paddle.seed(0)
    G, D = Generator(), Discriminator(input_norm=False)
    init_dcgan_weights(G)
    init_dcgan_weights(D)
    opt_g = paddle.optimizer.SGD(1e-2, parameters=G.parameters())  # Adam's first step hides the gradient's size
    opt_d = paddle.optimizer.Adam(1e-3, parameters=D.parameters())
    result = Recipe.train_step(Recipe.Players(G, D, opt_g, opt_d), paddle.rand([8, 3, 96, 96]) * 2 - 1,
                               Recipe.StepConfig(top=top, mode_seeking=mode_seeking))
    g = {name: weight.numpy() for name, weight in G.named_parameters() if not weight.stop_gradient}
    return [float(value) for value in result], g, {key: value.numpy() for key, value in D.state_dict().items()}


@pytest.mark.slow
def test_top_k_changes_only_gs_update_and_g_logs_its_loss_over_every_face():
    (every, g_every, d_every), (top, g_top, d_top) = one_step(None), one_step(4)
    assert every == top  # D's losses, G's logged loss over all 8 faces, and r_t
    assert all(np.array_equal(d_every[key], d_top[key]) for key in d_every)
    assert any(not np.array_equal(g_every[key], g_top[key]) for key in g_every)
    _, g_whole, _ = one_step(8)
    assert all(np.array_equal(g_every[key], g_whole[key]) for key in g_every)  # top of the whole batch: no change


@pytest.mark.slow
def test_the_mode_seeking_term_still_takes_every_face_under_top_k():
    _, g_top, _ = one_step(4)
    _, g_both, _ = one_step(4, mode_seeking=1.0)
    assert any(not np.array_equal(g_top[key], g_both[key]) for key in g_top)


@pytest.mark.parametrize("flag, value, words", [("--top-k", "0", "is not a number above 0 up to 1"),
                                                ("--top-k", "1.5", "is not a number above 0 up to 1"),
                                                ("--top-k", "nan", "is not a number above 0 up to 1"),
                                                ("--cooldown", "-1", "is not a whole number of at least 0"),
                                                ("--cooldown", "2.5", "is not a whole number of at least 0")])
def test_a_wrong_top_k_or_cooldown_is_refused_by_the_parser(flag, value, words, capsys):
    with pytest.raises(SystemExit) as refused:
        Train.parse_args([flag, value])
    assert refused.value.code == 2
    assert f"argument {flag}: '{value}' {words}" in capsys.readouterr().err


def test_both_are_off_by_default_and_under_original():
    for flags in (["--seed", "1"], ["--original", "--seed", "1"]):
        settled, _ = Train.settle_hyper_parameters(Train.parse_args(flags), None)
        assert (settled["top_k"], settled["cooldown"]) == (1.0, 0)


# ------------------------------------------------------------------------------------ --cooldown

def test_the_cooldown_factor_falls_linearly_from_one_to_zero_over_its_steps():
    assert [Recipe.cooldown_factor(4, into) for into in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert Recipe.cooldown_factor(0, 100) == 1.0  # no cooldown


def rates_of_each_step(monkeypatch):
    """Record (G's rate, D's rate) at every training step of Train.main in this process."""
    rates, step = [], Recipe.train_step

    def recording(players, *args):
        rates.append((players.opt_g.get_lr(), players.opt_d.get_lr()))
        return step(players, *args)

    monkeypatch.setattr(Recipe, "train_step", recording)
    return rates


@pytest.mark.slow
def test_a_cooldown_lowers_both_rates_to_zero_and_stops_mid_epoch_with_a_checkpoint(faces_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    rates = rates_of_each_step(monkeypatch)
    assert Train.main(train_args(faces_dir, tmp_path, "--epochs", "5", "--lr", "3e-4", "--d-lr", "6e-4",
                                 "--cooldown", "3")) == 0
    assert rates == [pytest.approx((3e-4 * f, 6e-4 * f)) for f in (1, 2 / 3, 1 / 3)]
    out = capsys.readouterr().out
    assert "Cooldown done: the learning rates reached zero at step 3, checkpoint saved to" in out
    assert "Continued without --cooldown, it trains on at full rate." in out
    state = saved_state(tmp_path)
    assert (state["global_step"], state["epochs_done"], state["batches_done"]) == (3, 1, 1)
    assert state["hyper_parameters"]["cooldown"] == 3 and state["changes"] == []

    # the same command again: over, nothing to do
    assert Train.main(train_args(faces_dir, tmp_path, "--epochs", "5", "--cooldown", "3")) == 0
    assert "has finished its cooldown of 3 steps (its learning rates reached zero at step 3); nothing to do. To " \
           "train it on, leave --cooldown out or give --cooldown 0; a new value starts another cooldown." \
           in capsys.readouterr().out
    assert saved_state(tmp_path)["global_step"] == 3

    rates.clear()  # continued as a user continues a model, without --cooldown: full rate again
    assert Train.main(train_args(faces_dir, tmp_path, "--epochs", "2")) == 0
    assert "Continuing with --cooldown 0 (until now 3) from step 3." in capsys.readouterr().out
    assert rates == [(3e-4, 6e-4)]  # to the end of epoch 2
    assert saved_state(tmp_path)["changes"] == [{"step": 3, "cooldown": 0}]


@pytest.mark.slow
def test_a_cooldown_taken_when_continuing_counts_from_where_the_run_stands(trained, faces_dir, tmp_path, capsys,
                                                                         monkeypatch):
    copy_of(trained, tmp_path)  # step 2, at the default rates
    rates = rates_of_each_step(monkeypatch)
    assert Train.main(train_args(faces_dir, tmp_path, "--seed", "5", "--cooldown", "2")) == 0
    assert "Continuing with --cooldown 2 (until now 0) from step 2." in capsys.readouterr().out
    g, d = Recipe.HYPER_PARAMETERS["lr"].default, Recipe.HYPER_PARAMETERS["d_lr"].default
    assert rates == [pytest.approx((g, d)), pytest.approx((g / 2, d / 2))]
    state = saved_state(tmp_path)
    assert state["global_step"] == 4 and state["changes"] == [{"step": 2, "cooldown": 2}]


@pytest.mark.slow
def test_top_k_and_cooldown_train_two_epochs_exactly_as_one_then_a_resume_then_one_more(faces_dir, tmp_path,
                                                                                    monkeypatch):
    # A faster shrink than Sinha et al.'s, so that top-k takes 2 of the 4 faces in the second epoch.
    monkeypatch.setattr(Recipe, "TOP_K_DECAY", 0.5)
    taken = []
    count = Recipe.top_k_count
    monkeypatch.setattr(Recipe, "top_k_count", lambda *args: taken.append(count(*args)) or taken[-1])
    flags = ("--top-k", "0.5", "--cooldown", "4")
    Train.main(train_args(faces_dir, tmp_path / "straight", "--epochs", "2", *flags))
    assert taken == [4, 4, 2, 2]
    Train.main(train_args(faces_dir, tmp_path / "resumed", "--epochs", "1", *flags))
    Train.main(train_args(faces_dir, tmp_path / "resumed", "--epochs", "2"))  # the checkpoint's recipe
    for name in ("G.safetensors", "D.safetensors", "G_ema.safetensors"):
        straight = load_file(str(tmp_path / "straight" / "Model" / name))
        resumed = load_file(str(tmp_path / "resumed" / "Model" / name))
        assert max(np.abs(straight[key] - resumed[key]).max() for key in straight) < 1e-5
    states = [saved_state(tmp_path / run) for run in ("straight", "resumed")]
    assert states[0]["losses"] == states[1]["losses"] and states[1]["global_step"] == 4
    # the cooldown ended on the epoch's last batch: the epoch is finished, its r_t measured
    ends = [(state["epochs_done"], state["batches_done"], len(state["overfitting"])) for state in states]
    assert ends == [(2, 0, 2)] * 2
    assert (states[1]["hyper_parameters"]["top_k"], states[1]["hyper_parameters"]["cooldown"]) == (0.5, 4)
