"""Train.py: the schedule runs, checkpoints are complete and atomic, resuming is exact, mistakes
end in one sentence."""
import Utils

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

import Checkpoint
import Recipe
import Train
from conftest import ROOT, run_script
from Files import UserError
from Net import Generator

CHECKPOINT_FILES = {"G.safetensors", "D.safetensors", "G.pdopt", "D.pdopt", "state.json"}


def train_args(data, run, *extra):
    """Flags for a tiny CPU run: 8 faces, 2 batches of 4 per epoch."""
    return ["--data", str(data), "--limit", "8", "--batch-size", "4", "--seed", "11", "--sample-every", "0",
            "--num-workers", "0", "--device", "cpu", "--model-dir", str(run / "Model"), "--output", str(run / "Output"),
            *extra]


def saved_state(run):
    return json.loads((run / "Model" / "state.json").read_text())


def test_one_epoch_writes_every_checkpoint_file_a_titled_grid_and_a_loss_curve(trained):
    run, result = trained
    assert CHECKPOINT_FILES <= {path.name for path in (run / "Model").iterdir()}
    assert not [path for path in (run / "Model").iterdir() if "tmp" in path.name]
    grids = sorted(path.name for path in (run / "Output").glob("epoch_*.png"))
    assert grids == ["epoch_0001_batch_0001.png", "epoch_0001_batch_0002.png"]
    assert (run / "Output" / "loss.png").stat().st_size > 10_000
    spread = json.loads((run / "Model" / "state.json").read_text())["spread"]
    assert [step for step, _ in spread] == [1, 2]  # every batch (the second is also the epoch's end)
    assert all(value > 0 for _, value in spread)
    assert "Done: 1 epochs, 2 steps" in result.stdout


def test_spread_measures_how_much_samples_differ():
    assert Utils.sample_spread(np.zeros((4, 96, 96, 3), np.uint8)) == 0
    two = np.stack([np.zeros((96, 96, 3), np.uint8), np.full((96, 96, 3), 100, np.uint8)])
    assert Utils.sample_spread(two) == 50


def test_state_json_records_progress_hyper_parameters_losses_and_versions(trained):
    state = json.loads((trained[0] / "Model" / "state.json").read_text())
    assert (state["epochs_done"], state["batches_done"], state["global_step"]) == (1, 0, 2)
    defaults = {name: hp.default for name, hp in Recipe.HYPER_PARAMETERS.items()}
    assert state["hyper_parameters"] == defaults | {"batch_size": 4, "seed": 5}
    assert set(state["hyper_parameters"]) == {"batch_size", "lr", "beta1", "g_steps", "init", "d_input_bn", "ema",
                                              "augment", "seed", "loss", "d_norm", "mbstd", "r1", "r1_every",
                                              "flip", "d_lr", "mode_seeking", "top_k", "cooldown"}
    assert all(len(values) == 2 for values in state["losses"].values())
    assert set(state["versions"]) == {"paddle", "numpy", "python"}


def test_weights_hold_batch_norm_statistics_and_load_without_pickle(trained):
    arrays = load_file(str(trained[0] / "Model" / "G.safetensors"))
    assert "residual.bn1._mean" in arrays and "residual.bn1._variance" in arrays
    assert not np.allclose(arrays["residual.bn1._mean"], 0)  # updated by training
    Checkpoint.load_weights(Generator(), trained[0] / "Model" / "G.safetensors")


