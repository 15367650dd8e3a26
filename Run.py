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
inference model (kept in ~/.cache/avatar-generator, keyed by the weights' hash) and run by Paddle's
inference engine with oneDNN, faster than the dynamic graph (benchmarks/README.md) and the same
pictures to within 1e-4; --dygraph skips that. On a GPU the dynamic graph draws.
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

import argparse
import re
import secrets

import numpy as np

import Files
from Net import Z_DIM


def add_generator_flags(parser):
    """--model-dir and --raw-g, which say the weights that draw: Run.py's, and Studio.py's too."""
    parser.add_argument("--model-dir", default="Model", help="folder holding G.safetensors (and G_ema.safetensors)")
    parser.add_argument("--raw-g", action="store_true",
                        help="draw with G.safetensors even where the averaged G_ema.safetensors is there")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_generator_flags(parser)
    parser.add_argument("--output", default="Generate", help="folder for the pictures")
    parser.add_argument("--seed", type=int,
                        help="seed of the noise, 0 or more; the same seed gives the same pictures (default: random)")
    parser.add_argument("--dims", default="all",
                        help=f"latent dimensions to draw strips for, e.g. 3,17,40 (0 to {Z_DIM - 1})")
    parser.add_argument("--steps", type=int, default=20, help="faces per strip")
    parser.add_argument("--grid", default="8x8", help="rows x columns of the avatar grid")
    parser.add_argument("--count", type=int, default=0, help="also write this many single avatars")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"],
                        help="where to draw: auto takes a GPU when Paddle has CUDA and one is visible")
    parser.add_argument("--dygraph", action="store_true",
                        help="draw with Paddle's dynamic graph, not the exported inference model (slower on CPU)")
    args = parser.parse_args(argv)
    if args.dims == "all":
        args.dims = list(range(Z_DIM))
    else:
        try:
            args.dims = [int(dim) for dim in args.dims.split(",") if dim.strip()]
        except ValueError:
            parser.error(f"--dims takes comma-separated numbers such as 3,17,40, not {args.dims!r}")
        if not args.dims or not all(0 <= dim < Z_DIM for dim in args.dims):
            parser.error(f"--dims must name dimensions between 0 and {Z_DIM - 1}")
    match = re.fullmatch(r"(\d+)x(\d+)", args.grid)
    if not match or 0 in (int(match[1]), int(match[2])):
        parser.error(f"--grid takes ROWSxCOLUMNS such as 8x8, not {args.grid!r}")
    args.grid = (int(match[1]), int(match[2]))
    for flag, value, least in [("--seed", args.seed, 0), ("--steps", args.steps, 1), ("--count", args.count, 0)]:
        if value is not None and value < least:
            parser.error(f"{flag} must be at least {least}, not {value}")
    return args


def interpolation_strips(base, dims, steps):
    """Noise [len(dims) * steps, 72]: for each dimension, `steps` copies of base with that value
    set to 1/steps ... 1."""
    values = np.arange(1, steps + 1, dtype=np.float32) / steps
    noise = np.repeat(base[None, :], len(dims) * steps, axis=0)
    for row, dim in enumerate(dims):
        noise[row * steps:(row + 1) * steps, dim] = values
    return noise


def main(argv=None):
    args = parse_args(argv)
    Utils.choose_device(args.device)
    output = Files.writable_folder(args.output, "--output")  # before the generator is loaded and exported
    load = Utils.load_generator if args.dygraph else Utils.load_generator_for_inference
    generator = load(args.model_dir, args.raw_g)
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    rng = np.random.default_rng(seed)
    rows, cols = args.grid

    avatars = Utils.generate(generator, Utils.random_noise(rng, rows * cols))
    Utils.save_png(Utils.tile_images(avatars, rows, cols), output / "avatars.png")

    base = Utils.random_noise(rng, 1)[0]
    strips = Utils.generate(generator, interpolation_strips(base, args.dims, args.steps))
    Utils.save_png(Utils.tile_images(strips, len(args.dims), args.steps), output / "strips.png")
    for row, dim in enumerate(args.dims):
        strip = strips[row * args.steps:(row + 1) * args.steps]
        Utils.save_png(Utils.tile_images(strip, 1, args.steps), output / "strips" / f"dim_{dim:02d}.png")

    singles = Utils.generate(generator, Utils.random_noise(rng, args.count))
    for number, avatar in enumerate(singles):
        Utils.save_png(avatar, output / f"avatar_{number:04d}.png")
    print(f"Seed {seed}: wrote {output / 'avatars.png'} ({rows}x{cols}), {output / 'strips.png'} "
          f"({len(args.dims)} strips of {args.steps})" + (f" and {args.count} single avatars" if args.count else "")
          + f" with {drawn_with(args.model_dir, args.raw_g)}.")


def drawn_with(model_dir, raw_g):
    """Which weights drew the pictures, in words: G_ema's are not the trained G's, and a user
    comparing folders needs to know which they saw."""
    path = Utils.generator_file(model_dir, raw_g)
    if path.name == Utils.AVERAGED_GENERATOR_FILE:
        return f"{path}, the averaged generator (--raw-g draws with {Utils.GENERATOR_FILE})"
    return f"{path}, the trained generator"


if __name__ == "__main__":
    Utils.run_main(main)
