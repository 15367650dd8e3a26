"""Evaluate.py's metrics on cases whose answers are known, and the command on a tiny model."""
import json

import numpy as np
import pytest
from PIL import Image

import Files
import Metrics
from Checkpoint import RunState
from conftest import SHARED_DATA, draw_faces, run_script
from Files import UserError


@pytest.fixture(scope="module")
def faces():
    """48 faces: shared real faces when present, else cartoon faces drawn here."""
    folder = SHARED_DATA / "faces"
    if folder.is_dir():
        return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("*.jpg"))[:48]])
    return draw_faces(48)


def blurred(images, radius=2):
    from PIL import ImageFilter
    return np.stack([np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius))) for image in images])


def noise_like(images, seed=1):
    return np.random.default_rng(seed).integers(0, 256, images.shape, dtype=np.uint8)


def test_the_pyramid_has_levels_96_48_24_12_and_adds_back_up_to_the_image(faces):
    images = faces[:2].astype(np.float32) / 255
    pyramid = Metrics.laplacian_pyramid(images)
    assert [level.shape[1] for level in pyramid] == [96, 48, 24, 12]
    rebuilt = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        rebuilt = Metrics._upsample(rebuilt) + band
    np.testing.assert_allclose(rebuilt, images, atol=1e-5)


def test_swd_orders_identical_below_blurred_below_noise(faces):
    a, b = faces[:24], faces[24:]
    same = Metrics.swd(a, a, seed=0)["swd_mean"]
    other_real = Metrics.swd(a, b, seed=0)["swd_mean"]
    blur = Metrics.swd(a, blurred(a), seed=0)
    noise = Metrics.swd(a, noise_like(a), seed=0)["swd_mean"]
    assert same < other_real < blur["swd_mean"] < noise
    assert blur["swd_96px"] > blur["swd_12px"]  # blurring removes fine detail, not the coarse picture


def test_swd_is_deterministic_for_a_seed_and_needs_equal_sizes(faces):
    assert Metrics.swd(faces[:8], faces[8:16], seed=3) == Metrics.swd(faces[:8], faces[8:16], seed=3)
    assert Metrics.swd(faces[:8], faces[8:16], seed=3) != Metrics.swd(faces[:8], faces[8:16], seed=4)
    with pytest.raises(ValueError, match="equal size"):
        Metrics.swd(faces[:8], faces[:9])


def test_ms_ssim_is_one_for_identical_images_and_low_for_noise(faces):
    np.testing.assert_allclose(Metrics.ms_ssim(faces[:4], faces[:4]), 1.0, atol=1e-9)
    noise = noise_like(faces[:4])
    assert np.all(Metrics.ms_ssim(noise, noise_like(faces[:4], seed=2)) < 0.15)
    pair = Metrics.ms_ssim(faces[:4], faces[4:8])
    np.testing.assert_allclose(pair, Metrics.ms_ssim(faces[4:8], faces[:4]))
    assert np.all((pair >= 0) & (pair < 1))  # 0 where a scale is anti-correlated (clipped, as in TF)


def test_a_collapsed_set_scores_diversity_one_and_real_faces_far_less(faces):
    collapsed = np.repeat(faces[:1], 16, axis=0)
    assert Metrics.diversity(collapsed, 20) == pytest.approx(1.0)
    assert Metrics.diversity(faces, 40) < 0.6
    assert Metrics.diversity(noise_like(faces), 40) < Metrics.diversity(faces, 40)


def test_nearest_finds_a_copy_and_skip_identical_finds_the_next(faces):
    pool = faces[:20]
    index, distance = Metrics.nearest(faces[[3, 7]], pool)
    assert index.tolist() == [3, 7] and np.allclose(distance, 0)
    index, distance = Metrics.nearest(faces[[3]], pool, skip_identical=True)
    assert index[0] != 3 and distance[0] > 1