@pytest.mark.slow
def test_two_epochs_equal_one_epoch_then_resume_then_one_more(faces_dir, tmp_path, capsys):
    Train.main(train_args(faces_dir, tmp_path / "straight", "--epochs", "2"))
    Train.main(train_args(faces_dir, tmp_path / "resumed", "--epochs", "1"))
    Train.main(train_args(faces_dir, tmp_path / "resumed", "--epochs", "2"))
    assert "Resuming from" in capsys.readouterr().out
    for name in ("G.safetensors", "D.safetensors"):
        straight = load_file(str(tmp_path / "straight" / "Model" / name))
        resumed = load_file(str(tmp_path / "resumed" / "Model" / name))
        assert max(np.abs(straight[key] - resumed[key]).max() for key in straight) < 1e-5
    losses = [saved_state(tmp_path / run)["losses"] for run in ("straight", "resumed")]
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_each_run_adds_a_stretch_with_its_machine_and_cpu_time_and_new_data_is_recorded(faces_dir, tmp_path, capsys):
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1"))
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--limit", "12"))  # 12 faces: 3 batches an epoch
    assert f"Continuing on 12 faces in {faces_dir} (until now 8 in {faces_dir})." in capsys.readouterr().out
    state = saved_state(tmp_path)
    assert [(stretch["from_step"], stretch["to_step"]) for stretch in state["stretches"]] == [(0, 2), (2, 5)]
    for stretch in state["stretches"]:
        assert stretch["machine"] == Utils.machine_name("cpu") and stretch["machine"].endswith(" cores")
        assert (stretch["processes"], stretch["threads"]) == (1, Utils.cpu_threads())
        assert 0 < stretch["cpu_seconds"] < 600
    assert state["changes"] == [{"step": 2, "data": str(faces_dir), "images": 12}]


@pytest.mark.slow
def test_a_checkpoint_without_adam_state_continues_and_says_adam_starts_afresh(faces_dir, tmp_path, capsys):
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1"))
    (tmp_path / "Model" / "G.pdopt").unlink()
    (tmp_path / "Model" / "D.pdopt").unlink()
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2"))
    assert "Adam starts afresh" in capsys.readouterr().out
    assert json.loads((tmp_path / "Model" / "state.json").read_text())["epochs_done"] == 2


@pytest.mark.slow
def test_other_hyper_parameters_than_the_checkpoints_are_refused(faces_dir, tmp_path):
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1"))
    with pytest.raises(UserError, match=r"--beta1 0.7 \(checkpoint: 0.5\).*--fresh"):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--beta1", "0.7"))
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1", "--beta1", "0.7", "--fresh"))
    assert json.loads((tmp_path / "Model" / "state.json").read_text())["hyper_parameters"]["beta1"] == 0.7


def test_refused_flags_are_named_as_given_beside_the_checkpoints_setting_and_original_says_it_set_them():
    original = Checkpoint.RunState(hyper_parameters={**Recipe.ORIGINAL, "seed": 1})
    with pytest.raises(UserError, match=r"--batch-size 8 \(checkpoint: 100\), --no-d-input-bn \(checkpoint: on\)"):
        Train.settle_hyper_parameters(Train.parse_args(["--no-d-input-bn", "--batch-size", "8"]), original)
    defaults = {name: hp.default for name, hp in Recipe.HYPER_PARAMETERS.items()}
    default = Checkpoint.RunState(hyper_parameters={**defaults, "seed": 1})
    with pytest.raises(UserError, match=r"--batch-size 100 \(checkpoint: 32\), .*; drop those flags \(and --original"):
        Train.settle_hyper_parameters(Train.parse_args(["--original"]), default)


@pytest.mark.slow
def test_a_write_interrupted_before_its_rename_leaves_the_old_checkpoint_loadable(faces_dir, tmp_path, monkeypatch):
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1"))
    model = tmp_path / "Model"
    before = {path.name: path.read_bytes() for path in model.iterdir()}

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    assert Train.main(train_args(faces_dir, tmp_path, "--epochs", "2")) == Train.STOPPED
    monkeypatch.undo()
    # The interrupted save left only its .incoming/ folder, which the next run discards; no stray temporary files.
    assert {path.name: path.read_bytes() for path in model.iterdir() if path.name != ".incoming"} == before
    Checkpoint.load_weights(Generator(), model / "G.safetensors")


