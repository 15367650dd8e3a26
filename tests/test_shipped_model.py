"""The generator shipped in Model/: a fresh clone's `python Run.py` draws from it, the files stay
within the size budget, and its samples are not collapsed."""
import Utils

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

import Checkpoint
import Drawing
import Recipe
import Train
from Checkpoint import RunState
from conftest import ROOT, run_script

MODEL = ROOT / "Model"
SHIPPED = {"G.safetensors", "G_ema.safetensors", "D.safetensors", "state.json", "evaluations.json"}


@pytest.fixture(autouse=True)
def shipped_model_untouched():
    """Training into Model/ replaces the shipped model with the user's own: then these tests skip."""
    changed = subprocess.run(["git", "status", "--porcelain", "--", *SHIPPED], cwd=MODEL,
                             capture_output=True, text=True)
    if changed.returncode != 0:
        pytest.skip("not a git checkout, so the shipped model cannot be told from a retrained one")
    if changed.stdout.strip():
        pytest.skip("Model/ holds a model trained here, not the shipped one (git status shows it changed)")


def test_the_shipped_files_are_tracked_without_optimizer_state_and_within_30_mb():
    tracked = subprocess.run(["git", "ls-files"], cwd=MODEL, capture_output=True, text=True).stdout.split()
    assert set(tracked) == SHIPPED | {"README.md"}
    assert sum((MODEL / name).stat().st_size for name in SHIPPED) <= 30 * 2**20


def test_state_json_says_how_the_model_was_trained():
    state = json.loads((MODEL / "state.json").read_text())
    assert state["epochs_done"] >= 1
    assert 0 <= state["batches_done"] < state["steps_per_epoch"]  # mid-epoch is fine: Train.py continues there
    assert len(state["losses"]["g"]) == state["global_step"]
    # Its stretches of training, each recorded by the Train.py that ran it, join up to its last step.
    stretches = state["stretches"]
    assert stretches[-1]["to_step"] == state["global_step"]
    assert all(before["to_step"] == after["from_step"] for before, after in zip(stretches, stretches[1:]))
    assert all(stretch["cpu_seconds"] > 0 for stretch in stretches)
    # `python Train.py` continues it with its own recipe, and with today's --ema, --augment, --flip
    # and --d-lr where it was trained before those existed.
    settled, changed = Train.settle_hyper_parameters(Train.parse_args([]),
                                                     RunState.from_json(state, MODEL / "state.json"))
    defaults = {name: hp.default for name, hp in Recipe.HYPER_PARAMETERS.items()}
    assert settled == {**defaults, **state["hyper_parameters"]}
    assert changed == {name: defaults[name] for name in ("ema", "augment", "flip", "d_lr")
                       if name not in state["hyper_parameters"]}
    assert set(settled) == set(Recipe.HYPER_PARAMETERS)


@pytest.mark.slow
def test_run_py_with_its_defaults_draws_from_the_shipped_generator(tmp_path):
    result = run_script("Run.py", "--dims", "0,1", "--seed", "3", "--output", tmp_path)
    assert "with Model/G_ema.safetensors, the averaged generator" in result.stdout
    assert Image.open(tmp_path / "avatars.png").size == (8 * 96, 8 * 96)


def test_the_shipped_generator_draws_different_faces_for_different_noise():
    generator = Checkpoint.load_generator(MODEL)
    samples = Drawing.generate(generator, Utils.random_noise(np.random.default_rng(0), 64))
    assert Utils.sample_spread(samples) > 20  # a collapsed generator scores near 0, real faces about 65


def test_the_evaluation_history_ends_at_the_shipped_step_with_the_published_metrics():
    history = json.loads((MODEL / "evaluations.json").read_text())
    state = json.loads((MODEL / "state.json").read_text())
    last = history["evaluations"][-1]
    assert last["step"] == state["global_step"]
    assert {entry["run"] for entry in history["evaluations"]} == {state["run"]}  # one run's curve
    published = json.loads((ROOT / "Res" / "metrics.json").read_text())
    for key in ("swd_mean", "ms_ssim_candidates", "nearest_median_candidates"):  # threads add in varying order
        assert last[key] == pytest.approx(published[key], rel=1e-4)
    assert history["floor"]["swd_mean"] < last["swd_mean"]
