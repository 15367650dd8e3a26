"""benchmarks/gpu_check.sh on a machine without CUDA: it checks its inputs first and stops with one
line, before anything trains. The GPU rows themselves can only run on a CUDA machine."""
import os
import subprocess
import sys

import paddle
import pytest

from conftest import ROOT


def gpu_check(*args):
    """The script as a user runs it, with this interpreter as its Python."""
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHON=sys.executable))


def stopped(result):
    """The one line a stopped check printed, after checking that it printed nothing else."""
    assert result.returncode == 2, result
    assert result.stdout == ""  # no table header, no row: nothing was measured
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.sh: "), result.stderr
    return lines[0]


def faces(folder, count):
    """count files with image names: the check counts them as Reader.py would find them."""
    (folder / "nested").mkdir(parents=True)
    for number in range(count):
        (folder / "nested" / f"{number}.PNG").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_missing_data_folder_stops_the_check_in_one_line(tmp_path):
    line = stopped(gpu_check(tmp_path / "absent"))
    assert line == (f"gpu_check.sh: the data folder {tmp_path / 'absent'} does not exist; pass a folder of 96x96 "
                    f"faces as the first argument.")


def test_a_folder_without_images_stops_the_check_in_one_line(tmp_path):
    assert "holds no images (.jpg .jpeg .png .webp .bmp)" in stopped(gpu_check(faces(tmp_path, 0)))


def test_fewer_faces_than_one_batch_stop_the_check_in_one_line(tmp_path):
    line = stopped(gpu_check(faces(tmp_path, 99)))
    assert line.endswith(f"{tmp_path} holds 99 images, fewer than one batch of 100; add faces.")


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="this Paddle has CUDA: the script would train here")
def test_without_cuda_the_check_stops_in_one_line_before_anything_trains(tmp_path):
    line = stopped(gpu_check(faces(tmp_path, 100)))
    assert f"this Paddle {paddle.__version__} has no CUDA; install paddlepaddle-gpu" in line
    assert "benchmarks/bench.py" in line