@pytest.mark.slow
def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(faces_dir, tmp_path, monkeypatch):
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1"))
    before = (tmp_path / "Model" / "G.safetensors").read_bytes()
    real_step = Recipe.train_step

    def diverging(*args, **kwargs):
        result = real_step(*args, **kwargs)
        return result._replace(g=result.g * float("nan"))

    monkeypatch.setattr(Recipe, "train_step", diverging)
    with pytest.raises(UserError, match=r"losses became .*nan.*last checkpoint .* was kept"):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "2"))
    assert (tmp_path / "Model" / "G.safetensors").read_bytes() == before


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_mid_epoch_and_the_run_continues_from_it(faces_dir, tmp_path):
    args = train_args(faces_dir, tmp_path, "--epochs", "200")
    process = subprocess.Popen([sys.executable, "Train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    state_file = tmp_path / "Model" / "state.json"
    deadline = time.time() + 300
    while not state_file.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Run the same command to continue" in out
    state = json.loads(state_file.read_text())
    assert state["global_step"] == 2 * state["epochs_done"] + state["batches_done"] >= 3
    assert not [path for path in (tmp_path / "Model").iterdir() if "tmp" in path.name]
    resumed = run_script("Train.py", *train_args(faces_dir, tmp_path, "--epochs", str(state["epochs_done"] + 1)))
    assert f"{state['batches_done']} batches done" in resumed.stdout
    assert json.loads(state_file.read_text())["global_step"] == 2 * (state["epochs_done"] + 1)


def test_a_missing_data_folder_is_one_sentence_not_a_traceback(tmp_path):
    result = run_script("Train.py", "--data", tmp_path / "nowhere", "--model-dir", tmp_path / "Model", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nowhere does not exist" in result.stderr and "Pretreatment/" in result.stderr


def test_too_few_images_for_one_batch_is_explained(faces_dir, tmp_path):
    with pytest.raises(UserError, match="do not fill one batch of 32"):
        Train.main(["--data", str(faces_dir), "--model-dir", str(tmp_path / "Model"), "--device", "cpu"])


@pytest.mark.slow
def test_two_cpu_processes_split_the_data_and_only_rank_0_writes(faces_dir, tmp_path):
    """The several-GPU launch, run on CPU processes (gloo): each rank trains on its share."""
    result = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
         str(tmp_path / "log"), "Train.py", *train_args(faces_dir, tmp_path, "--epochs", "1")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    logs = {rank: (tmp_path / "log" / f"workerlog.{rank}").read_text() for rank in (0, 1)}
    assert result.returncode == 0, logs
    assert "Training on cpu (2 process(es)), 8 faces, 1 batches of 4" in logs[0]
    assert "Training on" not in logs[1] and "Done" not in logs[1]
    assert json.loads((tmp_path / "Model" / "state.json").read_text())["global_step"] == 1
    assert CHECKPOINT_FILES <= {path.name for path in (tmp_path / "Model").iterdir()}


@pytest.mark.slow
def test_cache_device_trains_exactly_as_the_loader_does(faces_dir, tmp_path):
    Train.main(train_args(faces_dir, tmp_path / "loader", "--epochs", "1", "--flip"))
    Train.main(train_args(faces_dir, tmp_path / "device", "--epochs", "1", "--flip", "--cache-device"))
    losses = [saved_state(tmp_path / run)["losses"] for run in ("loader", "device")]
    assert losses[0] == losses[1]


def test_amp_on_a_cpu_is_refused_in_one_sentence(faces_dir, tmp_path):
    with pytest.raises(UserError, match="--amp .* is for GPUs"):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "1", "--amp"))


@pytest.mark.slow
def test_the_dcgan_stabilisers_are_recorded_and_kept_on_resume(faces_dir, tmp_path):
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1", "--init", "dcgan", "--no-d-input-bn"))
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2"))  # resumes with the checkpoint's settings
    state = json.loads((tmp_path / "Model" / "state.json").read_text())
    assert state["hyper_parameters"]["init"] == "dcgan" and state["hyper_parameters"]["d_input_bn"] is False
    assert "features.0.1._mean" not in load_file(str(tmp_path / "Model" / "D.safetensors"))
    with pytest.raises(UserError, match="--init paddle"):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "3", "--init", "paddle"))


