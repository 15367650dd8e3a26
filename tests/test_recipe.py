"""Train.py --ema and --augment: G_ema follows G as its moving average and is saved, stamped and
resumed with the checkpoint; DiffAugment runs in every D pass; both are recorded hyper-parameters,
on by default, changeable when continuing, and off under --original; Run.py, Evaluate.py and Figures.py draw with
G_ema when it is there and with G under --raw-g."""
import Utils

import json
import subprocess

import numpy as np
import paddle
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import Augment
import Checkpoint
import Drawing
import Figures
import Metrics
import Recipe
import Run
import Train
from Checkpoint import ModelFolder
from conftest import ROOT, run_script
from Files import UserError
from Net import Discriminator, Generator
from test_checkpoint import small_networks
from test_train import saved_state, train_args

RECIPE = ("--ema", "0.9", "--augment", "color,translation,cutout")


@pytest.fixture(scope="module")
def ema_model(faces_dir, tmp_path_factory):
    """The model folder of one epoch (2 batches of 4) with G_ema and every DiffAugment transform."""
    run = tmp_path_factory.mktemp("ema")
    Train.main(train_args(faces_dir, run, "--epochs", "1", *RECIPE))
    return run / "Model"


def stamp(path):
    with safe_open(str(path), "np") as weights:
        return weights.metadata()


# ------------------------------------------------------------------------------ the average

def test_g_ema_moves_each_weight_by_one_minus_decay_towards_g_and_leaves_its_statistics_alone():
    paddle.seed(0)
    G = Generator()
    average = Recipe.MovingAverage(G, decay=0.9)
    before = {name: value.numpy() for name, value in average.G_ema.state_dict().items()}
    with paddle.no_grad():
        for parameter in G.parameters():
            paddle.assign(parameter + 1, output=parameter)
    average.update()
    after, trained = average.G_ema.state_dict(), G.state_dict()
    statistics = [name for name in after if name.endswith(("._mean", "._variance"))]
    assert len(statistics) == 12 and len(after) - len(statistics) == 26
    for name in after:
        expected = before[name] if name in statistics else 0.9 * before[name] + 0.1 * trained[name].numpy()
        np.testing.assert_allclose(after[name].numpy(), expected, rtol=1e-6, atol=1e-6, err_msg=name)
    assert all(parameter.stop_gradient for parameter in average.G_ema.parameters())  # never trained


def test_g_ema_statistics_are_the_mean_of_its_own_batch_statistics_and_depend_on_the_seed_alone(monkeypatch):
    monkeypatch.setattr(Recipe.MovingAverage, "STATISTICS_BATCHES", 3)
    monkeypatch.setattr(Recipe.MovingAverage, "STATISTICS_BATCH_SIZE", 8)
    paddle.seed(0)
    average = Recipe.MovingAverage(Generator(), decay=0.9)
    name, first_norm = next((name, layer) for name, layer in average.G_ema.named_sublayers()
                            if isinstance(layer, paddle.nn.BatchNorm2D))
    inputs = []
    first_norm.register_forward_pre_hook(lambda layer, args: inputs.append(args[0].numpy()))
    average.fit_batch_norm_statistics(seed=7)
    assert len(inputs) == 3 and not average.G_ema.training and first_norm._momentum == 0.5
    batch_means = [batch.mean(axis=(0, 2, 3)) for batch in inputs]
    np.testing.assert_allclose(first_norm._mean.numpy(), np.mean(batch_means, axis=0), rtol=1e-5, atol=1e-6)
    fitted = {name: value.numpy() for name, value in average.G_ema.state_dict().items()}
    paddle.seed(123)  # Paddle's own generator plays no part
    average.fit_batch_norm_statistics(seed=7)
    assert all(np.array_equal(value.numpy(), fitted[name]) for name, value in average.G_ema.state_dict().items())
    average.fit_batch_norm_statistics(seed=8)
    assert not np.array_equal(first_norm._mean.numpy(), fitted[f"{name}._mean"])


