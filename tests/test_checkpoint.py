"""Nothing lost, ever: a checkpoint is one unit whatever kills its save, one Train.py writes a model
folder at a time, state is never guessed, and every mistake ends in one true sentence."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file, save_file

import Checkpoint
import Files
import Recipe
import Train
from Checkpoint import ModelFolder, RunState
from conftest import ROOT, run_script
from Files import UserError
from test_train import train_args

# A save of two small layers in a process that kills itself with SIGKILL at its N-th fsync or
# rename: the moments where a real crash leaves the disk in a new state.
SAVE_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import Checkpoint, Files, paddle
    from test_checkpoint import small_networks
    kill_at, events = int(sys.argv[3]), [0]
    def counted(function):
        def call(*args, **kwargs):
            events[0] += 1
            if events[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return call
    os.fsync, os.replace = counted(os.fsync), counted(os.replace)
    networks, optimizers, state = small_networks(step=2)
    Checkpoint.ModelFolder(sys.argv[2]).save(networks, optimizers, state)
    print(events[0])
""")


def small_networks(step):
    """Two small layers with Adam state and a third without (as Train.py --ema's G_ema), their
    weights a function of step, and a RunState at step."""
    paddle.seed(step)
    networks = {"G": paddle.nn.Linear(8, 4), "D": paddle.nn.Linear(4, 2), "G_ema": paddle.nn.Linear(8, 4)}
    optimizers = {name: paddle.optimizer.Adam(1e-3, parameters=networks[name].parameters()) for name in ("G", "D")}
    for name, optimizer in optimizers.items():
        networks[name](paddle.rand([3, networks[name].weight.shape[0]])).mean().backward()
        optimizer.step()
    state = RunState(hyper_parameters={"seed": 1}, run="testrun", global_step=step, epochs_done=step)
    return networks, optimizers, state


def weights(folder, name):
    return load_file(str(folder / f"{name}.safetensors"))


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(".") and path.name != ".lock")


