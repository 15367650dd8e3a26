"""Measure a generator without internet: how close its faces are to real ones (SWD), how varied
they are (MS-SSIM), and whether it copies its training faces (nearest neighbours).

    python Evaluate.py --model-dir Model --real DataSet/faces --n 1000 --seed 0 --output Eval
    python Evaluate.py --real held_out/ --real-b DataSet/faces      # the floor: real against real

- SWD: sliced Wasserstein distance between Laplacian-pyramid patches of the two sets, as in
  Karras et al. 2018, "Progressive Growing of GANs" (https://arxiv.org/abs/1710.10196), appendix D:
  levels 96, 48, 24 and 12 px, 128 random 7x7 neighbourhoods per image and level, descriptors
  normalised per set and level, 4 x 128 random projections; times 1e3. Lower is closer.
- Diversity: mean MS-SSIM (Wang et al. 2003) over random pairs within a set, as Odena et al. 2017
  used it to detect mode collapse: higher means more alike; a collapsed generator nears 1.
- Memorisation: for 64 generated faces, the pixel distance to the nearest training face, beside the
  same distance for real faces the model never saw. A generator that copies its data sits closer.
- Spread: the per-pixel standard deviation across the faces, in grey levels (real faces about 65,
  a collapsed generator near 0), as Train.py reports it for its sample grids.

--history FILE adds the measurement to a JSON record of a training run, keyed by the checkpoint's
step (with --real-b: the run's floor), from which Figures.py draws the curve of SWD and MS-SSIM:

    python Evaluate.py --model-dir Model --real held_out/ --train DataSet/faces --history Model/evaluations.json

The generator measured is G_ema.safetensors where --model-dir has it (Train.py --ema), else
G.safetensors; --raw-g measures G.safetensors in any case.

Prints one table; writes <output>/metrics.json and <output>/nearest.png (each generated face,
left, beside its nearest training face, right).
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

import argparse

import Checkpoint
import Metrics
from Files import FACES_FOLDER


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Utils.HelpFormatter)
    Checkpoint.add_generator_flags(parser)
    parser.add_argument("--real", default=FACES_FOLDER, help="real faces to compare with (ideally held out)")
    parser.add_argument("--train", help="the faces the model was trained on, for the nearest-neighbour test "
                                        "(default: --real)")
    parser.add_argument("--real-b", help="compare this second real folder with --real instead of a generator")
    parser.add_argument("--n", type=Metrics.face_count, default=1000,
                        help=f"faces on each side, at least {Metrics.FEWEST_FACES}")
    parser.add_argument("--seed", type=Utils.seed_number, default=0,
                        help="seed of noise, patches, projections and pairs")
    parser.add_argument("--output", default="Eval", help="folder for metrics.json and nearest.png")
    parser.add_argument("--history", help="also add the metrics to this JSON file, under the checkpoint's step "
                                          "(with --real-b: as the floor), for Figures.py's curve")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.history:  # its mistakes before minutes of measuring
        Metrics.check_history(args.history, None if args.real_b else args.model_dir)
    metrics = Metrics.measure_model(args.model_dir, args.real, args.train, args.n, args.seed, args.output,
                                    args.real_b, args.raw_g)
    print(Metrics.format_table(metrics))
    if args.history:
        Metrics.add_to_history(args.history, metrics, None if args.real_b else args.model_dir)


if __name__ == "__main__":
    Utils.run_main(main)