@pytest.mark.slow
def test_the_checkpoint_holds_g_ema_stamped_as_g_and_state_json_the_recipe(ema_model):
    state = json.loads((ema_model / "state.json").read_text())
    assert (state["hyper_parameters"]["ema"], state["hyper_parameters"]["augment"]) == (0.9,
                                                                                        "color,translation,cutout")
    assert stamp(ema_model / "G_ema.safetensors") == stamp(ema_model / "G.safetensors") == {
        "run": state["run"], "global_step": "2"}
    assert not (ema_model / "G_ema.pdopt").exists()
    averaged, trained = load_file(str(ema_model / "G_ema.safetensors")), load_file(str(ema_model / "G.safetensors"))
    assert not np.allclose(averaged["residual.conv1.weight"], trained["residual.conv1.weight"])


@pytest.mark.slow
def test_two_epochs_with_ema_and_augment_equal_one_epoch_then_resume_then_one_more(faces_dir, tmp_path, capsys):
    Train.main(train_args(faces_dir, tmp_path / "straight", "--epochs", "2", *RECIPE))
    Train.main(train_args(faces_dir, tmp_path / "resumed", "--epochs", "1", *RECIPE))
    Train.main(train_args(faces_dir, tmp_path / "resumed", "--epochs", "2"))  # the checkpoint's recipe
    assert "Resuming from" in capsys.readouterr().out
    for name in ("G.safetensors", "D.safetensors", "G_ema.safetensors"):
        straight = load_file(str(tmp_path / "straight" / "Model" / name))
        resumed = load_file(str(tmp_path / "resumed" / "Model" / name))
        assert max(np.abs(straight[key] - resumed[key]).max() for key in straight) < 1e-5
    losses = [saved_state(tmp_path / run)["losses"] for run in ("straight", "resumed")]
    assert losses[0] == losses[1]


def test_every_batch_d_sees_is_augmented_and_g_learns_through_the_augmentation(monkeypatch):
    seen = []

    def recording(images, policy):
        seen.append((images, policy, images.stop_gradient))
        return augment(images, policy)

    augment = Augment.diff_augment
    monkeypatch.setattr(Augment, "diff_augment", recording)
    paddle.seed(0)
    G, D = Generator(), Discriminator()
    real = paddle.rand([2, 3, 96, 96]) * 2 - 1
    opt_g, opt_d = (paddle.optimizer.Adam(1e-4, parameters=net.parameters()) for net in (G, D))
    Recipe.train_step(Recipe.Players(G, D, opt_g, opt_d), real, Recipe.StepConfig(g_steps=2, augment="translation"))
    assert [policy for _, policy, _ in seen] == ["translation"] * 4  # D on fakes, D on reals, 2 G updates
    assert seen[1][0] is real
    assert [stop_gradient for _, _, stop_gradient in seen] == [True, True, False, False]  # G's passes: to G


# --------------------------------------------------------------------- defaults and old checkpoints

