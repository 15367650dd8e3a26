"""Several GPUs, proven on CPU processes (gloo): the ranks share one seed and equal shares of every
epoch, stop together, and the GPU-only settings (mixed precision, deterministic cuDNN,
SyncBatchNorm, no all-reduce of D's unused gradients) are those Paddle documents."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

import Recipe
import Train
from Checkpoint import ModelFolder, RunState
from conftest import ROOT
from Net import Discriminator, Generator
from Reader import EpochBatchSampler


def launch_flags(faces_dir, run, *extra):
    """Two CPU processes without --seed: 8 faces, 4 a rank, 2 batches of 2 per epoch."""
    return ["--data", str(faces_dir), "--limit", "8", "--batch-size", "2", "--sample-every", "0",
            "--device", "cpu", "--model-dir", str(run / "Model"), "--output", str(run / "Output"), *extra]


@contextmanager
def launched(run, *flags, script="Train.py"):
    """paddle.distributed.launch with two CPU processes, in a session of its own so that nothing
    it started outlives the test."""
    process = subprocess.Popen([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                                "--log_dir", str(run / "log"), script, *flags], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def finish(process, timeout):
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the processes were still running after {timeout} s: a rank waits for another")


def worker_log(run, rank):
    return (run / "log" / f"workerlog.{rank}").read_text()


@pytest.mark.slow
def test_without_a_seed_both_ranks_take_rank_0s_and_a_resume_goes_on_exactly(faces_dir, tmp_path):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    with launched(resumed, *launch_flags(faces_dir, resumed, "--epochs", "1")) as process:
        assert finish(process, 300) == 0, worker_log(resumed, 0)
    seed = json.loads((resumed / "Model" / "state.json").read_text())["hyper_parameters"]["seed"]
    with launched(resumed, *launch_flags(faces_dir, resumed, "--epochs", "2")) as process:
        assert finish(process, 300) == 0, worker_log(resumed, 0)
    with launched(straight, *launch_flags(faces_dir, straight, "--epochs", "2", "--seed", str(seed))) as process:
        assert finish(process, 300) == 0, worker_log(straight, 0)
    for name in ("G.safetensors", "D.safetensors"):
        a, b = load_file(str(resumed / "Model" / name)), load_file(str(straight / "Model" / name))
        assert max(np.abs(a[key] - b[key]).max() for key in a) < 1e-5


@pytest.mark.slow
def test_a_data_set_that_does_not_divide_evenly_finishes_without_hanging(faces_dir, tmp_path):
    # 11 faces: 5 a rank, 2 batches of 2 each (rank 0 would otherwise get 6 and a third batch)
    with launched(tmp_path, *launch_flags(faces_dir, tmp_path, "--epochs", "1", "--limit", "11")) as process:
        assert finish(process, 180) == 0, worker_log(tmp_path, 0)
    assert json.loads((tmp_path / "Model" / "state.json").read_text())["global_step"] == 2


@pytest.mark.parametrize("size, batch, per_rank", [(199, 50, 1), (10_099, 50, 100), (11, 2, 2)])
def test_every_rank_gets_as_many_batches_and_no_face_twice(size, batch, per_rank):
    samplers = [EpochBatchSampler(size, batch, seed=3, rank=rank, world_size=2) for rank in (0, 1)]
    assert [len(sampler) for sampler in samplers] == [per_rank, per_rank]
    shares = [set(sampler.indices()) for sampler in samplers]
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == size - size % 2


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.2)


def worker_pid(launcher_pid, rank):
    """The pid of the launcher's worker of this rank, read from its environment."""
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            environ = (f"/proc/{pid}/environ", f"/proc/{pid}/stat")
            variables = open(environ[0], "rb").read().split(b"\0")
            parent = int(open(environ[1]).read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher_pid and f"PADDLE_TRAINER_ID={rank}".encode() in variables:
            return pid
    return None


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_every_rank_with_rank_0s_checkpoint(faces_dir, tmp_path):
    state_file = tmp_path / "Model" / "state.json"
    with launched(tmp_path, *launch_flags(faces_dir, tmp_path, "--epochs", "1000")) as process:
        wait_for(state_file.exists, 300, "first checkpoint")
        wait_for(lambda: worker_pid(process.pid, 1), 30, "worker of rank 1")
        os.kill(worker_pid(process.pid, 1), signal.SIGTERM)
        signalled = time.time()
        finish(process, 120)
        assert time.time() - signalled < 20  # together, not after the launcher's 30 s of waiting
    log = worker_log(tmp_path, 0)
    assert "checkpoint saved to" in log and "Run the same command to continue" in log, log
    state = json.loads(state_file.read_text())
    assert f"Stopped at step {state['global_step']} (" in log


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_and_names_the_checkpoint_kept(faces_dir, tmp_path):
    flags = launch_flags(faces_dir, tmp_path, "--epochs", "5")
    with launched(tmp_path, *flags, script=str(ROOT / "tests" / "nan_on_rank_1.py")) as process:
        finish(process, 180)
    log = worker_log(tmp_path, 0)
    assert "the losses became non-finite on another process at epoch 2, step 3; training stopped and the last " \
           "checkpoint in" in log and "of step 2 (end of epoch 1), was kept" in log, log
    assert "the losses became [" in worker_log(tmp_path, 1)
    assert json.loads((tmp_path / "Model" / "state.json").read_text())["global_step"] == 2


@pytest.mark.slow
def test_r1_spectral_hinge_mbstd_and_mode_seeking_keep_every_ranks_networks_identical(faces_dir, tmp_path):
    """The R1 penalty differentiates D twice inside DataParallel; its gradients, like the loss's,
    must be averaged over the ranks, which train on different faces. So must those of the
    mode-seeking term, which each rank takes over its own batch's faces."""
    flags = launch_flags(faces_dir, tmp_path, "--epochs", "1", "--loss", "hinge", "--d-norm", "spectral", "--r1", "1",
                         "--r1-every", "1", "--mbstd", "--mode-seeking", "1")
    with launched(tmp_path, *flags, script=str(ROOT / "tests" / "weights_of_each_rank.py")) as process:
        assert finish(process, 300) == 0, worker_log(tmp_path, 0)
    ranks = [np.load(tmp_path / "Output" / f"rank{rank}.npz") for rank in (0, 1)]
    assert "D.features.0.0.weight_orig" in ranks[0]
    for key in ranks[0]:
        if not key.endswith(("_mean", "_variance")):  # G's BatchNorm statistics: each CPU rank's own share
            assert np.abs(ranks[0][key] - ranks[1][key]).max() < 1e-6, key
    assert "Epoch 1: D's overfitting signal r_t" in worker_log(tmp_path, 0)


@pytest.mark.slow
def test_mbstd_turned_on_when_continuing_grows_d_alike_on_every_rank(faces_dir, tmp_path):
    """Rank 1 loads the checkpoint from the copy rank 0 sends it, and must grow D as rank 0 does."""
    with launched(tmp_path, *launch_flags(faces_dir, tmp_path, "--epochs", "1")) as process:
        assert finish(process, 300) == 0, worker_log(tmp_path, 0)
    flags = launch_flags(faces_dir, tmp_path, "--epochs", "2", "--mbstd")
    with launched(tmp_path, *flags, script=str(ROOT / "tests" / "weights_of_each_rank.py")) as process:
        assert finish(process, 300) == 0, worker_log(tmp_path, 0)
    assert "D continues: its linear layer takes --mbstd's new feature" in worker_log(tmp_path, 0)
    ranks = [np.load(tmp_path / "Output" / f"rank{rank}.npz") for rank in (0, 1)]
    assert ranks[0]["D.classify.weight"].shape == ranks[1]["D.classify.weight"].shape == (513 * 6 * 6, 2)
    for key in ranks[0]:
        if not key.endswith(("_mean", "_variance")):  # BatchNorm statistics: each CPU rank's own share
            assert np.abs(ranks[0][key] - ranks[1][key]).max() < 1e-6, key


# ---------------------------------------------------------------- GPU settings, checked on a CPU

@pytest.mark.parametrize("capability, cuda, dtype", [((6, 1), "12.0", None), ((7, 0), "12.0", "float16"),
                                                     ((7, 5), "11.8", "float16"), ((8, 0), "10.2", "float16"),
                                                     ((8, 0), "11.0", "bfloat16"), ((9, 0), "12.0", "bfloat16")])
def test_amp_takes_the_type_the_gpu_computes_fast_and_none_below_volta(capability, cuda, dtype):
    assert Recipe.amp_dtype(capability, cuda) == dtype


def gpu_kernel(dtype):
    name = {"float16": "::phi::dtype::float16", "bfloat16": "::phi::dtype::bfloat16"}[dtype]
    return f"{{data_type[{name}]; data_layout[Undefined(AnyLayout)]; place[Place(gpu:0)]; library_type[CUDNN]}}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_amp_adds_transposed_convolutions_to_paddles_list_where_a_gpu_kernel_exists(dtype):
    from paddle.amp import amp_lists

    paddle_list = set(amp_lists.white_list()[dtype]["O1"])
    assert "conv2d" in paddle_list and "conv2d_transpose" not in paddle_list  # why the addition is needed
    with_kernel = Recipe.amp_white_list(dtype, {"conv2d_transpose": [gpu_kernel(dtype)]})
    assert with_kernel == paddle_list | {"conv2d_transpose"}
    other = "bfloat16" if dtype == "float16" else "float16"
    assert Recipe.amp_white_list(dtype, {"conv2d_transpose": [gpu_kernel(other)]}) == paddle_list
    assert Recipe.amp_white_list(dtype) == paddle_list  # this CPU-only Paddle has no GPU kernel


class RecordingScaler:
    """Stands in for paddle.amp.GradScaler, which is disabled (and stateless) on a CPU."""

    def __init__(self, scale):
        self.state = {"scale": np.array([scale], np.float32), "incr_count": 7, "decr_count": 0}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def test_the_loss_scalers_round_trip_through_a_checkpoint(tmp_path):
    networks = {"G": paddle.nn.Linear(2, 2), "D": paddle.nn.Linear(2, 2)}
    optimizers = {name: paddle.optimizer.Adam(1e-3, parameters=layer.parameters()) for name, layer in networks.items()}
    state = RunState(hyper_parameters={})
    ModelFolder(tmp_path).save(networks, optimizers, state, {"G": RecordingScaler(1024.0), "D": RecordingScaler(8.0)})
    scalers = {"G": RecordingScaler(65536.0), "D": RecordingScaler(65536.0)}
    ModelFolder(tmp_path).load(networks, optimizers, state, scalers)
    assert scalers["G"].state["scale"][0] == 1024.0 and scalers["D"].state["scale"][0] == 8.0
    assert scalers["G"].state["incr_count"] == 7


def test_gpus_train_deterministically_with_batch_norm_over_all_of_them(monkeypatch):
    flags = {}
    monkeypatch.setattr(paddle, "set_flags", flags.update)
    hp = {**{name: p.default for name, p in Recipe.HYPER_PARAMETERS.items()}, "seed": 1}
    nets = Train.build_networks(hp, "gpu", world_size=2)
    G, D = nets.G, nets.D
    assert flags == {"FLAGS_cudnn_deterministic": True}
    norms = [layer for network in (G, D) for layer in network.sublayers() if "BatchNorm" in type(layer).__name__]
    assert norms and all(isinstance(layer, paddle.nn.SyncBatchNorm) for layer in norms)
    assert set(G.state_dict()) == set(Generator().state_dict())  # checkpoints keep their names
    assert set(D.state_dict()) == set(Discriminator(input_norm=hp["d_input_bn"]).state_dict())
    flags.clear()
    G = Train.build_networks(hp, "cpu", world_size=2).G
    assert flags == {} and not any(isinstance(layer, paddle.nn.SyncBatchNorm) for layer in G.sublayers())


def test_under_data_parallel_g_steps_keep_ds_gradients_out_of_the_all_reduce():
    class DataParallelLike(paddle.nn.Layer):
        def __init__(self, layer):
            super().__init__()
            self.layer, self.quiet_blocks = layer, 0

        def forward(self, x):
            return self.layer(x)

        @contextmanager
        def no_sync(self):
            self.quiet_blocks += 1
            yield

    paddle.seed(0)
    G, D = Generator(), DataParallelLike(Discriminator())
    opt_g = paddle.optimizer.Adam(1e-4, parameters=G.parameters())
    opt_d = paddle.optimizer.Adam(1e-4, parameters=D.parameters())
    real = paddle.rand([2, 3, 96, 96]) * 2 - 1
    Recipe.train_step(Recipe.Players(G, D, opt_g, opt_d), real, Recipe.StepConfig(g_steps=2))
    assert D.quiet_blocks == 1
    assert all(p.grad is None or not p.grad.abs().sum() for p in D.parameters())


# --------------------------------------------------------------------------------- several machines

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def two_machines(faces_dir, run, *extra):
    """Two launchers, each a machine of one CPU process, meeting at a master on 127.0.0.1: node 0
    with its model and output folders in run/node0, node 1 with its own in run/node1, as on a
    machine that does not see node 0's disk. Yields both launchers."""
    master, launchers = f"127.0.0.1:{free_port()}", []
    try:
        for node in (0, 1):
            folder = run / f"node{node}"
            launchers.append(subprocess.Popen(
                [sys.executable, "-m", "paddle.distributed.launch", "--nnodes", "2", "--master", master,
                 "--rank", str(node), "--nproc_per_node", "1", "--log_dir", str(folder / "log"), "Train.py",
                 *launch_flags(faces_dir, folder, *extra)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True))
        yield launchers
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()


@pytest.mark.slow
def test_two_machines_train_their_shares_only_rank_0_writes_and_resume_without_a_shared_disk(faces_dir, tmp_path):
    run, straight = tmp_path / "machines", tmp_path / "straight"
    for epochs in ("1", "2"):  # the second run resumes; node 1's model folder is still empty then
        with two_machines(faces_dir, run, "--epochs", epochs) as launchers:
            assert [finish(launcher, 300) for launcher in launchers] == [0, 0], worker_log(run / "node1", 0)
        assert not (run / "node1" / "Model").exists() and not (run / "node1" / "Output").exists()
    logs = [worker_log(run / f"node{node}", 0) for node in (0, 1)]
    assert "Training on cpu (2 process(es)), 8 faces, 2 batches of 2 per epoch" in logs[0]  # 4 faces a rank
    assert "Resuming from" in logs[0] and "Training on" not in logs[1] and "Done" not in logs[1]
    state = json.loads((run / "node0" / "Model" / "state.json").read_text())
    assert state["global_step"] == 4
    seed = str(state["hyper_parameters"]["seed"])
    with launched(straight, *launch_flags(faces_dir, straight, "--epochs", "2", "--seed", seed)) as process:
        assert finish(process, 300) == 0, worker_log(straight, 0)
    for name in ("G.safetensors", "D.safetensors"):  # rank 1 resumed exactly as if it had read the folder
        a, b = load_file(str(run / "node0" / "Model" / name)), load_file(str(straight / "Model" / name))
        assert max(np.abs(a[key] - b[key]).max() for key in a) < 1e-5
