"""Train.py --visualdl: what it logs, read back with VisualDL's own LogReader; without VisualDL
installed, one sentence before any work."""
import importlib.util
import io
import sys

import numpy as np
import pytest
from PIL import Image

import Recipe
import Train
from conftest import require
from Files import UserError
from test_train import saved_state, train_args


def visualdl_log(output):
    """The one log file of the run in output/visualdl, opened with VisualDL's LogReader."""
    from visualdl import LogReader

    files = list((output / "visualdl").glob("*/vdlrecords.*.log"))
    assert len(files) == 1, files
    return LogReader(file_path=str(files[0]))


def scalars(log, tag):
    steps, values = zip(*[(record.id, record.value) for record in log.get_data("scalar", tag)])
    return list(steps), np.asarray(values)


@pytest.mark.slow
def test_visualdl_logs_every_step_and_grid_and_a_resume_goes_on_in_the_same_log(faces_dir, tmp_path):
    require(importlib.util.find_spec("visualdl"), "VisualDL is not installed (pip install -r requirements-dev.txt)")
    for epochs in ("1", "2"):  # 2 steps each, a sample grid after every step
        Train.main(train_args(faces_dir, tmp_path, "--epochs", epochs, "--sample-every", "1", "--visualdl"))
    state, log = saved_state(tmp_path), visualdl_log(tmp_path / "Output")
    losses = {key: np.asarray(values) for key, values in state["losses"].items()}

    steps, g_loss = scalars(log, "loss/G")
    assert steps == [1, 2, 3, 4] and np.allclose(g_loss, losses["g"], atol=1e-4)
    assert np.allclose(scalars(log, "loss/D")[1], losses["d_fake"] + losses["d_real"], atol=1e-4)
    assert np.allclose(scalars(log, "loss/D_fake")[1], losses["d_fake"], atol=1e-4)
    assert np.allclose(scalars(log, "loss/D_real")[1], losses["d_real"], atol=1e-4)
    for network, rate in (("G", 2e-4), ("D", 4e-4)):
        assert np.allclose(scalars(log, f"learning_rate/{network}")[1], rate)
    assert (scalars(log, "speed/images_per_second")[1] > 0).all()
    spread_steps, spread = scalars(log, "samples/spread")
    assert spread_steps == [step for step, _ in state["spread"]] == [1, 2, 3, 4]
    assert np.allclose(spread, [value for _, value in state["spread"]], atol=0.01)
    r_t_steps, r_t = scalars(log, "diagnostics/r_t")  # D's overfitting signal, once an epoch
    assert r_t_steps == [entry["step"] for entry in state["overfitting"]] == [2, 4]
    assert np.allclose(r_t, [entry["r_t"] for entry in state["overfitting"]], atol=1e-4)

    grids = log.get_data("image", "samples/fixed_noise")
    assert [grid.id for grid in grids] == [1, 2, 3, 4]
    with Image.open(io.BytesIO(grids[-1].image.encoded_image_string)) as image:
        assert image.size == (8 * 96, 8 * 96)


@pytest.mark.slow
def test_visualdl_is_no_hyper_parameter_so_a_resume_may_leave_it_out(faces_dir, tmp_path):
    require(importlib.util.find_spec("visualdl"), "VisualDL is not installed (pip install -r requirements-dev.txt)")
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1", "--visualdl"))
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2"))
    assert "visualdl" not in Recipe.HYPER_PARAMETERS and "visualdl" not in saved_state(tmp_path)["hyper_parameters"]
    assert saved_state(tmp_path)["global_step"] == 4
    assert scalars(visualdl_log(tmp_path / "Output"), "loss/G")[0] == [1, 2]


def test_visualdl_not_installed_is_one_sentence_before_any_work(faces_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "visualdl", None)  # what importing a missing package meets
    with pytest.raises(UserError, match=r"^--visualdl needs VisualDL, which requirements.txt leaves out: pip install "
                                        r"visualdl \(README.md, \"Training\"\), or train without --visualdl\.$"):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "1", "--visualdl"))
    assert not (tmp_path / "Model").exists() and not (tmp_path / "Output").exists()