def test_the_readmes_table_of_hyper_parameters_says_the_defaults_train_py_uses():
    import re

    section = (ROOT / "README.md").read_text().split("## Hyper-parameters\n")[1].split("\n## ")[0]
    rows = dict(re.findall(r"^\| `(--[\w-]+)` \| ([^|]+?) \|", section, re.M))
    defaults = {"--" + name.replace("_", "-"): hp.default for name, hp in Recipe.HYPER_PARAMETERS.items()}
    defaults["--epochs"] = Train.parse_args([]).epochs
    shown = {flag: value for flag, value in rows.items() if flag in defaults}
    assert set(shown) >= {"--lr", "--beta1", "--batch-size", "--epochs", "--g-steps", "--init", "--ema", "--augment"}
    for flag, value in shown.items():
        if defaults[flag] is None:  # --seed: drawn at random
            continue
        assert (float(value) if isinstance(defaults[flag], float) else type(defaults[flag])(value)) == defaults[flag]


@pytest.mark.slow
def test_warnings_read_as_sentences_and_name_links_to_missing_files(faces_dir, tmp_path):
    data = tmp_path / "faces"
    data.mkdir()
    for path in sorted(faces_dir.iterdir())[:8]:
        (data / path.name).symlink_to(path.resolve())
    (data / "broken.png").write_bytes(b"not a picture")
    (data / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    result = run_script("Train.py", *train_args(data, tmp_path, "--epochs", "1", "--limit", "10"))
    assert f"warning: 2 of 10 files in {data} could not be read and were skipped (first: {data / 'broken.png'}); " \
           f"1 of them link to a missing file (first: {data / 'gone.jpg'}).\n" in result.stderr
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["data is a file", "no data", "too few faces", "a conflicting flag"])
def test_a_refused_run_says_why_in_one_sentence_and_leaves_no_folder_behind(trained, faces_dir, tmp_path, problem):
    new = tmp_path / "new"
    flags = {"data is a file": ["--data", str(ROOT / "README.md")],
             "no data": ["--data", str(tmp_path / "nowhere")],
             "too few faces": ["--batch-size", "64"],
             "a conflicting flag": ["--beta1", "0.9", "--model-dir", str(new / "copy" / "Model")]}[problem]
    if problem == "a conflicting flag":
        (new / "copy").mkdir(parents=True)
        subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(new / "copy" / "Model")], check=True)
        (new / "copy" / "Model" / ".lock").unlink(missing_ok=True)
        before = sorted(new.rglob("*"))
    result = run_script("Train.py", *train_args(faces_dir, new, "--epochs", "1", *flags), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    if problem == "data is a file":
        assert "README.md is a file, not a folder" in result.stderr
    if problem == "a conflicting flag":
        assert sorted(new.rglob("*")) == before  # no --output made; the checkpoint's folder as it was, no lock file
    else:
        assert not new.exists()


@pytest.mark.slow
def test_a_run_stopped_after_an_epochs_last_batch_ends_that_epoch_when_resumed(trained, faces_dir, tmp_path):
    """A stop on an epoch's last batch saves it before the epoch's end is counted, so the resumed
    run has no step left to take: it counts the end and says so, without a step time."""
    subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(tmp_path / "Model")], check=True)
    state = saved_state(tmp_path)
    state.update(epochs_done=0, batches_done=state["steps_per_epoch"])  # as such a stop leaves it
    (tmp_path / "Model" / "state.json").write_text(json.dumps(state))
    result = run_script("Train.py", *train_args(faces_dir, tmp_path, "--epochs", "1", "--seed", "5"))
    assert f"Done: 1 epochs, {state['global_step']} steps" in result.stdout
    assert "step took" not in result.stdout and "Warning" not in result.stderr, result.stdout + result.stderr
    assert saved_state(tmp_path)["epochs_done"] == 1