@pytest.mark.slow
def test_evaluate_writes_metrics_and_the_nearest_picture(trained, faces_dir, tmp_path):
    result = run_script("Evaluate.py", "--model-dir", trained[0] / "Model", "--real", faces_dir, "--n", 12,
                        "--output", tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == 12 and {"swd_96px", "swd_12px", "swd_mean", "ms_ssim_candidates"} <= set(metrics)
    assert "SWD x1e3, mean" in result.stdout
    with Image.open(tmp_path / "nearest.png") as picture:
        assert picture.size == (16 * 96, 2 * 96)  # 12 pairs, 8 a row


@pytest.mark.slow
def test_real_b_measures_the_floor_between_two_real_folders(faces_dir, tmp_path):
    run_script("Evaluate.py", "--real", faces_dir, "--real-b", faces_dir, "--n", 12, "--output", tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["candidates"] == str(faces_dir)
    assert metrics["ms_ssim_candidates"] == pytest.approx(metrics["ms_ssim_real"], abs=0.2)


@pytest.mark.slow
def test_asking_for_more_faces_than_the_folder_holds_is_explained(faces_dir, tmp_path):
    result = run_script("Evaluate.py", "--real", faces_dir, "--real-b", faces_dir, "--n", 500,
                        "--output", tmp_path, check=False)
    assert result.returncode == 2 and "fewer than --n 500" in result.stderr


def refused(result):
    """The one-line error of a refused command, checked to be nothing more."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_two_faces_a_side_are_the_fewest_and_fewer_are_refused_in_one_sentence(faces_dir, tmp_path):
    run_script("Evaluate.py", "--real", faces_dir, "--real-b", faces_dir, "--n", 2, "--output", tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 2
    for n in (1, 0, -1):
        message = refused(run_script("Evaluate.py", "--real", faces_dir, "--real-b", faces_dir, "--n", n,
                                     "--output", tmp_path / str(n), check=False))
        assert f"argument --n: '{n}' is not a whole number of at least 2" in message and "pairs" in message


@pytest.mark.slow
def test_a_negative_seed_is_refused_in_one_sentence(faces_dir, tmp_path):
    message = refused(run_script("Evaluate.py", "--real", faces_dir, "--real-b", faces_dir, "--n", 2,
                                 "--seed", -1, "--output", tmp_path, check=False))
    assert "argument --seed: '-1' is not a whole number from 0 to 2**63 - 1" in message


@pytest.mark.slow
def test_an_output_that_is_a_file_is_refused_before_any_face_is_read(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    message = refused(run_script("Evaluate.py", "--real", tmp_path / "no faces here", "--n", 2,
                                 "--output", tmp_path / "metrics.json", check=False))
    assert f"--output {tmp_path / 'metrics.json'} is a file, not a folder; name a folder." in message


def test_a_folder_of_one_face_asks_for_more_faces_not_a_lower_n(faces_dir, tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "face.png").symlink_to(next(faces_dir.iterdir()))
    message = refused(run_script("Evaluate.py", "--real", tmp_path / "one", "--real-b", faces_dir, "--n", 2,
                                 "--output", tmp_path / "out", check=False))
    assert message.endswith("holds only 1 face, and MS-SSIM needs pairs: put at least 2 faces in it.")


def fake_checkpoint(folder, step, run="testrun"):
    """A model folder whose state.json says step and run: all that --history reads of it."""
    folder.mkdir(exist_ok=True)
    Files.write_json(RunState(hyper_parameters={}, run=run, global_step=step, epochs_done=step // 10,
                              batches_done=step % 10, images=100).to_json(), folder / "state.json")
    return folder


def test_history_keeps_one_evaluation_per_step_in_step_order_and_the_floor_apart(tmp_path):
    history = tmp_path / "evaluations.json"
    Metrics.add_to_history(history, {"swd_mean": 50.0}, fake_checkpoint(tmp_path / "late", 25))
    Metrics.add_to_history(history, {"swd_mean": 90.0}, fake_checkpoint(tmp_path / "early", 10))
    Metrics.add_to_history(history, {"swd_mean": 40.0}, fake_checkpoint(tmp_path / "late", 25))  # measured again
    Metrics.add_to_history(history, {"swd_mean": 14.0})
    saved = json.loads(history.read_text())
    assert saved["floor"] == {"swd_mean": 14.0}
    assert saved["evaluations"] == [
        {"step": 10, "run": "testrun", "epochs_done": 1, "batches_done": 0, "images": 100, "swd_mean": 90.0},
        {"step": 25, "run": "testrun", "epochs_done": 2, "batches_done": 5, "images": 100, "swd_mean": 40.0}]


def test_a_history_keeps_to_one_training_run(tmp_path):
    """A --fresh start in the same folder is another run: its evaluations go to another file, and
    Figures.py's curve (of_run) leaves out the replaced model's."""
    history = tmp_path / "evaluations.json"
    Metrics.add_to_history(history, {"swd_mean": 50.0}, fake_checkpoint(tmp_path / "Model", 25))
    fresh = fake_checkpoint(tmp_path / "Model", 5, run="freshrun")
    with pytest.raises(UserError, match=f"{history} holds the evaluations of run testrun, not of {fresh}'s run "
                                        f"freshrun \\(a --fresh start there makes a new run\\); delete it, or give"):
        Metrics.add_to_history(history, {"swd_mean": 70.0}, fresh)
    assert [entry["run"] for entry in json.loads(history.read_text())["evaluations"]] == ["testrun"]
    # Unnamed entries, of files or checkpoints from before runs had names, count as any run's.
    older = [{"step": 1}, {"step": 2, "run": ""}, {"step": 3, "run": "testrun"}, {"step": 4, "run": "freshrun"}]
    assert Metrics.of_run(older, "testrun") == older[:3]
    history.write_text(json.dumps({"floor": None, "evaluations": older[:2]}))
    Metrics.add_to_history(history, {"swd_mean": 60.0}, fresh)
    assert len(json.loads(history.read_text())["evaluations"]) == 3


@pytest.mark.parametrize("text", ['{"evaluations": [{}]}', '{"evaluations": [1]}', '{"evaluations": {}}'],
                         ids=["no-step", "not-an-entry", "not-a-list"])
def test_a_history_that_is_not_one_is_refused(tmp_path, text):
    (tmp_path / "evaluations.json").write_text(text)
    with pytest.raises(UserError, match="is not an evaluation history: Evaluate.py --history writes an object with a "
                                        "list of evaluations, each with its step"):
        Metrics.check_history(tmp_path / "evaluations.json")


@pytest.mark.slow
def test_a_history_that_cannot_be_written_is_refused_before_the_measuring(faces_dir, tmp_path):
    (tmp_path / "afile").write_text("")
    for history, words in [(tmp_path / "afile" / "h.json", f"--history's folder {tmp_path / 'afile'} is a file, not "
                                                            f"a folder"),
                           (tmp_path, f"--history {tmp_path} is a folder; name a file in it")]:
        result = run_script("Evaluate.py", "--real", faces_dir, "--n", "4", "--output", tmp_path / "out",
                            "--real-b", faces_dir, "--history", history, check=False)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()  # refused before any measuring


def test_a_checkpoint_saved_while_it_was_measured_is_not_filed_under_the_new_step(tmp_path):
    history = tmp_path / "evaluations.json"
    model = fake_checkpoint(tmp_path / "Model", 25)  # Train.py saved step 25 while step 16's weights were measured
    with pytest.raises(UserError, match=r"saved step 25 while step 16 was measured, so .* was left as it was"):
        Metrics.add_to_history(history, {"swd_mean": 50.0, "run": "testrun", "step": 16}, model)
    assert not history.exists()


@pytest.mark.slow
def test_evaluate_adds_its_metrics_and_the_spread_to_the_history(trained, faces_dir, tmp_path):
    history = tmp_path / "evaluations.json"
    run_script("Evaluate.py", "--model-dir", trained[0] / "Model", "--real", faces_dir, "--n", 4,
               "--output", tmp_path / "out", "--history", history)
    run_script("Evaluate.py", "--real", faces_dir, "--real-b", faces_dir, "--n", 4,
               "--output", tmp_path / "floor", "--history", history)
    saved = json.loads(history.read_text())
    [entry] = saved["evaluations"]
    state = json.loads((trained[0] / "Model" / "state.json").read_text())
    assert (entry["step"], entry["epochs_done"], entry["run"]) == (2, 1, state["run"])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["step"] == 2  # the weights' own stamp
    assert entry["swd_mean"] == json.loads((tmp_path / "out" / "metrics.json").read_text())["swd_mean"]
    assert entry["spread_candidates"] > 0 and entry["spread_real"] > 20
    assert saved["floor"]["candidates"] == str(faces_dir)


@pytest.mark.slow
def test_history_mistakes_are_refused_in_one_sentence_before_any_measuring(faces_dir, tmp_path):
    (tmp_path / "notes.json").write_text("[1, 2]")
    message = refused(run_script("Evaluate.py", "--real", faces_dir, "--real-b", faces_dir, "--n", 2,
                                 "--output", tmp_path / "out", "--history", tmp_path / "notes.json", check=False))
    assert "is not an evaluation history" in message
    (tmp_path / "weights only").mkdir()
    message = refused(run_script("Evaluate.py", "--model-dir", tmp_path / "weights only", "--real", faces_dir,
                                 "--n", 2, "--output", tmp_path / "out", "--history", tmp_path / "new.json",
                                 check=False))
    assert "has no state.json" in message
    assert not (tmp_path / "out").exists()


def test_training_faces_that_are_only_copies_of_the_real_ones_are_refused_not_infinity(faces):
    real = np.repeat(faces[:1], 8, axis=0)
    with pytest.raises(UserError, match="copy of the real faces"):
        Metrics.evaluate(faces[8:16], real, train=real[:3], seed=0)
    metrics, _, _ = Metrics.evaluate(faces[8:16], real, train=faces[:2], seed=0)  # face 1 is no copy
    assert np.isfinite(metrics["nearest_median_real"]) and metrics["nearest_median_real"] > 1


def test_the_command_refuses_copies_before_it_draws_a_face(trained, faces_dir, tmp_path):
    copies = tmp_path / "copies"
    copies.mkdir()
    first = sorted(faces_dir.iterdir())[0]
    for number in range(12):
        (copies / f"{number}{first.suffix}").symlink_to(first)
    result = run_script("Evaluate.py", "--model-dir", trained[0] / "Model", "--real", copies, "--n", 12,
                        "--output", tmp_path / "out", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: Every face in {copies} is a copy of the real faces measured, so "
                                      "there is no other face for them to be near: compare with a folder of faces "
                                      "unlike one another.")
    assert "Measuring" not in result.stdout  # printed once the faces are drawn
