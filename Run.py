"""Draw avatars with a trained generator: a grid of random faces and latent interpolation strips.

    python Run.py                       # Model/G_ema or G.safetensors -> Generate/avatars.png, strips.png, strips/
    python Run.py --dims 3,17 --seed 7  # strips for two latent dimensions, reproducibly
    python Run.py --count 100           # also 100 single avatars, Generate/avatar_0000.png ...

A strip shows what one of the 72 noise values does: one base vector drawn from U[0, 1), copied
--steps times with value i set to 1/steps, 2/steps, ..., 1 (0.05, 0.10, ..., 1.00 for 20 steps),
one face per copy, left to right. One weights file is read: plain arrays, no pickle, no
optimizer state. It is G_ema.safetensors where the model folder has it (Train.py --ema's moving
average of G), else G.safetensors; --raw-g takes G.safetensors in any case.

--device auto (the default) draws on a GPU when Paddle has CUDA and one is visible, else on the
CPU; --device cpu keeps to the CPU on any machine. On CPU the generator is exported once to an
inference model (kept in ~/.cache/avatar-generator, keyed by the weights' hash, the four most
recently used kept) and run by Paddle's inference engine with oneDNN, faster than the dynamic graph
(benchmarks/README.md) and the same pictures to within 1e-4; --dygraph skips that. On a GPU the
dynamic graph draws.

--grid, --steps and --count have maxima (64x64, 100 and 10,000: Utils.MAX_GRID_SIDE, MAX_STEPS and
MAX_COUNT), so that a slip of the keyboard is refused at once rather than drawn for hours into
gigabytes; --seed is 0 to 2**63 - 1, as in every script.
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

import argparse
import re
import secrets

import numpy as np
from tqdm import tqdm

import Checkpoint
import Drawing
import Files
from Net import Z_DIM


def grid_shape(text):
    """An argparse type: "ROWSxCOLUMNS" -> (rows, columns), each from 1 to Utils.MAX_GRID_SIDE."""
    match = re.fullmatch(r"([0-9]+)x([0-9]+)", text.strip())
    if not match or not all(1 <= int(side) <= Utils.MAX_GRID_SIDE for side in match.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not ROWSxCOLUMNS, each from 1 to {Utils.MAX_GRID_SIDE}, "
                                         f"such as 8x8")
    return int(match[1]), int(match[2])


def latent_dims(text):
    """An argparse type: "all" or comma-separated dimensions such as "3,17,40" -> a list, each
    dimension once."""
    if text.strip() == "all":
        return list(range(Z_DIM))
    try:
        dims = [int(dim) for dim in text.split(",") if dim.strip()]
    except ValueError:
        dims = []
    if not dims or not all(0 <= dim < Z_DIM for dim in dims) or len(set(dims)) < len(dims):
        raise argparse.ArgumentTypeError(f"{text!r} is not \"all\" or dimensions from 0 to {Z_DIM - 1}, each once, "
                                         f"such as 3,17,40")
    return dims


strip_steps = Files.within(int, 1, Utils.MAX_STEPS)
single_count = Files.within(int, 0, Utils.MAX_COUNT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Utils.HelpFormatter)
    Checkpoint.add_generator_flags(parser)
    parser.add_argument("--output", default="Generate", help="folder for the pictures")
    parser.add_argument("--seed", type=Utils.seed_number,
                        help="seed of the noise, 0 to 2**63 - 1; the same seed gives the same pictures "
                             "(default: random)")
    parser.add_argument("--dims", default="all", type=latent_dims,
                        help=f"latent dimensions to draw strips for, e.g. 3,17,40 (0 to {Z_DIM - 1})")
    parser.add_argument("--steps", type=strip_steps, default=20, help=f"faces per strip, at most {Utils.MAX_STEPS}")
    parser.add_argument("--grid", type=grid_shape, default="8x8",
                        help=f"rows x columns of the avatar grid, each at most {Utils.MAX_GRID_SIDE}")
    parser.add_argument("--count", type=single_count, default=0,
                        help=f"also write this many single avatars, at most {Utils.MAX_COUNT}")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"],
                        help="where to draw: auto takes a GPU when Paddle has CUDA and one is visible")
    parser.add_argument("--dygraph", action="store_true",
                        help="draw with Paddle's dynamic graph, not the exported inference model (slower on CPU)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    Utils.choose_device(args.device)
    output = Files.writable_folder(args.output, "--output")  # before the generator is loaded and exported
    load = Checkpoint.load_generator if args.dygraph else Drawing.load_generator_for_inference
    generator = load(args.model_dir, args.raw_g)
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    rng = np.random.default_rng(seed)
    cleared = clear_earlier_pictures(output)
    if cleared:
        print(f"Removed {cleared} pictures an earlier Run.py drew into {output} (its strips and single avatars), "
              f"so that the folder holds this run's alone.")
    draw_grid(generator, rng, args.grid, output)
    draw_strips(generator, Utils.random_noise(rng, 1)[0], args.dims, args.steps, output)
    draw_singles(generator, Utils.random_noise(rng, args.count), output)
    rows, cols = args.grid
    print(f"Seed {seed}: wrote {output / 'avatars.png'} ({rows}x{cols}), {output / 'strips.png'} "
          f"({len(args.dims)} strips of {args.steps})" + (f" and {args.count} single avatars" if args.count else "")
          + f" with {Checkpoint.drawn_with(args.model_dir, args.raw_g)}.")


EARLIER_PICTURES = (("strips", re.compile(r"dim_[0-9]{2}\.png")), (".", re.compile(r"avatar_[0-9]{4}\.png")))


def clear_earlier_pictures(output):
    """Remove the strips and single avatars an earlier Run.py wrote into output, and nothing else
    (files of other names stay), so that its strips of other dimensions and a larger --count's
    avatars are not taken for this run's. avatars.png and strips.png are replaced anyway. Returns
    how many files went."""
    earlier = [path for folder, name in EARLIER_PICTURES if (output / folder).is_dir()
               for path in (output / folder).iterdir() if name.fullmatch(path.name) and path.is_file()]
    for path in earlier:
        path.unlink()
    return len(earlier)


def draw_grid(generator, rng, grid, output):
    """avatars.png: a grid of random faces, row by row."""
    rows, cols = grid
    avatars = Drawing.generate(generator, Utils.random_noise(rng, rows * cols))
    Utils.save_png(Utils.tile_images(avatars, rows, cols), output / "avatars.png")


def draw_strips(generator, base, dims, steps, output):
    """strips.png, one row per dimension, and each row as strips/dim_XX.png."""
    strips = Drawing.generate(generator, Drawing.interpolation_strips(base, dims, steps))
    Utils.save_png(Utils.tile_images(strips, len(dims), steps), output / "strips.png")
    for row, dim in enumerate(dims):
        strip = strips[row * steps:(row + 1) * steps]
        Utils.save_png(Utils.tile_images(strip, 1, steps), output / "strips" / f"dim_{dim:02d}.png")


def draw_singles(generator, noise, output, batch=64):
    """avatar_0000.png ...: one face per noise vector, drawn a batch at a time so that memory does
    not grow with --count; a bar shows the progress when there is more than one batch."""
    with tqdm(total=len(noise), unit="avatar", desc="single avatars", disable=len(noise) <= batch) as bar:
        for start in range(0, len(noise), batch):
            for number, avatar in enumerate(Drawing.generate(generator, noise[start:start + batch]), start):
                Utils.save_png(avatar, output / f"avatar_{number:04d}.png")
                bar.update()


if __name__ == "__main__":
    Utils.run_main(main)