@pytest.mark.slow
def test_save_every_checkpoints_within_the_epoch_and_changes_nothing_trained(faces_dir, tmp_path, monkeypatch):
    saved, save = [], Train.checkpoint

    def recording(session):
        save(session)
        saved.append(Checkpoint.ModelFolder(session.folder.path).read_state().where())

    monkeypatch.setattr(Train, "checkpoint", recording)
    Train.main(train_args(faces_dir, tmp_path / "every", "--epochs", "2", "--save-every", "1"))
    assert saved == ["step 1 (epoch 1, batch 1)", "step 2 (end of epoch 1)", "step 3 (epoch 2, batch 1)",
                     "step 4 (end of epoch 2)"]
    saved.clear()
    Train.main(train_args(faces_dir, tmp_path / "ends", "--epochs", "2"))
    assert saved == ["step 2 (end of epoch 1)", "step 4 (end of epoch 2)"]
    for name in ("G.safetensors", "D.safetensors", "G_ema.safetensors"):
        every, ends = (load_file(str(tmp_path / run / "Model" / name)) for run in ("every", "ends"))
        assert all(np.array_equal(every[key], ends[key]) for key in every)


def ctrl_c_in_the_first_step(monkeypatch, times):
    """Press Ctrl-C `times` times during the next training step of Train.main in this process."""
    real_step = Recipe.train_step

    def interrupted(*args, **kwargs):
        monkeypatch.setattr(Recipe, "train_step", real_step)
        for _ in range(times):
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(Recipe, "train_step", interrupted)


def copy_of_trained(trained, tmp_path):
    subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(tmp_path / "Model")], check=True)
    return (tmp_path / "Model" / "G.safetensors").read_bytes()


@pytest.mark.slow
def test_ctrl_c_in_the_first_step_of_fresh_keeps_the_trained_checkpoint_aside_and_says_where(trained, faces_dir,
                                                                                            tmp_path, capsys,
                                                                                            monkeypatch):
    trained_g = copy_of_trained(trained, tmp_path)
    ctrl_c_in_the_first_step(monkeypatch, 1)
    assert Train.main(train_args(faces_dir, tmp_path, "--fresh", "--epochs", "5")) == Train.STOPPED
    out, err = capsys.readouterr()
    aside = [path for path in (tmp_path / "Model").iterdir() if path.name.startswith("before-fresh-")]
    assert len(aside) == 1 and out.splitlines()[0] == (
        f"--fresh: starting over; the checkpoint in {tmp_path / 'Model'} stays there until this run's first "
        f"checkpoint, which keeps it in {aside[0]} (to bring it back, stop this run, delete the checkpoint files in "
        f"{tmp_path / 'Model'} and move that folder's files there).")
    assert "Stopping after this step, with a checkpoint (Ctrl-C again stops at once, without it)." in err
    assert out.splitlines()[-1] == (f"Stopped at step 1 (epoch 1, batch 1); checkpoint saved to "
                                    f"{tmp_path / 'Model'}. Run the same command to continue.")
    assert saved_state(tmp_path)["global_step"] == 1  # the new run's
    assert (aside[0] / "G.safetensors").read_bytes() == trained_g  # the trained run, whole
    assert json.loads((aside[0] / "state.json").read_text())["global_step"] == 2
    assert CHECKPOINT_FILES <= {path.name for path in aside[0].iterdir()}


