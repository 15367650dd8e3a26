"""Figures.py: the hair measurements find the dimensions that change hair shade and hair colour,
and one command writes every picture of the README."""
import json
import shutil

import numpy as np
import paddle
import pytest
from PIL import Image

import Drawing
import Figures
from conftest import run_script


def hair_pictures(rgb):
    """Pictures whose hair region is one colour (RGB in 0..255) and whose face is mid grey."""
    images = np.full((len(rgb), 96, 96, 3), 128, np.uint8)
    images[:, Drawing.hair_mask()] = np.asarray(rgb, np.uint8)[:, None, :]
    return images


def test_hair_mask_is_the_top_and_the_sides_not_the_face():
    mask = Drawing.hair_mask()
    assert mask[:28].all() and mask[30:60, :12].all() and mask[30:60, -12:].all()
    assert not mask[40:, 20:76].any() and not mask[70:].any()


def test_hair_colour_measures_brightness_and_hue_and_sees_no_hue_in_grey():
    brightness, chroma = Drawing.hair_colour(hair_pictures([[255, 0, 0], [0, 0, 255], [100, 100, 100]]),
                                             Drawing.hair_mask())
    assert np.allclose(brightness, [1.0, 1.0, 100 / 255], atol=1e-4)
    red, blue, grey = chroma
    assert np.linalg.norm(red) > 0.99 and np.linalg.norm(blue) > 0.99 and np.linalg.norm(grey) < 1e-6
    angle = np.degrees(np.arccos(red @ blue / (np.linalg.norm(red) * np.linalg.norm(blue))))
    assert abs(angle - 120) < 0.01  # red at 0 degrees of hue, blue at 240


class HairGenerator(paddle.nn.Layer):
    """A stand-in generator: noise value 5 sets the hair's brightness, value 9 turns it from red
    to blue, the other 70 do nothing."""

    def forward(self, z):
        shade, colour = 0.2 + 0.8 * z[:, 5:6], z[:, 9:10]
        rgb = paddle.concat([1 - colour, paddle.zeros_like(colour), colour], axis=1) * shade  # [N, 3] in 0..1
        mask = paddle.to_tensor(Drawing.hair_mask().astype("float32"))
        hair = rgb[:, :, None, None] * mask + 0.5 * (1 - mask)
        return hair * 2 - 1


def test_measure_hair_finds_the_shade_and_the_colour_dimensions():
    shade, hue = Drawing.measure_hair(HairGenerator(), np.random.default_rng(0), bases=4)
    assert shade.shape == hue.shape == (72,)
    assert shade.argmax() == 5 and 0.38 < shade[5] <= 0.76 + 1e-6  # 0.8 * 0.95 times the brighter channel
    assert hue.argmax() == 9 and hue[9] > 30
    assert np.delete(shade, [5, 9]).max() < 1e-6 and np.delete(hue, [9]).max() < 1  # uint8 rounding


@pytest.mark.slow
def test_one_command_writes_every_picture(trained, faces_dir, tmp_path):
    run, _ = trained
    result = run_script("Figures.py", "--model-dir", run / "Model", "--train", faces_dir, "--n", 8,
                        "--progress", run / "Output", "--output", tmp_path / "Res")
    written = {path.name for path in (tmp_path / "Res").iterdir()}
    assert written == {"avatars.png", "hair_shade.png", "hair_colour.png", "loss.png", "progress.gif",
                       "nearest.png", "metrics.json", "figures.json"}
    assert Image.open(tmp_path / "Res" / "avatars.png").size == (8 * 96, 8 * 96)
    assert Image.open(tmp_path / "Res" / "hair_shade.png").size == (20 * 96, 3 * 96)
    assert Image.open(tmp_path / "Res" / "progress.gif").n_frames == 2  # the grids of batches 1 and 2
    figures = json.loads((tmp_path / "Res" / "figures.json").read_text())
    assert figures["hair_shade_dim"] != figures["hair_colour_dim"]
    assert len(figures["hair_brightness_change"]) == len(figures["hair_hue_change_degrees"]) == 72
    assert figures["progress_frames"] == 2
    assert "Hair shade: dimension" in result.stdout

    # Redrawn without --progress (a ship whose run left no grids), the GIF stays as it was and
    # figures.json does not claim a number of frames for it.
    gif = (tmp_path / "Res" / "progress.gif").read_bytes()
    run_script("Figures.py", "--model-dir", run / "Model", "--train", faces_dir, "--n", 8, "--output", tmp_path / "Res")
    assert (tmp_path / "Res" / "progress.gif").read_bytes() == gif
    assert "progress_frames" not in json.loads((tmp_path / "Res" / "figures.json").read_text())