@pytest.mark.slow
def test_a_save_killed_at_any_instant_leaves_the_last_complete_checkpoint(tmp_path):
    old = tmp_path / "old"
    ModelFolder(old).save(*small_networks(step=1))
    new = tmp_path / "new"
    ModelFolder(new).save(*small_networks(step=2))
    outcomes = []
    for kill_at in range(1, 100):
        folder = tmp_path / f"killed_{kill_at}"
        subprocess.run(["cp", "-a", str(old), str(folder)], check=True)
        died = subprocess.run([sys.executable, "-c", SAVE_AND_DIE, str(ROOT / "tests"), str(folder), str(kill_at)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        if died.returncode == 0:
            break  # kill_at is past the save's last event: every instant was tried
        assert died.returncode == -signal.SIGKILL, died.stderr
        ModelFolder(folder).recover()
        state = ModelFolder(folder).read_state()
        networks, optimizers, _ = small_networks(step=0)
        assert ModelFolder(folder).load(networks, optimizers, state)  # stamps agree, Adam included
        expected = old if state.global_step == 1 else new
        for name in ("G", "D", "G_ema"):
            assert all(np.array_equal(weights(folder, name)[key], weights(expected, name)[key])
                       for key in weights(expected, name))
        assert leftovers(folder) == []
        outcomes.append(state.global_step)
    assert kill_at > 10, died.stderr  # the save has many steps, and each was interrupted once
    assert outcomes[0] == 1 and outcomes[-1] == 2 and outcomes == sorted(outcomes)


def test_a_save_that_fails_keeps_the_last_checkpoint_and_no_temporary_files(tmp_path, monkeypatch):
    folder = ModelFolder(tmp_path)
    folder.save(*small_networks(step=1))
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    writes = []

    def disk_full_at_third_file(path, write):
        writes.append(path)
        if len(writes) == 3:
            raise OSError(28, "No space left on device")
        return real_write(path, write)

    real_write = Files.atomic_write
    monkeypatch.setattr(Files, "atomic_write", disk_full_at_third_file)
    with pytest.raises(UserError, match=r"checkpoint of step 2 .* could not be written .*No space left on device.*"
                                        r"still holds its last complete checkpoint"):
        folder.save(*small_networks(step=2))
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@contextmanager
def tmpfs(path, options):
    """A tmpfs mounted at path (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_a_full_disk_before_training_keeps_the_last_complete_checkpoint(faces_dir, tmp_path):
    # One checkpoint of the real networks takes about 60 MB: the first fits, a second beside it does not,
    # which the run finds before its first step.
    with tmpfs(tmp_path / "small", "size=100m") as small:
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "1", "--model-dir", str(small)))
        with pytest.raises(UserError, match=r"small has \d+ MB free, but a checkpoint needs about \d+ MB"):
            Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--model-dir", str(small)))
        assert json.loads((small / "state.json").read_text())["epochs_done"] == 1
        assert leftovers(small) == []
        # loads: every file's stamp agrees
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "1", "--model-dir", str(small)))


def test_an_interrupted_complete_save_is_finished_and_stray_temporary_files_removed(tmp_path, capsys):
    ModelFolder(tmp_path).save(*small_networks(step=1))
    incoming = tmp_path / Checkpoint.INCOMING
    networks, optimizers, state = small_networks(step=2)
    ModelFolder(tmp_path / "staged").save(networks, optimizers, state)
    incoming.mkdir()
    # the move stopped after the Adam files
    for name in ("G.safetensors", "D.safetensors", "G_ema.safetensors", "state.json"):
        os.replace(tmp_path / "staged" / name, incoming / name)
    for name in ("G.pdopt", "D.pdopt"):
        os.replace(tmp_path / "staged" / name, tmp_path / name)
    Files.write_json(sorted(os.listdir(incoming)) + ["G.pdopt", "D.pdopt"], incoming / Checkpoint.COMPLETE)
    (tmp_path / ".G.safetensors.tmp4242").write_bytes(b"half")  # left by an older version's crash
    assert "its move was finished" in ModelFolder(tmp_path).recover()
    assert ModelFolder(tmp_path).read_state().global_step == 2
    assert ModelFolder(tmp_path).load(*small_networks(step=0)[:2], ModelFolder(tmp_path).read_state())
    assert leftovers(tmp_path) == []


def test_an_incomplete_save_is_discarded(tmp_path):
    ModelFolder(tmp_path).save(*small_networks(step=1))
    (tmp_path / Checkpoint.INCOMING).mkdir()
    (tmp_path / Checkpoint.INCOMING / "G.safetensors").write_bytes(b"new but alone")
    assert "it was discarded" in ModelFolder(tmp_path).recover()
    assert ModelFolder(tmp_path).read_state().global_step == 1 and leftovers(tmp_path) == []


def test_files_of_two_checkpoints_are_refused_not_mixed(tmp_path):
    ModelFolder(tmp_path / "a").save(*small_networks(step=1))
    ModelFolder(tmp_path / "b").save(*small_networks(step=2))
    os.replace(tmp_path / "b" / "D.safetensors", tmp_path / "a" / "D.safetensors")
    folder = ModelFolder(tmp_path / "a")
    with pytest.raises(UserError, match=r"D.safetensors belongs to another checkpoint \(run testrun, step 2\) "
                                        r"than state.json \(run testrun, step 1\)"):
        folder.load(*small_networks(step=0)[:2], folder.read_state())


def test_adam_state_of_another_checkpoint_is_named_for_deletion(tmp_path):
    """As `git checkout Model/` leaves a trained model's Adam state beside the shipped weights, which
    come without any: deleting it, as the message says, lets the weights load with Adam afresh."""
    ModelFolder(tmp_path / "shipped").save(*small_networks(step=1))
    ModelFolder(tmp_path / "trained").save(*small_networks(step=2))
    adam = [tmp_path / "shipped" / Checkpoint.adam_file(name) for name in ("G", "D")]
    for path in adam:
        os.replace(tmp_path / "trained" / path.name, path)
    folder = ModelFolder(tmp_path / "shipped")
    with pytest.raises(UserError, match=f"; delete {adam[0]} and {adam[1]} to go on with Adam started afresh"):
        folder.load(*small_networks(step=0)[:2], folder.read_state())
    for path in adam:
        path.unlink()
    assert folder.load(*small_networks(step=0)[:2], folder.read_state()) is False


# ------------------------------------------------------------------------ state is never guessed

def copy_of_trained(trained, faces_dir, tmp_path):
    """A copy of the one-epoch checkpoint of conftest's `trained`, and the flags that continue it."""
    subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(tmp_path / "Model")], check=True)
    return tmp_path / "Model", train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5")