def test_the_defaults_are_the_measured_recipe_and_original_is_the_original_repositorys_exactly():
    settled, changed = Train.settle_hyper_parameters(Train.parse_args(["--seed", "1"]), None)
    assert settled == {name: hp.default for name, hp in Recipe.HYPER_PARAMETERS.items()} | {"seed": 1}
    assert (settled["batch_size"], settled["g_steps"], settled["init"], settled["d_input_bn"]) == (32, 1, "dcgan",
                                                                                                   False)
    assert changed == {}
    original, _ = Train.settle_hyper_parameters(Train.parse_args(["--original", "--seed", "1"]), None)
    assert original == {"batch_size": 100, "lr": 2e-4, "beta1": 0.8, "g_steps": 2, "init": "paddle", "d_input_bn": True,
                     "ema": 0.0, "augment": "none", "seed": 1, "loss": "bce", "d_norm": "batch", "mbstd": False,
                     "r1": 0.0, "r1_every": 16, "flip": False, "d_lr": 2e-4, "mode_seeking": 0.0,
                     "top_k": 1.0, "cooldown": 0}
    mixed, _ = Train.settle_hyper_parameters(Train.parse_args(["--original", "--batch-size", "64", "--seed", "1"]),
                                             None)
    assert mixed == original | {"batch_size": 64}  # a flag beside --original still counts
    slower, _ = Train.settle_hyper_parameters(Train.parse_args(["--original", "--lr", "1e-4", "--seed", "1"]), None)
    assert slower["d_lr"] == 1e-4  # D keeps G's rate, as the original's did
    old_name, _ = Train.settle_hyper_parameters(Train.parse_args(["--brief", "--seed", "1"]), None)
    assert old_name == original  # --brief, its name until 2026-12, still works
    help_text = run_script("Train.py", "--help").stdout
    assert "--original" in help_text and "--brief" not in help_text  # the old name works, unlisted


def test_every_value_train_py_records_is_one_its_flag_takes():
    """What settle_hyper_parameters checks in a checkpoint's state.json (a hand edit) never refuses
    what Train.py itself wrote: the defaults, the original's, the shipped model's, or values from flags."""
    recorded = [{name: hp.default for name, hp in Recipe.HYPER_PARAMETERS.items()}, Recipe.ORIGINAL,
                json.loads((ROOT / "Model" / "state.json").read_text())["hyper_parameters"],
                Train.settle_hyper_parameters(Train.parse_args(["--lr", "3e-05", "--augment", "cutout,color", "--seed",
                                                                "0", "--no-flip", "--loss", "hinge"]), None)[0]]
    assert [{name: why for name, value in values.items() if (why := Recipe.refused_value(name, value))}
            for values in recorded] == [{}] * 4
    assert Recipe.refused_value("batch_size", 32.0) == "'32.0' is not a whole number of at least 1"
    assert Recipe.refused_value("batch_size", "32") == "not of its kind"  # a number written as text
    assert Recipe.refused_value("ema", 1.5) == "'1.5' is not a number from 0 up to (not including) 1"


def old_checkpoint(trained, tmp_path):
    """A copy of the trained model folder as written before --ema and --augment existed."""
    subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(tmp_path / "Model")], check=True)
    (tmp_path / "Model" / "G_ema.safetensors").unlink(missing_ok=True)
    state = json.loads((tmp_path / "Model" / "state.json").read_text())
    for name in ("ema", "augment"):
        del state["hyper_parameters"][name]
    (tmp_path / "Model" / "state.json").write_text(json.dumps(state))
    return state


@pytest.mark.slow
def test_a_checkpoint_from_before_ema_and_augment_continues_with_todays_defaults_recorded(trained, faces_dir,
                                                                                          tmp_path, capsys):
    old_checkpoint(trained, tmp_path)
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5"))
    assert "Continuing with --ema 0.998 (until now 0.0), --augment color,translation,cutout (until now none) " \
           "from step 2: G_ema starts as a copy of G." in capsys.readouterr().out
    state = saved_state(tmp_path)
    assert (state["hyper_parameters"]["ema"], state["hyper_parameters"]["augment"]) == (0.998,
                                                                                        "color,translation,cutout")
    assert state["changes"] == [{"step": 2, "ema": 0.998, "augment": "color,translation,cutout"}]
    assert state["global_step"] == 4 and (tmp_path / "Model" / "G_ema.safetensors").exists()


@pytest.mark.slow
def test_original_flags_continue_a_checkpoint_from_before_ema_and_augment_with_both_off(trained, faces_dir, tmp_path):
    old_checkpoint(trained, tmp_path)
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5", "--ema", "0", "--augment", "none"))
    state = saved_state(tmp_path)
    assert (state["hyper_parameters"]["ema"], state["hyper_parameters"]["augment"]) == (0.0, "none")
    assert state["changes"] == [] and not (tmp_path / "Model" / "G_ema.safetensors").exists()


