"""Shared fixtures: the repository on sys.path, the shared face data (or faces made here when
../shared/data is absent), and one tiny trained checkpoint for the tests that need a model."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

import Utils  # noqa: E402,F401  sets up the CPU for Paddle, so it comes first

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from PIL import Image  # noqa: E402


def run_script(*args, check=True, timeout=600, **kwargs):
    """Run one of the project's scripts as a user would, from the repository root."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def start_script(*args, **kwargs):
    """Start one of the project's scripts in a process of its own, from the repository root, that
    Ctrl-C (SIGINT) can stop, with its output piped."""
    # Where pytest itself runs as a shell's background job, SIGINT is ignored, and a child would
    # inherit that; with a handler here, the child starts with the default, as from a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


def require_shared(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test fixtures only exist beside the project's own checkout")
    return path


def require(available, reason):
    """Skip a test whose optional tool (a browser, Gradio, VisualDL) is missing, with the reason;
    but in CI, which installs them all (.ci/run), a missing tool fails the test instead."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test, and .ci/run installs what it needs")
    pytest.skip(reason)


def make_faces(folder, count, seed=0):
    """Smooth random 96x96 pictures, for when the shared faces are not there."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for number in range(count):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((96, 96), Image.Resampling.BICUBIC).save(folder / f"{number}.png")
    return folder


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory):
    """12 face images: the first 12 of ../shared/data/faces when present, else made here."""
    folder = tmp_path_factory.mktemp("faces")
    shared = SHARED_DATA / "faces"
    if shared.is_dir():
        for path in sorted(shared.glob("*.jpg"))[:12]:
            (folder / path.name).symlink_to(path)
        return folder
    return make_faces(folder, 12)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, faces_dir):
    """A checkpoint after one epoch of Train.py on 8 faces (2 batches of 4), and its outputs."""
    run = tmp_path_factory.mktemp("trained")
    result = run_script("Train.py", "--data", faces_dir, "--limit", 8, "--batch-size", 4, "--epochs", 1,
                        "--seed", 5, "--sample-every", 1, "--model-dir", run / "Model", "--output", run / "Output",
                        "--device", "cpu")
    return run, result


@pytest.fixture
def on_cpu():
    """This process on the CPU for one test (on a GPU machine Paddle starts on the GPU)."""
    before = paddle.device.get_device()
    Utils.choose_device("cpu")
    yield
    paddle.set_device(before)