def test_without_state_json_the_error_is_one_sentence(trained, faces_dir, tmp_path):
    model = tmp_path / "Model"
    model.mkdir()
    (model / "G.safetensors").write_bytes((trained[0] / "Model" / "G.safetensors").read_bytes())
    result = run_script("Figures.py", "--model-dir", model, "--train", faces_dir, "--output", tmp_path / "Res",
                        check=False)
    assert result.returncode == 2
    assert "state.json does not exist" in result.stderr and "Traceback" not in result.stderr


def refusal(trained, faces_dir, tmp_path, *mistake):
    """Figures.py's stderr for flags that hold a mistake (given last, so that they override the good
    ones before them), after checking that it ended in one sentence, with exit status 2, before it
    changed anything in a Res folder that already held a shipped avatars.png."""
    res = tmp_path / "Res"
    res.mkdir()
    (res / "avatars.png").write_bytes(b"the shipped avatars")
    run, _ = trained
    result = run_script("Figures.py", "--model-dir", run / "Model", "--train", faces_dir, "--n", 8,
                        "--output", res, *mistake, check=False)
    assert result.returncode == 2 and result.stderr.count("error: ") == 1 and "Traceback" not in result.stderr
    assert {path.name: path.read_bytes() for path in res.iterdir()} == {"avatars.png": b"the shipped avatars"}
    return result.stderr


def test_an_output_that_is_a_file_is_refused_in_one_sentence(trained, faces_dir, tmp_path):
    taken = tmp_path / "figures"
    taken.write_text("not a folder")
    assert f"--output {taken} is a file, not a folder" in refusal(trained, faces_dir, tmp_path, "--output", taken)
    assert taken.read_text() == "not a folder"


def test_a_grid_that_is_not_a_png_is_refused_in_one_sentence(trained, faces_dir, tmp_path):
    grid = tmp_path / "Output" / "epoch_0009_batch_0001.png"
    grid.parent.mkdir()
    grid.write_text("not a picture")
    assert f"{grid} cannot be read as a picture" in refusal(trained, faces_dir, tmp_path, "--progress", grid.parent)


@pytest.mark.slow
def test_a_missing_training_folder_is_refused_before_any_picture_is_written(trained, faces_dir, tmp_path):
    missing = tmp_path / "faces"
    assert f"{missing} does not exist" in refusal(trained, faces_dir, tmp_path, "--train", missing)


@pytest.mark.slow
def test_a_progress_folder_without_grids_is_refused_before_any_picture_is_written(trained, faces_dir, tmp_path):
    (tmp_path / "Output").mkdir()
    assert "holds no training grids" in refusal(trained, faces_dir, tmp_path, "--progress", tmp_path / "Output")


def test_more_faces_than_the_folder_holds_are_refused_before_any_picture_is_written(trained, faces_dir, tmp_path):
    assert "fewer than --n 500" in refusal(trained, faces_dir, tmp_path, "--n", 500)


def test_a_damaged_evaluation_history_is_refused_before_any_picture_is_written(trained, faces_dir, tmp_path):
    model = shutil.copytree(trained[0] / "Model", tmp_path / "Model")
    (model / "evaluations.json").write_text("{")
    assert "cannot be read as an evaluation history" in refusal(trained, faces_dir, tmp_path, "--model-dir", model)


def test_the_evaluation_curve_shows_every_evaluated_step_beside_the_floor(tmp_path):
    history = {"floor": {"swd_mean": 14.4, "ms_ssim_real": 0.244},
               "evaluations": [{"step": 296, "swd_mean": 178.2, "ms_ssim_candidates": 0.781},
                               {"step": 1480, "swd_mean": 76.4, "ms_ssim_candidates": 0.479},
                               {"step": 2000, "swd_mean": 60.0}]}  # a measurement without MS-SSIM
    changes = [{"step": 1480, "ema": 0.998, "augment": "color"}, {"step": 1800, "data": "faces", "images": 29439}]
    assert [Figures.change_label(change) for change in changes] == ["ema 0.998, augment color", "data: 29439 faces"]
    Figures.save_evaluation_curve(history, 1480, tmp_path / "evaluations.png", changes)
    with Image.open(tmp_path / "evaluations.png") as picture:
        assert picture.size == (1100, 420)
        pixels = np.asarray(picture.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.05  # drawn on, not blank