@pytest.mark.slow
def test_ema_and_augment_turned_on_when_continuing_start_g_ema_from_g_and_are_recorded(trained, faces_dir, tmp_path,
                                                                                       monkeypatch, capsys):
    old_checkpoint(trained, tmp_path)
    loaded = load_file(str(tmp_path / "Model" / "G.safetensors"))
    monkeypatch.setattr(Recipe.MovingAverage, "update", lambda self: None)  # G_ema stays where it started
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5", "--ema", "0.5", "--augment",
                          "translation"))
    assert "Continuing with --ema 0.5 (until now 0.0), --augment translation (until now none) from step 2: " \
           "G_ema starts as a copy of G." in capsys.readouterr().out
    state = saved_state(tmp_path)
    assert state["changes"] == [{"step": 2, "ema": 0.5, "augment": "translation"}]
    assert (state["hyper_parameters"]["ema"], state["hyper_parameters"]["augment"]) == (0.5, "translation")
    g_ema = load_file(str(tmp_path / "Model" / "G_ema.safetensors"))
    weights = [key for key in loaded if not key.endswith(("._mean", "._variance"))]  # statistics are refitted
    assert g_ema.keys() == loaded.keys() and all(np.array_equal(g_ema[key], loaded[key]) for key in weights)


@pytest.mark.slow
def test_ema_turned_off_when_continuing_leaves_g_ema_out_and_other_changes_are_refused(ema_model, faces_dir, tmp_path,
                                                                                       capsys):
    subprocess.run(["cp", "-a", str(ema_model), str(tmp_path / "Model")], check=True)
    with pytest.raises(UserError, match=r"--batch-size 8 \(checkpoint: 4\)"):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--ema", "0", "--batch-size", "8"))
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--ema", "0"))
    assert "Continuing with --ema 0.0 (until now 0.9) from step 2: G_ema is left out of the next checkpoint." \
           in capsys.readouterr().out
    assert saved_state(tmp_path)["changes"] == [{"step": 2, "ema": 0.0}]
    assert not (tmp_path / "Model" / "G_ema.safetensors").exists()


@pytest.mark.slow
def test_a_lower_lr_when_continuing_is_what_adam_steps_with_and_is_recorded(trained, faces_dir, tmp_path,
                                                                            monkeypatch, capsys):
    subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(tmp_path / "Model")], check=True)
    rates, step = [], Recipe.train_step
    monkeypatch.setattr(Recipe, "train_step", lambda players, *rest:
                        rates.append((players.opt_g.get_lr(), players.opt_d.get_lr())) or step(players, *rest))
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5", "--lr", "1e-4", "--d-lr", "3e-4"))
    assert "Continuing with --lr 0.0001 (until now 0.0002), --d-lr 0.0003 (until now 0.0004) from step 2." \
        in capsys.readouterr().out
    assert rates == [(1e-4, 3e-4)] * 2  # Adam's loaded state does not bring the old rates back
    state = saved_state(tmp_path)
    assert state["hyper_parameters"]["lr"] == 1e-4 and state["changes"] == [{"step": 2, "lr": 1e-4, "d_lr": 3e-4}]


@pytest.mark.parametrize("flag, value, words", [("--ema", "1", "is not a number from 0 up to (not including) 1"),
                                                ("--ema", "-0.1", "is not a number from 0"),
                                                ("--augment", "colour", "is not none or a comma-separated list of "
                                                                        "color, translation, cutout")])
def test_a_wrong_ema_or_augment_is_refused_by_the_parser(flag, value, words, capsys):
    with pytest.raises(SystemExit) as refused:
        Train.parse_args([flag, value])
    assert refused.value.code == 2
    assert f"argument {flag}: '{value}' {words}" in capsys.readouterr().err


# ------------------------------------------------------------------- G_ema in the checkpoint

