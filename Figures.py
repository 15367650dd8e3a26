"""Draw the README's pictures into Res/ from a trained model, in one command:

    python Figures.py --model-dir Model --train DataSet/faces --progress Output --output Res

- avatars.png: an 8x8 grid of random avatars;
- hair_shade.png, hair_colour.png: interpolation strips (three base vectors, one row each) for the
  latent dimension that most changes the hair's brightness, and the one that most changes its hue.
  Both are chosen by measuring all 72 dimensions, not by eye (see measure_hair);
- loss.png: the loss curve of the whole training run, from Model/state.json;
- progress.gif: the fixed-noise grids that Train.py wrote during training (--progress: its
  --output folder), at most 16 frames evenly spaced, at half size;
- nearest.png and metrics.json: Metrics.py's memorisation picture and metrics (--train, --real);
- evaluations.png: SWD and MS-SSIM of every checkpoint of the training run that Evaluate.py
  --history recorded in the model folder's evaluations.json, beside the real faces' (if the file is there).

Every picture is drawn by G_ema.safetensors where the model folder has it (Train.py --ema), else by
G.safetensors; --raw-g takes G.safetensors in any case. figures.json records which, the seed and
every dimension's measurement.

Every input is read and checked, and --output proven writable, before the first picture is written:
a mistake found halfway would leave Res/ a mix of the shipped pictures and new ones.
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

import argparse
from pathlib import Path

import numpy as np

import Checkpoint
import Drawing
import Files
import Metrics
import Recipe
from Checkpoint import STATE_FILE, ModelFolder
from Drawing import STRIP_STEPS, interpolation_strips
from Files import FACES_FOLDER, UserError

STRIP_ROWS = 3      # base vectors shown per strip picture
HISTORY_FILE = "evaluations.json"  # in the model folder: Evaluate.py --history of its training run
PROGRESS_FRAME_MS = 500  # how long progress.gif shows each training grid


def strip_picture(generator, base, dim):
    """One strip of dimension dim per base vector, one row each."""
    noise = np.concatenate([interpolation_strips(vector, [dim], STRIP_STEPS) for vector in base])
    return Utils.tile_images(Drawing.generate(generator, noise), len(base), STRIP_STEPS)


def progress_frames(grids_folder, max_frames=16, scale=0.5):
    """progress.gif's frames: the fixed-noise grids Train.py saved during training
    (epoch_XXXX_batch_XXXX.png), in order, at most max_frames of them evenly spaced (the last one
    always in), shrunk by scale to keep the GIF small."""
    from PIL import Image

    grids = sorted(Path(grids_folder).glob("epoch_*_batch_*.png"))
    if not grids:
        raise UserError(f"{grids_folder} holds no training grids (epoch_XXXX_batch_XXXX.png); pass "
                        f"Train.py's --output folder as --progress, or leave --progress out.")
    chosen = [grids[i] for i in np.unique(np.linspace(0, len(grids) - 1, max_frames).round().astype(int))]
    frames = []
    for grid in chosen:
        pixels = Files.decode_image(grid)
        if pixels is None:
            raise UserError(f"{grid} cannot be read as a picture, so progress.gif cannot show it; move it out "
                            f"of --progress {grids_folder}, or leave --progress out.")
        image = Image.fromarray(pixels)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        frames.append(np.asarray(image))
    return frames


def save_evaluation_curve(history, shipped_step, path, changes=()):
    """SWD and MS-SSIM at every evaluated checkpoint, with the real-vs-real floor and the goals
    (SWD at most 2x the floor, MS-SSIM at most 1.1x the real faces'), the shipped step marked,
    and each change of recipe or data when continuing (state.json's changes) labelled."""
    plt = Utils.pyplot()
    evaluations, floor = history["evaluations"], history.get("floor")
    figure, (swd_axes, ssim_axes) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for axes, key, label, reference, goal in [
            (swd_axes, "swd_mean", "SWD x1e3, mean of 4 scales (lower is closer)",
             floor and floor["swd_mean"], 2),
            (ssim_axes, "ms_ssim_candidates", "MS-SSIM of random pairs (lower is more varied)",
             floor and floor["ms_ssim_real"], 1.1)]:
        measured = [(entry["step"], entry[key]) for entry in evaluations if key in entry]
        axes.plot(*zip(*measured), "o-", color="tab:blue", label="generator")
        if reference:
            axes.axhline(reference, color="tab:green", linestyle="--", label="real faces")
            axes.axhline(goal * reference, color="tab:green", linestyle=":", label=f"goal: {goal}x real")
        axes.axvline(shipped_step, color="tab:orange", alpha=0.6, label="shipped")
        for change in changes:
            axes.axvline(change["step"], color="grey", linestyle=":", linewidth=1)
            axes.annotate(change_label(change), (change["step"], 1), xycoords=("data", "axes fraction"),
                          xytext=(3, -3), textcoords="offset points", fontsize=7, color="dimgrey",
                          rotation=90, va="top")
        axes.set_xlabel("training step")
        axes.set_title(label, fontsize=10)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    Utils.save_figure(figure, path)


def change_label(change):
    """"ema 0.998, augment color,translation,cutout" for {"step": 1480, "ema": 0.998, "augment": ...};
    a change of data reads "data: 29439 faces"."""
    if "data" in change:
        return f"data: {change['images']} faces"
    return ", ".join(f"{name} {value}" for name, value in change.items() if name != "step")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Utils.HelpFormatter)
    Checkpoint.add_generator_flags(parser)
    parser.add_argument("--train", default=FACES_FOLDER, help="the training faces, for nearest.png")
    parser.add_argument("--real", help="held-out real faces for the metrics (default: --train)")
    parser.add_argument("--n", type=Metrics.face_count, default=500, help="faces on each side of the metrics")
    parser.add_argument("--progress", help="Train.py's --output folder, for progress.gif (default: a "
                                           "progress.gif already in --output is left as it is)")
    parser.add_argument("--seed", type=Utils.seed_number, default=0, help="seed of every picture's noise")
    parser.add_argument("--output", default="Res", help="folder for the pictures")
    return parser.parse_args(argv)


def evaluation_history(model_dir, run):
    """The evaluations Evaluate.py --history recorded in model_dir of its training run (not of a
    model that a --fresh start replaced there), and the floor; no evaluations if it recorded none."""
    path = Path(model_dir) / HISTORY_FILE
    history = Metrics.read_history(path) if path.exists() else {"evaluations": []}
    history["evaluations"] = Metrics.of_run(history["evaluations"], run)
    return history


def hair_strips(generator, rng, output):
    """hair_shade.png and hair_colour.png, each of the dimension that changes it most; returns
    the measured changes and the two dimensions."""
    shade, hue = Drawing.measure_hair(generator, rng)
    shade_dim, colour_dim = Drawing.hair_dimensions(shade, hue)
    base = Utils.random_noise(rng, STRIP_ROWS)
    Utils.save_png(strip_picture(generator, base, shade_dim), output / "hair_shade.png")
    Utils.save_png(strip_picture(generator, base, colour_dim), output / "hair_colour.png")
    return shade, hue, shade_dim, colour_dim


def main(argv=None):
    args = parse_args(argv)
    output = Files.writable_folder(args.output, "--output")
    if not (Path(args.model_dir) / STATE_FILE).exists():
        raise UserError(f"{Path(args.model_dir) / STATE_FILE} does not exist: the loss curve needs "
                        f"the state.json that Train.py writes beside the weights.")
    state = ModelFolder(args.model_dir).read_state()
    frames = progress_frames(args.progress) if args.progress else []
    history = evaluation_history(args.model_dir, state.run)
    Utils.choose_device("auto")
    generator = Drawing.load_generator_for_inference(args.model_dir, args.raw_g)
    # The metrics come first: measure_model reads --train and --real, and checks --n against them,
    # before it writes anything.
    metrics = Metrics.measure_model(args.model_dir, args.real or args.train, args.train, args.n, args.seed, output,
                                    raw_g=args.raw_g)
    print(Metrics.format_table(metrics))

    rng = np.random.default_rng(args.seed)
    Utils.save_png(Utils.tile_images(Drawing.generate(generator, Utils.random_noise(rng, Drawing.AVATARS)), 8, 8),
                   output / "avatars.png")
    shade, hue, shade_dim, colour_dim = hair_strips(generator, rng, output)
    Utils.save_loss_curve(state.losses, state.steps_per_epoch, output / "loss.png",
                          Recipe.loss_axis_name(state.hyper_parameters.get("loss", "bce"), state.changes))
    # Without --progress, a progress.gif already in --output stays as it is, and figures.json records
    # no frame count for it.
    if frames:
        Files.write_bytes(output / "progress.gif", Utils.gif_bytes(frames, PROGRESS_FRAME_MS))
    if history["evaluations"]:
        save_evaluation_curve(history, state.global_step, output / "evaluations.png", state.changes)
    progress = {"progress_frames": len(frames)} if frames else {}
    Files.write_json({"generator": str(Checkpoint.generator_file(args.model_dir, args.raw_g)), "seed": args.seed,
                      "hair_shade_dim": shade_dim, "hair_colour_dim": colour_dim,
                      "hair_brightness_change": [round(float(v), 4) for v in shade],
                      "hair_hue_change_degrees": [round(float(v), 2) for v in hue],
                      **progress, "epochs": state.epochs_done, "steps": state.global_step},
                     output / "figures.json")
    print(f"Hair shade: dimension {shade_dim} (brightness change {shade[shade_dim]:.3f}); hair colour: "
          f"dimension {colour_dim} (hue change {hue[colour_dim]:.1f} degrees, weighted). Pictures in {output}.")


if __name__ == "__main__":
    Utils.run_main(main)
