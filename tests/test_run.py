"""Run.py: avatar grids and interpolation strips from G.safetensors, reproducible by seed."""
import Utils

import argparse
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import paddle
import pytest
from PIL import Image

import Checkpoint
import Drawing
import Run
from conftest import run_script, start_script
from Files import UserError
from Net import Discriminator


def size(path):
    with Image.open(path) as image:
        return image.size, image.mode


def refused(result):
    """The one-line error of a refused command, checked to be nothing more."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


CUDA_VISIBLE = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


@pytest.fixture(scope="module")
def drawn(trained, tmp_path_factory):
    """Four runs, all on the CPU so that they hold on a GPU machine too: a and b alike, c another
    seed, d the dynamic graph."""
    model = trained[0] / "Model"
    outputs = tmp_path_factory.mktemp("drawn")
    cache = {"env": dict(os.environ, XDG_CACHE_HOME=str(outputs / "cache"))}  # the exported generator goes here
    cpu = ("--device", "cpu", "--dims", "3,17,40")
    first = run_script("Run.py", "--model-dir", model, "--output", outputs / "a", "--seed", 3, "--count", 2, *cpu,
                       **cache)
    run_script("Run.py", "--model-dir", model, "--output", outputs / "b", "--seed", 3, "--count", 2, *cpu, **cache)
    run_script("Run.py", "--model-dir", model, "--output", outputs / "c", "--seed", 4, *cpu, **cache)
    run_script("Run.py", "--model-dir", model, "--output", outputs / "d", "--seed", 3, "--dygraph", *cpu)
    return outputs, first


@pytest.mark.slow
def test_pictures_have_plain_96_pixel_tiles(drawn):
    outputs, result = drawn
    folder = outputs / "a"
    assert size(folder / "avatars.png") == ((8 * 96, 8 * 96), "RGB")
    assert size(folder / "strips.png") == ((20 * 96, 3 * 96), "RGB")
    assert sorted(path.name for path in (folder / "strips").iterdir()) == ["dim_03.png", "dim_17.png", "dim_40.png"]
    assert size(folder / "strips" / "dim_17.png") == ((20 * 96, 96), "RGB")
    assert size(folder / "avatar_0001.png") == ((96, 96), "RGB")
    assert "Seed 3" in result.stdout


def test_a_strip_is_a_row_of_the_strips_picture(drawn):
    folder = drawn[0] / "a"
    strips = np.asarray(Image.open(folder / "strips.png"))
    np.testing.assert_array_equal(strips[96:192], np.asarray(Image.open(folder / "strips" / "dim_17.png")))


def test_the_same_seed_gives_byte_identical_pictures_and_another_seed_others(drawn):
    outputs = drawn[0]
    for name in ["avatars.png", "strips.png", "strips/dim_40.png", "avatar_0000.png"]:
        assert (outputs / "a" / name).read_bytes() == (outputs / "b" / name).read_bytes()
    assert (outputs / "a" / "avatars.png").read_bytes() != (outputs / "c" / "avatars.png").read_bytes()


def test_the_exported_generator_and_the_dynamic_graph_give_the_same_pixels(drawn):
    outputs = drawn[0]
    exported, dygraph = (np.asarray(Image.open(outputs / run / "strips.png"), np.int16) for run in ("a", "d"))
    assert np.abs(exported - dygraph).max() <= 1  # 1e-4 on [-1, 1] can tip a pixel's rounding, no more
    assert (outputs / "cache" / "avatar-generator").is_dir()


def test_strip_noise_sets_one_value_from_0_05_to_1_on_one_base_vector():
    base = np.full(72, 0.5, np.float32)
    noise = Drawing.interpolation_strips(base, [3, 17], 20)
    assert noise.shape == (40, 72)
    np.testing.assert_allclose(noise[:20, 3], np.arange(1, 21) * 0.05, atol=1e-6)
    np.testing.assert_allclose(noise[20:, 17], np.arange(1, 21) * 0.05, atol=1e-6)
    assert np.all(np.delete(noise[:20], 3, axis=1) == 0.5)


def test_grid_and_dims_flags_are_parsed_and_checked():
    args = Run.parse_args(["--grid", "2x5", "--dims", "0,71"])
    assert args.grid == (2, 5) and args.dims == [0, 71]
    assert Run.parse_args([]).dims == list(range(72))
    for bad in (["--grid", "8by8"], ["--dims", "72"], ["--dims", "a,b"], ["--dims", "3,3"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            Run.parse_args(bad)


def test_grid_steps_and_count_are_drawn_up_to_their_maxima_and_refused_beyond_them():
    largest = Run.parse_args(["--grid", "64x64", "--steps", "100", "--count", "10000"])
    assert (largest.grid, largest.steps, largest.count) == ((64, 64), 100, 10_000)
    assert (Utils.MAX_GRID_SIDE, Utils.MAX_STEPS, Utils.MAX_COUNT) == (64, 100, 10_000)  # as README.md says
    for bad in (["--grid", "1000x1000"], ["--grid", "65x1"], ["--grid", "1x65"], ["--grid", "0x8"],
                ["--steps", "101"], ["--count", "10001"], ["--count", "-1"]):
        with pytest.raises(SystemExit):
            Run.parse_args(bad)


@pytest.mark.slow
def test_a_grid_too_large_is_refused_at_once_in_one_sentence(tmp_path):
    result = run_script("Run.py", "--grid", "1000x1000", "--output", tmp_path / "out", check=False,
                        env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert refused(result).endswith("error: argument --grid: '1000x1000' is not ROWSxCOLUMNS, each from 1 to 64, "
                                    "such as 8x8")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # refused before any work
    for flag, value, most in (("--steps", 101, 100), ("--count", 10_001, 10_000)):
        message = refused(run_script("Run.py", flag, value, "--output", tmp_path / "out", check=False))
        assert message.endswith(f"error: argument {flag}: '{value}' is not a whole number from "
                                f"{0 if flag == '--count' else 1} to {most}")


def test_single_avatars_are_drawn_a_batch_at_a_time_with_a_progress_bar(monkeypatch, tmp_path, capsys):
    batches = []

    def generate(generator, noise):
        batches.append(len(noise))
        return np.zeros((len(noise), 96, 96, 3), np.uint8)

    monkeypatch.setattr(Drawing, "generate", generate)
    Run.draw_singles(None, np.zeros((150, 72), np.float32), tmp_path)
    assert batches == [64, 64, 22]  # memory does not grow with --count
    assert sorted(path.name for path in tmp_path.iterdir())[::149] == ["avatar_0000.png", "avatar_0149.png"]
    assert "150/150" in capsys.readouterr().err  # a bar, since 150 avatars take more than one batch
    Run.draw_singles(None, np.zeros((3, 72), np.float32), tmp_path)
    assert capsys.readouterr().err == ""  # and none for a batch or less


@pytest.mark.slow
def test_without_a_generator_the_user_is_told_to_train_one(tmp_path):
    result = run_script("Run.py", "--model-dir", tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "G.safetensors does not exist; train a model with `python Train.py` first" in result.stderr


def test_a_corrupt_generator_file_is_reported_in_one_sentence(tmp_path):
    (tmp_path / "G.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        Run.main(["--model-dir", str(tmp_path)])


def test_weights_of_another_network_are_refused(tmp_path):
    Checkpoint.save_weights(Discriminator(), tmp_path / "G.safetensors")
    with pytest.raises(UserError, match="weights of another network"):
        Run.main(["--model-dir", str(tmp_path)])


def test_the_exported_cpu_generator_draws_what_the_dynamic_graph_draws(trained, tmp_path, monkeypatch, on_cpu):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = trained[0] / "Model"
    fast = Drawing.load_generator_for_inference(model)
    assert isinstance(fast, Drawing.ExportedGenerator)
    assert len(list((tmp_path / "avatar-generator").iterdir())) == 1  # one export, keyed by the weights
    noise = Utils.random_noise(np.random.default_rng(0), 10)
    plain = Checkpoint.load_generator(model)
    with paddle.no_grad():
        expected = plain(paddle.to_tensor(noise)).numpy()
    assert np.abs(fast(noise) - expected).max() < 1e-4
    assert isinstance(Drawing.load_generator_for_inference(model), Drawing.ExportedGenerator)  # from the cache


def make_exports(cache, count, hours_ago):
    """count stand-ins for exports in cache, the first used longest ago."""
    folders = []
    for number in range(count):
        folder = cache / f"{number:016x}-paddle0.0"
        folder.mkdir(parents=True)
        (folder / "generator.pdiparams").write_bytes(b"weights")
        used = time.time() - 3600 * (hours_ago - number)
        os.utime(folder, (used, used))
        folders.append(folder)
    return folders


def test_the_export_cache_keeps_only_the_most_recently_used_exports(trained, tmp_path, monkeypatch, on_cpu):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "avatar-generator"
    old = make_exports(cache, 6, hours_ago=10)
    abandoned, busy = cache / ".1234-paddle0.0.tmp99", cache / ".5678-paddle0.0.tmp98"
    for staging in (abandoned, busy):
        staging.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))  # a killed export's leftover; the other is being written

    model = trained[0] / "Model"
    assert isinstance(Drawing.load_generator_for_inference(model), Drawing.ExportedGenerator)
    exported = cache / f"{Drawing.file_digest(Checkpoint.generator_file(model))}-paddle{paddle.__version__}"
    kept = sorted(path for path in cache.iterdir() if not path.name.startswith("."))
    assert Drawing.CACHED_EXPORTS == 4 and kept == sorted([exported, *old[-3:]])
    assert busy.exists() and not abandoned.exists()

    os.utime(exported, (two_hours_ago, two_hours_ago))
    Drawing.load_generator_for_inference(model)  # from the cache: used again, so the most recent
    assert exported.stat().st_mtime > old[-1].stat().st_mtime


def test_a_failing_export_falls_back_to_the_dynamic_graph_with_a_warning(trained, tmp_path, monkeypatch, on_cpu):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def broken(*args, **kwargs):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(Drawing, "export_generator", broken)
    with pytest.warns(UserWarning, match="no oneDNN here.*dynamic graph"):
        generator = Drawing.load_generator_for_inference(trained[0] / "Model")
    assert not isinstance(generator, Drawing.ExportedGenerator)
    assert Drawing.generate(generator, Utils.random_noise(np.random.default_rng(0), 2)).shape == (2, 96, 96, 3)


@pytest.mark.skipif(CUDA_VISIBLE, reason="--device auto takes the GPU here, which draws with the dynamic graph")
def test_run_py_prints_a_failing_export_as_one_warning_sentence_without_source_lines(trained, tmp_path):
    (tmp_path / "not a folder").write_text("")  # the export cache cannot be made inside a file
    result = run_script("Run.py", "--model-dir", trained[0] / "Model", "--output", tmp_path / "out", "--grid", "2x2",
                        "--dims", "0", env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "not a folder")))
    warning, = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "Traceback" not in result.stderr and "warnings.warn" not in result.stderr
    assert warning.startswith("warning: the fast CPU generator is unavailable (") and warning.endswith(
        "using the dynamic graph, which draws the same pictures more slowly."), result.stderr
    assert (tmp_path / "out" / "avatars.png").exists()


@pytest.mark.slow
@pytest.mark.skipif(CUDA_VISIBLE, reason="--device auto takes the GPU here, which draws with the dynamic graph")
def test_device_cpu_draws_what_the_default_drew_on_a_cpu_machine(drawn, trained, tmp_path):
    run_script("Run.py", "--model-dir", trained[0] / "Model", "--output", tmp_path, "--seed", 3, "--dims", "3,17,40",
               "--count", 2, env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    for name in ["avatars.png", "strips.png", "avatar_0001.png"]:
        assert (tmp_path / name).read_bytes() == (drawn[0] / "a" / name).read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(CUDA_VISIBLE, reason="this machine has a GPU that Paddle can use")
def test_device_gpu_without_cuda_is_refused_in_one_sentence(trained, tmp_path):
    message = refused(run_script("Run.py", "--model-dir", trained[0] / "Model", "--output", tmp_path / "out",
                                 "--device", "gpu", check=False))
    assert "--device gpu" in message and "no CUDA" in message and "--device cpu" in message
    assert not (tmp_path / "out").exists()


def test_a_negative_seed_is_refused_in_one_sentence(tmp_path):
    message = refused(run_script("Run.py", "--seed", -1, "--output", tmp_path / "out", check=False))
    assert message.endswith("error: argument --seed: '-1' is not a whole number from 0 to 2**63 - 1")
    assert not (tmp_path / "out").exists()


def test_a_seed_beyond_2_to_the_63_is_refused_as_train_py_and_the_studio_refuse_it(tmp_path):
    message = refused(run_script("Run.py", "--seed", "99999999999999999999", "--output", tmp_path / "out",
                                 check=False))
    assert message.endswith("error: argument --seed: '99999999999999999999' is not a whole number from 0 to "
                            "2**63 - 1")
    assert not (tmp_path / "out").exists()
    assert Run.parse_args(["--seed", str(2**63 - 1)]).seed == 2**63 - 1


def test_one_seed_type_for_every_script_0_to_2_to_the_63_minus_1_in_train_pys_words():
    assert Utils.seed_number("0") == 0 and Utils.seed_number(str(2**63 - 1)) == 2**63 - 1
    for text in ("-1", str(2**63), "99999999999999999999", "seven", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError) as refused:
            Utils.seed_number(text)
        assert str(refused.value) == f"{text!r} is not a whole number from 0 to 2**63 - 1"


def only_the_averaged_generator(trained, folder):
    folder.mkdir()
    shutil.copy(trained[0] / "Model" / "G_ema.safetensors", folder / "G_ema.safetensors")
    return folder


def test_the_last_line_offers_raw_g_only_where_g_safetensors_is_there(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tiny = ["--dims", "0", "--steps", "1", "--grid", "1x1", "--device", "cpu"]
    Run.main(["--model-dir", str(trained[0] / "Model"), "--output", str(tmp_path / "both"), *tiny])
    assert "G_ema.safetensors, the averaged generator (--raw-g draws with G.safetensors)." in capsys.readouterr().out
    alone = only_the_averaged_generator(trained, tmp_path / "alone")
    Run.main(["--model-dir", str(alone), "--output", str(tmp_path / "alone-out"), *tiny])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith("G_ema.safetensors, the averaged generator.") and "--raw-g" not in last


def test_raw_g_without_g_safetensors_points_to_the_averaged_generator_that_is_there(trained, tmp_path):
    alone = only_the_averaged_generator(trained, tmp_path / "alone")
    message = refused(run_script("Run.py", "--model-dir", alone, "--raw-g", "--output", tmp_path / "out",
                                 check=False))
    assert message == (f"error: {alone / 'G.safetensors'} does not exist, so --raw-g has nothing to draw with; "
                       f"leave --raw-g out to draw with G_ema.safetensors, the averaged generator beside it.")


def test_an_output_that_is_a_file_is_refused_before_the_generator_is_exported(trained, tmp_path):
    (tmp_path / "pictures.png").write_bytes(b"not a folder")
    result = run_script("Run.py", "--model-dir", trained[0] / "Model", "--output", tmp_path / "pictures.png",
                        check=False, env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert "--output " + str(tmp_path / "pictures.png") + " is a file, not a folder; name a folder." in refused(result)
    assert not (tmp_path / "cache").exists()  # nothing exported, nothing drawn


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder that even root cannot write: a small read-only tmpfs mounted on it."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mount.stderr.strip()}), and as root every folder "
                    f"is writable otherwise")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_an_output_that_cannot_be_written_is_refused_before_the_generator_is_exported(trained, tmp_path,
                                                                                      read_only_folder):
    result = run_script("Run.py", "--model-dir", trained[0] / "Model", "--output", read_only_folder / "avatars",
                        check=False, env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    message = refused(result)
    assert f"--output {read_only_folder / 'avatars'} cannot be written (Read-only file system)" in message
    assert "name another folder" in message
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_while_drawing_ends_with_one_line_not_a_traceback(trained, tmp_path, stop):
    """Ctrl-C, or SIGTERM, which Paddle's crash report would otherwise take, while Paddle draws."""
    output = tmp_path / "out"
    process = start_script("Run.py", "--model-dir", trained[0] / "Model", "--output", output, "--count", 10000,
                           "--dims", 3, "--steps", 2, "--device", "cpu",
                           env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    deadline = time.time() + 300
    while not (output / "avatar_0000.png").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(stop)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "Stopped.", err
    assert "Traceback" not in err and "FatalError" not in err, err


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_leaves_none_of_the_firsts_strips_or_avatars(trained, tmp_path):
    model, output = trained[0] / "Model", tmp_path / "out"
    run_script("Run.py", "--model-dir", model, "--output", output, "--dims", "1,2", "--count", "4", "--seed", "1",
               "--device", "cpu", "--dygraph")
    (output / "notes.txt").write_text("mine")
    (output / "strips" / "dim_01_kept.png").write_bytes(b"mine too")
    second = run_script("Run.py", "--model-dir", model, "--output", output, "--dims", "5", "--count", "1", "--seed",
                        "2", "--device", "cpu", "--dygraph")
    assert (f"Removed 6 pictures an earlier Run.py drew into {output} (its strips and single avatars), so that the "
            f"folder holds this run's alone.") in second.stdout
    assert sorted(path.name for path in (output / "strips").iterdir()) == ["dim_01_kept.png", "dim_05.png"]
    assert sorted(path.name for path in output.iterdir()) == ["avatar_0000.png", "avatars.png", "notes.txt",
                                                              "strips", "strips.png"]