def test_a_checkpoint_without_g_ema_removes_the_g_ema_of_the_one_it_replaces(tmp_path):
    ModelFolder(tmp_path).save(*small_networks(step=1))
    networks, optimizers, state = small_networks(step=2)
    del networks["G_ema"]
    ModelFolder(tmp_path).save(networks, optimizers, state)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["D.pdopt", "D.safetensors", "G.pdopt",
                                                                "G.safetensors", "state.json"]
    assert Checkpoint.generator_file(tmp_path) == tmp_path / "G.safetensors"


def test_a_missing_g_ema_is_refused_in_one_sentence(tmp_path):
    ModelFolder(tmp_path).save(*small_networks(step=1))
    (tmp_path / "G_ema.safetensors").unlink()
    folder = ModelFolder(tmp_path)
    with pytest.raises(UserError, match=r"G_ema.safetensors is missing from the checkpoint that state.json "
                                        r"describes; put it back, or start over with --fresh"):
        folder.load(*small_networks(step=0)[:2], folder.read_state())


# ----------------------------------------------------------------- drawing with G_ema or G

@pytest.mark.slow
def test_run_py_draws_with_g_ema_and_says_so_and_with_g_under_raw_g(ema_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tiny = ["--model-dir", str(ema_model), "--device", "cpu", "--seed", "3", "--grid", "2x2", "--dims", "0",
            "--steps", "2"]
    Run.main([*tiny, "--output", str(tmp_path / "ema")])
    assert f"with {ema_model / 'G_ema.safetensors'}, the averaged generator" in capsys.readouterr().out
    Run.main([*tiny, "--output", str(tmp_path / "raw"), "--raw-g"])
    assert f"with {ema_model / 'G.safetensors'}, the trained generator" in capsys.readouterr().out
    assert (tmp_path / "ema" / "avatars.png").read_bytes() != (tmp_path / "raw" / "avatars.png").read_bytes()
    assert len(list((tmp_path / "cache" / "avatar-generator").iterdir())) == 2  # one export per weights file


def test_the_exported_g_ema_draws_what_the_dynamic_g_ema_draws(ema_model, tmp_path, monkeypatch, on_cpu):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    noise = Utils.random_noise(np.random.default_rng(0), 4)
    fast = Drawing.load_generator_for_inference(ema_model)
    assert isinstance(fast, Drawing.ExportedGenerator)
    with paddle.no_grad():
        expected = Checkpoint.load_generator(ema_model)(paddle.to_tensor(noise)).numpy()
        raw = Checkpoint.load_generator(ema_model, raw_g=True)(paddle.to_tensor(noise)).numpy()
    assert np.abs(fast(noise) - expected).max() < 1e-4 < np.abs(raw - expected).max()


def test_evaluate_measures_g_ema_and_g_under_raw_g(ema_model, faces_dir, tmp_path):
    averaged = Metrics.measure_model(ema_model, faces_dir, None, 4, 0, tmp_path / "ema")
    trained = Metrics.measure_model(ema_model, faces_dir, None, 4, 0, tmp_path / "raw", raw_g=True)
    assert averaged["candidates"] == str(ema_model / "G_ema.safetensors")
    assert trained["candidates"] == str(ema_model / "G.safetensors")
    assert averaged["swd_mean"] != trained["swd_mean"]


@pytest.mark.slow
def test_figures_draws_with_g_ema_and_records_it(ema_model, faces_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    Figures.main(["--model-dir", str(ema_model), "--train", str(faces_dir), "--n", "4", "--output", str(tmp_path)])
    assert json.loads((tmp_path / "figures.json").read_text())["generator"] == str(ema_model / "G_ema.safetensors")
    assert json.loads((tmp_path / "metrics.json").read_text())["candidates"] == str(ema_model / "G_ema.safetensors")
    assert Figures.parse_args(["--raw-g"]).raw_g and not Figures.parse_args([]).raw_g