def test_a_second_ctrl_c_stops_at_once_and_the_last_line_names_the_checkpoint_kept(trained, faces_dir, tmp_path,
                                                                                  capsys, monkeypatch):
    trained_g = copy_of_trained(trained, tmp_path)
    ctrl_c_in_the_first_step(monkeypatch, 2)
    assert Train.main(train_args(faces_dir, tmp_path, "--epochs", "5", "--seed", "5")) == Train.STOPPED
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"Stopped at once, without saving the steps since the last checkpoint: the last checkpoint in "
        f"{tmp_path / 'Model'}, of step 2 (end of epoch 1), was kept.")
    assert (tmp_path / "Model" / "G.safetensors").read_bytes() == trained_g

    ctrl_c_in_the_first_step(monkeypatch, 2)
    assert Train.main(train_args(faces_dir, tmp_path, "--fresh", "--epochs", "5")) == Train.STOPPED
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        f"no checkpoint of this run was written, so {tmp_path / 'Model'} still holds the one --fresh started over "
        f"from.")
    assert (tmp_path / "Model" / "G.safetensors").read_bytes() == trained_g
    assert not list((tmp_path / "Model").glob("before-fresh-*"))  # nothing was replaced, so nothing set aside


@pytest.mark.slow
def test_ctrl_c_during_a_save_lets_the_save_finish(trained, faces_dir, tmp_path, capsys, monkeypatch):
    copy_of_trained(trained, tmp_path)
    ctrl_c_in_the_first_step(monkeypatch, 1)
    real_save = Checkpoint.ModelFolder.save

    def interrupted_save(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Checkpoint.ModelFolder, "save", interrupted_save)
    assert Train.main(train_args(faces_dir, tmp_path, "--epochs", "5", "--seed", "5")) == Train.STOPPED
    out, err = capsys.readouterr()
    assert "Saving the checkpoint; training stops as soon as it is written." in err
    assert out.splitlines()[-1].startswith("Stopped at step 3 (epoch 2, batch 1); checkpoint saved to")
    assert saved_state(tmp_path)["global_step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("where", ["save-every", "epoch end"])
def test_a_first_ctrl_c_during_a_save_stops_right_after_it(faces_dir, tmp_path, capsys, monkeypatch, where):
    real_save = Checkpoint.ModelFolder.save
    saves = []

    def interrupted_save(self, networks, optimizers, state, *args, **kwargs):
        saves.append(state.global_step)
        if len(saves) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(self, networks, optimizers, state, *args, **kwargs)

    monkeypatch.setattr(Checkpoint.ModelFolder, "save", interrupted_save)
    every = ("--save-every", "1") if where == "save-every" else ()
    assert Train.main(train_args(faces_dir, tmp_path, "--epochs", "5", *every)) == Train.STOPPED
    expected = 1 if where == "save-every" else 2
    assert saves == [expected] and saved_state(tmp_path)["global_step"] == expected  # no step after it, no 2nd save
    assert "Saving the checkpoint; training stops as soon as it is written." in capsys.readouterr().err


def test_too_many_loader_workers_are_refused_in_one_sentence(capsys):
    with pytest.raises(SystemExit) as refused:
        Train.parse_args(["--num-workers", "1000000"])
    assert refused.value.code == 2
    assert "argument --num-workers: '1000000' is not a whole number from 0 to 32" in capsys.readouterr().err


def children_of(pid):
    children = []
    for stat in os.listdir("/proc"):
        try:
            fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat))
    return children


def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the workers' parent-death signal is Linux's")
def test_loader_workers_end_when_train_py_is_killed(faces_dir, tmp_path):
    process = subprocess.Popen([sys.executable, "Train.py", *train_args(faces_dir, tmp_path, "--epochs", "1000",
                                                                         "--num-workers", "2")],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.time() + 300, []
        while len(workers) < 2 and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
            workers = children_of(process.pid)
        assert len(workers) >= 2, "the loader's workers never started"
    finally:
        process.kill()  # SIGKILL: no handler of Train.py's runs
        process.wait()
    deadline = time.time() + 5  # at once, where Paddle's own watch of the parent may take far longer
    while any(map(alive, workers)) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(map(alive, workers))