@pytest.mark.parametrize("text", [None, "null", "{}", "[1, 2]", '{"epochs_done": 1}', "{not json", "", "folder"],
                         ids=["deleted", "null", "empty-object", "list", "missing-keys", "invalid", "empty-file",
                              "a-folder"])
@pytest.mark.slow
def test_weights_without_a_usable_state_json_are_refused_and_kept(trained, faces_dir, tmp_path, text):
    model, args = copy_of_trained(trained, faces_dir, tmp_path)
    if text is None:
        (model / "state.json").unlink()
    elif text == "folder":
        (model / "state.json").unlink()
        (model / "state.json").mkdir()
    else:
        (model / "state.json").write_text(text)
    before = (model / "G.safetensors").read_bytes()
    with pytest.raises(UserError) as refused:
        Train.main(args)
    message = str(refused.value)
    assert "state.json cannot be used" in message and "weights beside it are intact" in message
    assert "--fresh" in message and "delete" not in message
    assert (model / "G.safetensors").read_bytes() == before


@pytest.mark.parametrize("change, words", [
    ({"epochs_done": "1"}, "its epochs_done is '1', not a whole number"),
    ({"global_step": -3}, "its global_step is negative"),
    ({"hyper_parameters": [1]}, "its hyper_parameters is [1], not an object"),
    ({"losses": {"g": []}}, "its losses are not the three lists"),
    ({"wall_seconds": None}, "its wall_seconds is None, not a number"),
    ({"batches_done": 1000}, "its batches_done, 1000, is more than an epoch's"),
    ({"losses": {"d_fake": ["a"], "d_real": [1.0], "g": [1.0]}}, "its losses are not the three lists of numbers"),
    ({"losses": {"d_fake": [1.0], "d_real": [], "g": [1.0]}}, "one number per step in each"),
])
@pytest.mark.slow
def test_a_state_json_with_wrong_values_is_one_sentence(trained, faces_dir, tmp_path, change, words):
    model, args = copy_of_trained(trained, faces_dir, tmp_path)
    state = json.loads((model / "state.json").read_text())
    (model / "state.json").write_text(json.dumps({**state, **change}))
    result = run_script("Train.py", *args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert words in result.stderr


@pytest.mark.parametrize("content", [b"", b"\x80\x04truncated", b"not a pickle at all"], ids=["empty", "truncated",
                                                                                              "foreign"])
@pytest.mark.slow
def test_a_damaged_adam_file_is_one_sentence_that_keeps_the_weights(trained, faces_dir, tmp_path, content):
    model, args = copy_of_trained(trained, faces_dir, tmp_path)
    (model / "D.pdopt").write_bytes(content)
    result = run_script("Train.py", *args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "D.pdopt is damaged or foreign" in result.stderr and "Adam started afresh" in result.stderr


def test_a_damaged_weights_file_says_to_put_back_a_good_copy_not_to_delete_it(trained, faces_dir, tmp_path):
    model, args = copy_of_trained(trained, faces_dir, tmp_path)
    (model / "G.safetensors").write_bytes(b"\x00" * 100)
    result = run_script("Train.py", *args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "G.safetensors is not a readable safetensors file" in result.stderr
    assert "Put back a good copy" in result.stderr and "delete" not in result.stderr


@pytest.mark.slow
def test_fresh_says_it_will_replace_the_checkpoint_there(trained, faces_dir, tmp_path, capsys):
    model, args = copy_of_trained(trained, faces_dir, tmp_path)
    (model / "state.json").unlink()
    Train.main([*args, "--fresh", "--limit", "4", "--epochs", "1"])
    assert "--fresh: starting over" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- one writer

def test_a_second_train_py_on_the_same_model_folder_refuses_at_once(faces_dir, tmp_path):
    holder = ModelFolder(tmp_path / "Model")
    holder.lock()  # as a running Train.py holds it
    started = time.time()
    result = run_script("Train.py", *train_args(faces_dir, tmp_path, "--epochs", "1"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"is being trained by another Train.py (pid {os.getpid()})" in result.stderr
    assert time.time() - started < 60 and not (tmp_path / "Model" / "state.json").exists()
    assert not (tmp_path / "Output").exists()  # the --output folder it would have made


def test_a_refusal_lets_go_of_the_lock_and_removes_the_lock_file_only_if_it_made_it(tmp_path):
    for had_lock_file in (False, True):
        folder = tmp_path / f"Model{had_lock_file}"
        folder.mkdir()
        if had_lock_file:
            (folder / ".lock").write_text("")
        refused = ModelFolder(folder)
        with pytest.raises(UserError, match="no"), refused.released_if_refused():
            refused.lock()
            raise UserError("no")
        assert (folder / ".lock").exists() == had_lock_file
        ModelFolder(folder).lock()  # free at once, in this process too


@pytest.mark.parametrize("ending", ["success", "another error"])
def test_a_run_that_is_not_refused_keeps_the_folder_locked(tmp_path, ending):
    kept = ModelFolder(tmp_path)
    with contextlib.suppress(RuntimeError), kept.released_if_refused():
        kept.lock()
        if ending == "another error":
            raise RuntimeError("not a refusal")
    with pytest.raises(Checkpoint.FolderBusy):
        ModelFolder(tmp_path).lock()
    assert (tmp_path / ".lock").exists()


def test_a_refused_run_removes_the_folder_it_made_while_it_still_holds_the_lock(faces_dir, tmp_path, monkeypatch):
    # Were the lock let go first, another run could lock the folder and then lose it to the clean-up.
    made, held_while_removed = tmp_path / "new" / "Model", []
    real_rmtree = Train.shutil.rmtree

    def rmtree(path, **options):
        with pytest.raises(Checkpoint.FolderBusy):
            ModelFolder(made).lock()
        held_while_removed.append(path)
        real_rmtree(path, **options)

    monkeypatch.setattr(Train.shutil, "rmtree", rmtree)
    with pytest.raises(UserError, match="batch"):  # refused after the lock, when the faces are counted
        Train.main(train_args(faces_dir, tmp_path / "new", "--epochs", "1", "--batch-size", "999"))
    assert held_while_removed[-1] == tmp_path / "new" and not (tmp_path / "new").exists()


def test_a_run_stopped_before_training_leaves_no_folder_and_no_lock(faces_dir, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while the faces load, as a user who started the wrong command does."""
    def stopped(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(Train, "load_faces", stopped)
    with pytest.raises(KeyboardInterrupt):
        Train.main(train_args(faces_dir, tmp_path / "new", "--epochs", "1"))
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "Model"
    existing.mkdir()
    with pytest.raises(KeyboardInterrupt):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "1"))  # --model-dir tmp_path / "Model"
    assert list(existing.iterdir()) == []  # the lock file it made is gone; the folder was there before
    assert not (tmp_path / "Output").exists()
    ModelFolder(existing).lock()


def test_a_lock_file_removed_while_another_run_waited_to_lock_it_is_not_shared(tmp_path, monkeypatch):
    # Run A opened the lock file, run B removed it and made a new one: A must lock the new file, not
    # the removed one, or two runs would each hold a lock.
    import fcntl

    lock_file, taken = tmp_path / ".lock", []

    def flock(handle, operation):
        if not taken:  # between A's open and A's lock, the file is replaced
            lock_file.unlink()
            lock_file.write_text("")
        taken.append(os.fstat(handle.fileno()).st_ino)

    monkeypatch.setattr(fcntl, "flock", flock)
    ModelFolder(tmp_path).lock()
    assert len(taken) == 2 and taken[-1] == lock_file.stat().st_ino


@pytest.mark.slow
def test_a_killed_run_leaves_no_stuck_lock(faces_dir, tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import Checkpoint, os, signal; "
            f"Checkpoint.ModelFolder({str(tmp_path / 'Model')!r}).lock(); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1"))
    assert json.loads((tmp_path / "Model" / "state.json").read_text())["epochs_done"] == 1


# ------------------------------------------------------------------------- check before the work

@pytest.mark.parametrize("flag", ["--output", "--model-dir"])
def test_a_folder_that_is_a_file_is_refused_before_any_training(faces_dir, tmp_path, flag):
    (tmp_path / "file").write_text("not a folder")
    result = run_script("Train.py", *train_args(faces_dir, tmp_path, "--epochs", "1"), flag, tmp_path / "file",
                        check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{flag} {tmp_path / 'file'} is a file, not a folder" in result.stderr
    assert "Training on" not in result.stdout


@pytest.mark.parametrize("options, words", [("ro,size=1m", "Read-only file system"),
                                            ("size=64k", "No space left on device")], ids=["read-only", "full"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_any_training(faces_dir, tmp_path, options, words):
    with tmpfs(tmp_path / "mnt", options) as mnt:
        if "ro" not in options:  # fill it
            subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'filler'}", "bs=4k", "count=100"], capture_output=True)
        result = run_script("Train.py", *train_args(faces_dir, tmp_path, "--epochs", "1"), "--output", mnt,
                            check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--output {mnt} cannot be written ({words})" in result.stderr
    assert "Training on" not in result.stdout


@pytest.mark.parametrize("flag, value", [("--beta1", "1.5"), ("--beta1", "-0.1"), ("--beta1", "1"), ("--lr", "-1"),
                                         ("--lr", "0"), ("--lr", "nan"), ("--lr", "inf"), ("--num-workers", "-1"),
                                         ("--seed", "-1"), ("--limit", "-5"), ("--limit", "0"),
                                         ("--batch-size", "0"), ("--g-steps", "0"), ("--epochs", "0"),
                                         ("--sample-every", "-1"), ("--seed", "abc")])
def test_out_of_range_flags_are_refused_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as refused:
        Train.parse_args([flag, value])
    assert refused.value.code == 2
    assert f"argument {flag}: '{value}' is not" in capsys.readouterr().err


def test_a_nan_at_the_first_step_says_no_checkpoint_exists(faces_dir, tmp_path, monkeypatch):
    real_step = Recipe.train_step
    monkeypatch.setattr(Recipe, "train_step", lambda *a, **k: [loss * float("nan") for loss in real_step(*a, **k)])
    with pytest.raises(UserError, match=r"losses became .*nan.* at epoch 1, step 1; training stopped and no "
                                        r"checkpoint was written yet, so .*Model holds none"):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "1"))
    assert not (tmp_path / "Model" / "state.json").exists()


@pytest.mark.slow
def test_a_nan_after_a_checkpoint_names_the_checkpoint_kept(faces_dir, tmp_path, monkeypatch):
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "1"))
    real_step = Recipe.train_step
    monkeypatch.setattr(Recipe, "train_step", lambda *a, **k: [loss * float("nan") for loss in real_step(*a, **k)])
    with pytest.raises(UserError, match=r"the last checkpoint in .*Model, of step 2 \(end of epoch 1\), was kept"):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "2"))


# ------------------------------------------------------------------- full disks and pictures

def test_a_model_folder_without_room_for_a_checkpoint_is_refused_before_the_first_step(faces_dir, tmp_path):
    with tmpfs(tmp_path / "small", "size=20m") as small:
        with pytest.raises(UserError, match=r"small has 20 MB free, but a checkpoint needs about \d+ MB; free \d+ MB "
                                            r"more or name another --model-dir\.$"):
            Train.main(train_args(faces_dir, tmp_path, "--epochs", "1", "--model-dir", str(small)))
        assert list(small.iterdir()) == []  # no step was trained, nothing written, no lock file left


@pytest.mark.slow
def test_a_disk_that_fills_during_an_epoch_ends_in_one_sentence_with_the_space_needed(faces_dir, tmp_path,
                                                                                      monkeypatch):
    """safetensors reports a full disk as a SafetensorError, not an OSError: it must end the same way."""
    # A checkpoint takes about 67 MB: 200 MB hold two, until another 100 MB are taken during the epoch.
    with tmpfs(tmp_path / "small", "size=200m") as small:
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "1", "--model-dir", str(small)))
        run_epoch = Train.run_epoch

        def filling_the_disk(session, epoch):
            result = run_epoch(session, epoch)
            with open(small / "other.bin", "wb") as other:  # another program takes the room meanwhile
                other.write(b"\0" * 100 * 2**20)
            return result

        monkeypatch.setattr(Train, "run_epoch", filling_the_disk)
        with pytest.raises(UserError, match=r"checkpoint of step 4 .* could not be written to .*small \(.*No space "
                                            r"left on device.*; it needs about \d+ MB, and \d+ MB are free\); the "
                                            r"folder still holds its last complete checkpoint"):
            Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--model-dir", str(small)))
        assert json.loads((small / "state.json").read_text())["epochs_done"] == 1
        assert leftovers(small) == []


@pytest.mark.slow
def test_a_sample_grid_or_loss_curve_that_cannot_be_written_is_a_warning_and_the_checkpoint_is_kept(faces_dir,
                                                                                                    tmp_path):
    with tmpfs(tmp_path / "tiny", "size=16k") as tiny:
        result = run_script("Train.py", *train_args(faces_dir, tmp_path, "--epochs", "1", "--sample-every", "1",
                                                    "--output", str(tiny)))
    assert json.loads((tmp_path / "Model" / "state.json").read_text())["epochs_done"] == 1
    assert "warning: The sample grid " in result.stderr and "could not be written (No space left on device); " \
                                                          "training goes on." in result.stderr
    assert "warning: The loss curve " in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------ state.json's format

@pytest.mark.slow
def test_state_json_fields_this_version_does_not_know_are_kept_on_the_next_save(trained, faces_dir, tmp_path):
    subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(tmp_path / "Model")], check=True)
    state = json.loads((tmp_path / "Model" / "state.json").read_text())
    assert state["format"] == Checkpoint.FORMAT
    state["notes"] = {"by": "a later version"}
    (tmp_path / "Model" / "state.json").write_text(json.dumps(state))
    Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5"))
    saved = json.loads((tmp_path / "Model" / "state.json").read_text())
    assert saved["notes"] == {"by": "a later version"} and saved["epochs_done"] == 2


@pytest.mark.parametrize("change, words", [
    (lambda state: state.update(format=Checkpoint.FORMAT + 1), r"was written by a newer version of this project "
                                                               r"\(state.json format 3; this one reads up to 2\): "
                                                               r"update it \(git pull\)"),
    (lambda state: state["hyper_parameters"].update(warp=2), r"trained with hyper-parameters this version of "
     r"Train.py does not know \(warp\)"),
    (lambda state: state["hyper_parameters"].update(batch_size="x"), r"state.json records --batch-size 'x', which "
                                                                     r"that flag does not take \('x' is not a whole "
                                                                     r"number of at least 1\): it was edited by hand"),
    (lambda state: state["hyper_parameters"].update(flip="yes"), r"records --flip 'yes', which that flag does not "
                                                                 r"take \(not true or false\)"),
    (lambda state: state["hyper_parameters"].update(loss="l2"), r"records --loss 'l2', .*\(not one of bce, hinge\)")])
@pytest.mark.slow
def test_a_newer_format_or_an_unknown_hyper_parameter_is_refused_in_one_sentence(trained, faces_dir, tmp_path, change,
                                                                                 words):
    subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(tmp_path / "Model")], check=True)
    state = json.loads((tmp_path / "Model" / "state.json").read_text())
    change(state)
    (tmp_path / "Model" / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=words):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5"))


def test_weights_in_another_precision_load_as_float32_and_weights_that_are_not_numbers_are_refused(tmp_path):
    G = small_networks(step=1)[0]["G"]
    Checkpoint.save_weights(G, tmp_path / "G.safetensors")
    arrays = load_file(tmp_path / "G.safetensors")
    save_file({name: array.astype(np.float16) for name, array in arrays.items()}, tmp_path / "half.safetensors")
    Checkpoint.load_weights(G, tmp_path / "half.safetensors")
    for name, value in G.state_dict().items():
        assert value.dtype == paddle.float32
        np.testing.assert_array_equal(value.numpy(), arrays[name].astype(np.float16).astype(np.float32))
    name = next(iter(arrays))
    arrays[name].flat[0] = np.nan
    save_file(arrays, tmp_path / "diverged.safetensors")
    with pytest.raises(UserError, match=r"diverged.safetensors holds weights that are not numbers \(NaN or "
                                        r"infinite\), so it would draw blank pictures"):
        Checkpoint.load_weights(G, tmp_path / "diverged.safetensors")


def test_a_g_ema_link_to_nowhere_is_refused_not_replaced_by_g_unsaid(tmp_path):
    (tmp_path / "G.safetensors").write_bytes(b"")
    (tmp_path / "G_ema.safetensors").symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(UserError, match=r"G_ema.safetensors is a link to .*gone.safetensors, which does not exist; "
                                        r"put that file back, or pass --raw-g"):
        Checkpoint.generator_file(tmp_path)
    assert Checkpoint.generator_file(tmp_path, raw_g=True) == tmp_path / "G.safetensors"


def test_a_state_json_without_a_format_is_format_1_and_reads():
    state = RunState.from_json({"hyper_parameters": {}, "epochs_done": 1, "batches_done": 0, "global_step": 2,
                                "losses": {"d_fake": [], "d_real": [], "g": []}}, "state.json")
    assert state.global_step == 2 and state.to_json()["format"] == Checkpoint.FORMAT


@pytest.mark.parametrize("change, words", [
    ({"real_sign": [0.5, "x"]}, "its real_sign holds 'x', where each entry must be a number from -1 to 1"),
    ({"real_sign": [3]}, "its real_sign holds 3, where each entry must be a number from -1 to 1"),
    ({"changes": [5]}, "its changes holds 5, where each entry must be an object with a step"),
    ({"changes": [{"step": "2", "lr": 1e-4}]}, "its changes holds {'step': '2', 'lr': 0.0001}, where each entry"),
    ({"changes": [{"step": 2, "lr": [1]}]}, "its changes holds {'step': 2, 'lr': [1]}, where each entry"),
    ({"spread": [[1]]}, "its spread holds [1], where each entry must be [step, spread]"),
    ({"overfitting": [{"epoch": 1}]}, "its overfitting holds {'epoch': 1}, where each entry must be an object of an "
                                      "epoch, a step and an r_t"),
    ({"stretches": [None]}, "its stretches holds None, where each entry must be an object with a from_step"),
    ({"format": "2"}, "its format is '2', not a whole number from 1"),
    ({"format": None}, "its format is None, not a whole number from 1"),
    ({"format": 0}, "its format is 0, not a whole number from 1"),
    ({"format": -5}, "its format is -5, not a whole number from 1"),
])
@pytest.mark.slow
def test_a_wrong_entry_in_state_jsons_lists_or_format_is_refused_before_training(trained, faces_dir, tmp_path, change,
                                                                                words):
    subprocess.run(["cp", "-a", str(trained[0] / "Model"), str(tmp_path / "Model")], check=True)
    state = json.loads((tmp_path / "Model" / "state.json").read_text())
    (tmp_path / "Model" / "state.json").write_text(json.dumps({**state, **change}))
    before = (tmp_path / "Model" / "G.safetensors").read_bytes()
    with pytest.raises(UserError, match=re.escape(words)):
        Train.main(train_args(faces_dir, tmp_path, "--epochs", "2", "--seed", "5"))
    assert (tmp_path / "Model" / "G.safetensors").read_bytes() == before


@pytest.mark.parametrize("marker", [b"{not json", b"[\"G.safetensors\", \"../elsewhere\"]", b"[]"],
                         ids=["not-json", "foreign-names", "empty"])
def test_a_save_whose_complete_marker_is_damaged_is_discarded_and_said(tmp_path, marker):
    ModelFolder(tmp_path).save(*small_networks(step=1))
    incoming = tmp_path / Checkpoint.INCOMING
    incoming.mkdir()
    (incoming / "G.safetensors").write_bytes(b"new")
    (incoming / Checkpoint.COMPLETE).write_bytes(marker)
    assert ModelFolder(tmp_path).recover() == (f"A save into {tmp_path} was interrupted, and its list of files is "
                                               f"damaged, so it cannot be finished; it was discarded.")
    assert ModelFolder(tmp_path).read_state().global_step == 1 and leftovers(tmp_path) == []


@pytest.mark.parametrize("damage, what", [(lambda lock: lock.symlink_to(lock.parent / "nowhere"), "a link to nothing"),
                                          (lambda lock: lock.mkdir(), "a folder")])
@pytest.mark.slow
def test_a_lock_file_that_is_a_dangling_link_or_a_folder_is_one_sentence(faces_dir, tmp_path, damage, what):
    (tmp_path / "Model").mkdir()
    damage(tmp_path / "Model" / ".lock")
    result = run_script("Train.py", *train_args(faces_dir, tmp_path, "--epochs", "1"), check=False, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {tmp_path / 'Model' / '.lock'} is {what}, not the lock file Train.py "
                                     f"makes; remove it (no training needs it) and run again.")
