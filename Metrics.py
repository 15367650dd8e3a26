"""The measures of a generator, without internet: SWD (how close its faces are to real ones),
MS-SSIM (how varied they are), the nearest training faces (whether it copies them) and the spread;
and the evaluation history of a training run. Evaluate.py and Figures.py measure with it; the
docstring of Evaluate.py says what each measure is and where it comes from.
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

from pathlib import Path

import numpy as np
from scipy.ndimage import convolve1d

import Drawing
import Files
from Checkpoint import ModelFolder, generator_file, load_generator
from Files import UserError
from Reader import DataSetError, FaceDataset

SWD_LEVELS = 4            # 96, 48, 24, 12 px
PATCHES_PER_IMAGE = 128
PATCH_SIZE = 7
PROJECTION_REPEATS = 4
PROJECTIONS = 128
MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])  # Wang et al. 2003
NEAREST_COUNT = 64
FEWEST_FACES = 2          # MS-SSIM compares pairs of different faces within each set
face_count = Files.argument_type(  # an argparse type: --n of Evaluate.py and Figures.py
    int, lambda value: value >= FEWEST_FACES,
    f"a whole number of at least {FEWEST_FACES}: MS-SSIM compares pairs of different faces")

_BINOMIAL = np.array([1, 4, 6, 4, 1], np.float32) / 16  # the 5-tap filter of Burt and Adelson's pyramid


# ------------------------------------------------------------------------------------------- SWD

def _blur(images):
    return convolve1d(convolve1d(images, _BINOMIAL, axis=1, mode="reflect"), _BINOMIAL, axis=2, mode="reflect")


def _downsample(images):
    return _blur(images)[:, ::2, ::2]


def _upsample(images):
    """Double the size: zeros between the samples, then the same filter (times 4 for the zeros)."""
    count, height, width, channels = images.shape
    spread = np.zeros((count, height * 2, width * 2, channels), np.float32)
    spread[:, ::2, ::2] = images
    return _blur(spread) * 4


def laplacian_pyramid(images, levels=SWD_LEVELS):
    """float32 [N, H, W, C] -> [band at H, band at H/2, ..., low-pass at H/2^(levels-1)]."""
    pyramid, current = [], images
    for _ in range(levels - 1):
        smaller = _downsample(current)
        pyramid.append(current - _upsample(smaller))
        current = smaller
    pyramid.append(current)
    return pyramid


def sample_patches(level, rng, per_image=PATCHES_PER_IMAGE, size=PATCH_SIZE):
    """[N * per_image, size * size * C]: random size x size neighbourhoods of each image."""
    count, height, width, channels = level.shape
    rows = rng.integers(0, height - size + 1, (count, per_image))
    cols = rng.integers(0, width - size + 1, (count, per_image))
    offsets = np.arange(size)
    image_index = np.arange(count)[:, None, None, None]
    patches = level[image_index, (rows[..., None] + offsets)[..., :, None], (cols[..., None] + offsets)[..., None, :]]
    return patches.reshape(count * per_image, size * size * channels)


def normalise(descriptors, channels=3):
    """Zero mean and unit spread per colour channel, over the whole set (one set, one level)."""
    per_channel = descriptors.reshape(len(descriptors), -1, channels)
    per_channel = (per_channel - per_channel.mean(axis=(0, 1))) / (per_channel.std(axis=(0, 1)) + 1e-8)
    return per_channel.reshape(len(descriptors), -1)


def sliced_wasserstein(a, b, rng, repeats=PROJECTION_REPEATS, projections=PROJECTIONS):
    """Mean over random unit directions of the 1-D Wasserstein distance between the projections."""
    distances = []
    for _ in range(repeats):
        directions = rng.standard_normal((a.shape[1], projections)).astype(np.float32)
        directions /= np.linalg.norm(directions, axis=0, keepdims=True)
        projected_a, projected_b = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)
        distances.append(np.abs(projected_a - projected_b).mean())
    return float(np.mean(distances))


def swd(images_a, images_b, seed=0):
    """SWD x 1e3 per pyramid level (96, 48, 24, 12 px) and their mean, for two uint8 sets of equal size."""
    if len(images_a) != len(images_b):
        raise ValueError(f"SWD compares sets of equal size, not {len(images_a)} and {len(images_b)}")
    rng = np.random.default_rng(seed)
    pyramids = [laplacian_pyramid(images.astype(np.float32) / 255) for images in (images_a, images_b)]
    per_level = []
    for level_a, level_b in zip(*pyramids):
        descriptors = [normalise(sample_patches(level, rng)) for level in (level_a, level_b)]
        per_level.append(sliced_wasserstein(*descriptors, rng) * 1e3)
    sizes = [level.shape[1] for level in pyramids[0]]
    return {**{f"swd_{size}px": value for size, value in zip(sizes, per_level)}, "swd_mean": float(np.mean(per_level))}


# --------------------------------------------------------------------------------------- MS-SSIM

def _gaussian_filter(images, size, sigma=1.5):
    """'Valid' Gaussian filtering (odd size) along height and width of [P, H, W, C]."""
    taps = np.exp(-0.5 * ((np.arange(size) - size // 2) / sigma) ** 2)
    taps /= taps.sum()
    trim = size // 2
    for axis in (1, 2):
        filtered = convolve1d(images, taps, axis=axis, mode="constant")
        images = np.take(filtered, range(trim, images.shape[axis] - trim), axis=axis)
    return images


def ms_ssim(x, y, max_value=255.0):
    """MS-SSIM of image pairs x[i], y[i] (uint8 or float [P, H, W, C]) -> [P]. Five scales as in
    Wang et al. 2003; at 96 px the coarsest scale is 6x6, so there the 11-tap window is cut to 5."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    contrast_structure, luminance = [], None
    for scale in range(len(MS_SSIM_WEIGHTS)):
        side = min(x.shape[1], x.shape[2])
        size = min(11, side if side % 2 else side - 1)
        mu_x, mu_y = _gaussian_filter(x, size), _gaussian_filter(y, size)
        var_x = _gaussian_filter(x * x, size) - mu_x ** 2
        var_y = _gaussian_filter(y * y, size) - mu_y ** 2
        cov = _gaussian_filter(x * y, size) - mu_x * mu_y
        cs = (2 * cov + c2) / (var_x + var_y + c2)
        contrast_structure.append(np.maximum(cs.mean(axis=(1, 2, 3)), 0))
        if scale == len(MS_SSIM_WEIGHTS) - 1:
            luminance = (((2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)) * cs).mean(axis=(1, 2, 3))
        else:
            x, y = _average_pool(x), _average_pool(y)
    factors = np.stack(contrast_structure[:-1] + [np.maximum(luminance, 0)])
    return np.prod(factors ** MS_SSIM_WEIGHTS[:, None], axis=0)


def _average_pool(images):
    height, width = images.shape[1] // 2 * 2, images.shape[2] // 2 * 2
    images = images[:, :height, :width]
    return (images[:, 0::2, 0::2] + images[:, 1::2, 0::2] + images[:, 0::2, 1::2] + images[:, 1::2, 1::2]) / 4


def diversity(images, pairs, seed=0):
    """Mean MS-SSIM over random pairs of different images of one set."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(images), pairs)
    second = (first + rng.integers(1, len(images), pairs)) % len(images)  # never the same image
    return float(ms_ssim(images[first], images[second]).mean())


# --------------------------------------------------------------------------------- memorisation

def nearest(queries, pool, skip_identical=False, chunk=1000):
    """For each query image, the index of the nearest pool image (pixel L2) and the distance
    (root mean square over pixels, in 0..255). skip_identical ignores pool images equal to the
    query, for real queries drawn from the pool itself."""
    q = queries.reshape(len(queries), -1).astype(np.float64) - 127.5
    squared = []
    for start in range(0, len(pool), chunk):  # float64 in chunks: float32 would lose the small distances
        p = pool[start:start + chunk].reshape(-1, q.shape[1]).astype(np.float64) - 127.5
        squared.append((q * q).sum(1)[:, None] + (p * p).sum(1)[None, :] - 2 * q @ p.T)
    squared = np.maximum(np.concatenate(squared, axis=1), 0)
    if skip_identical:
        squared[squared < 1e-2 * q.shape[1]] = np.inf  # closer than 0.1 grey level per pixel
    index = squared.argmin(axis=1)
    return index, np.sqrt(squared[np.arange(len(q)), index] / q.shape[1])


# ------------------------------------------------------------------------- measuring a model folder

def load_faces(folder):
    try:
        return FaceDataset(folder).faces
    except DataSetError as error:
        raise UserError(str(error)) from None


def pick(images, count, rng, what):
    if len(images) < FEWEST_FACES:
        raise UserError(f"{what} holds only {len(images)} face, and MS-SSIM needs pairs: "
                        f"put at least {FEWEST_FACES} faces in it.")
    if len(images) < count:
        raise UserError(f"{what} holds {len(images)} faces, fewer than --n {count}; lower --n.")
    return images[rng.choice(len(images), count, replace=False)]


def real_nearest(real, train, train_folder="the training faces"):
    """How far the first NEAREST_COUNT real faces are from their nearest training faces other than
    their own copies: the measure the candidates' distances are read against. Refused when no real
    face has any other training face, which would make it infinite."""
    _, distance = nearest(real[:NEAREST_COUNT], train, skip_identical=True)
    distance = distance[np.isfinite(distance)]
    if not len(distance):
        raise UserError(f"Every face in {train_folder} is a copy of the real faces measured, so there is no other "
                        "face for them to be near: compare with a folder of faces unlike one another.")
    return distance


def evaluate(candidates, real, train, seed, real_distance=None):
    """All metrics for candidate faces (generated, or a second real set) against real faces,
    and the candidates shown in nearest.png with their nearest training faces. real_distance:
    real_nearest(real, train), where it was measured first."""
    if real_distance is None:
        real_distance = real_nearest(real, train)
    metrics = {"n": len(candidates), **swd(candidates, real, seed)}
    metrics["ms_ssim_candidates"] = diversity(candidates, len(candidates), seed)
    metrics["ms_ssim_real"] = diversity(real, len(real), seed)
    shown = candidates[:NEAREST_COUNT]
    index, distance = nearest(shown, train)
    metrics["nearest_median_candidates"] = float(np.median(distance))
    metrics["nearest_median_real"] = float(np.median(real_distance))
    metrics["spread_candidates"] = Utils.sample_spread(candidates)
    metrics["spread_real"] = Utils.sample_spread(real)
    return metrics, shown, train[index]


def checkpoint_state(model_dir):
    """The RunState of the checkpoint in model_dir, which says the step to file its evaluation under."""
    state = ModelFolder(model_dir).read_state()
    if state is None:
        raise UserError(f"{model_dir} has no state.json, so its evaluation has no step to be filed under "
                        f"in --history: give the folder Train.py wrote, or leave out --history.")
    return state


def read_history(path):
    """The history file Evaluate.py --history writes: {"floor": metrics or None, "evaluations": [...]}."""
    try:
        history = Files.read_json(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path} cannot be read as an evaluation history ({error}).") from None
    evaluations = history.get("evaluations") if isinstance(history, dict) else None
    if not (isinstance(evaluations, list)
            and all(isinstance(entry, dict) and isinstance(entry.get("step"), int) for entry in evaluations)):
        raise UserError(f"{path} is not an evaluation history: Evaluate.py --history writes an object with "
                        f"a list of evaluations, each with its step; give a new file's name instead.")
    return history


def of_run(evaluations, run):
    """The evaluations of one training run. Those without a run's name (written before entries
    named it, or of a checkpoint from before runs had names) count as its own."""
    return [entry for entry in evaluations if (entry.get("run") or run) == run]


def check_history(path, model_dir=None):
    """The history file at path (an empty one if there is none yet), refused if it holds another
    training run's evaluations than model_dir's checkpoint (a --fresh start in the same folder):
    one file, one run's curve."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--history {path} is a folder; name a file in it, e.g. {path / 'evaluations.json'}.")
    Files.writable_folder(path.parent, "--history's folder")
    history = read_history(path) if path.exists() else {"floor": None, "evaluations": []}
    if model_dir is not None:
        state = checkpoint_state(model_dir)
        others = sorted({entry.get("run") for entry in history["evaluations"]} - {None, "", state.run})
        if others:
            raise UserError(f"{path} holds the evaluations of run {others[0]}, not of {model_dir}'s run "
                            f"{state.run or '(unnamed)'} (a --fresh start there makes a new run); delete it, or give "
                            f"--history another file.")
    return history


def add_to_history(path, metrics, model_dir=None):
    """Put metrics into the history file at path: as the floor (a second real set: model_dir None),
    or as the evaluation of model_dir's checkpoint, in place of an earlier one of the same step."""
    history = check_history(path, model_dir)
    if model_dir is None:
        history["floor"] = metrics
    else:
        state = checkpoint_state(model_dir)
        if metrics.get("step", state.global_step) != state.global_step:  # Train.py saved meanwhile
            raise UserError(f"{model_dir} saved step {state.global_step} while step {metrics['step']} was measured, "
                            f"so {path} was left as it was; measure a copy of the folder to follow a running "
                            f"training.")
        entry = {"step": state.global_step, "run": state.run, "epochs_done": state.epochs_done,
                 "batches_done": state.batches_done, "images": state.images, **metrics}
        others = [old for old in history["evaluations"] if old["step"] != state.global_step]
        history["evaluations"] = sorted(others + [entry], key=lambda old: old["step"])
    Files.write_json(history, path)


def measure_model(model_dir, real, train, n, seed, output, real_b=None, raw_g=False):
    """Evaluate the generator of model_dir (G_ema where it is there, unless raw_g: see
    Checkpoint.generator_file), or with real_b a second folder of real faces, against n faces of the
    folder real; write metrics.json and nearest.png to output and return the metrics. train: the
    training faces' folder, for the nearest-neighbour test (None: real)."""
    output = Files.writable_folder(output, "--output")  # before minutes of reading and measuring faces
    print(f"Reading the faces of {real}" + (f" and {train}" if train and train != real else "") + "...", flush=True)
    rng = np.random.default_rng(seed)
    real_faces = pick(load_faces(real), n, rng, real)
    train_faces = load_faces(train) if train else real_faces
    real_distance = real_nearest(real_faces, train_faces, train or real)  # refused before minutes of drawing
    if real_b:
        candidates, source = pick(load_faces(real_b), n, rng, real_b), real_b
    else:
        Utils.choose_device("auto")
        generator = load_generator(model_dir, raw_g)
        candidates = Drawing.generate(generator, Utils.random_noise(rng, n))
        source = str(generator_file(model_dir, raw_g))
    print(f"Measuring {n} faces of {source} against {n} real ones: SWD, MS-SSIM and the nearest training "
          f"faces...", flush=True)
    metrics, shown, neighbours = evaluate(candidates, real_faces, train_faces, seed, real_distance)
    metrics.update(candidates=source, real=str(real), train=str(train or real), seed=seed)
    if not real_b and "global_step" in generator.stamp:  # which checkpoint was measured, if Train.py wrote it
        metrics.update(run=generator.stamp.get("run", ""), step=int(generator.stamp["global_step"]))
    Files.write_json(metrics, output / "metrics.json")
    Utils.save_png(nearest_picture(shown, neighbours), output / "nearest.png")
    return metrics


def nearest_picture(shown, neighbours, pairs_per_row=8):
    """Each face beside its nearest training face, 8 pairs a row (the last row filled with black)."""
    rows = -(-len(shown) // pairs_per_row)
    tiles = np.zeros((rows * pairs_per_row * 2, *shown.shape[1:]), np.uint8)
    tiles[:2 * len(shown)] = np.stack([shown, neighbours], axis=1).reshape(-1, *shown.shape[1:])
    return Utils.tile_images(tiles, rows, pairs_per_row * 2)


def format_table(metrics):
    rows = [("SWD x1e3, 96 px", "swd_96px"), ("SWD x1e3, 48 px", "swd_48px"), ("SWD x1e3, 24 px", "swd_24px"),
            ("SWD x1e3, 12 px", "swd_12px"), ("SWD x1e3, mean", "swd_mean"),
            ("MS-SSIM within candidates", "ms_ssim_candidates"), ("MS-SSIM within real", "ms_ssim_real"),
            ("median nearest-train distance, candidates", "nearest_median_candidates"),
            ("median nearest-train distance, real", "nearest_median_real"),
            ("spread, candidates", "spread_candidates"), ("spread, real", "spread_real")]
    width = max(len(label) for label, _ in rows)
    lines = [f"{metrics['candidates']} against {metrics['real']}, n = {metrics['n']}"]
    lines += [f"{label:<{width}}  {metrics[key]:10.4f}" for label, key in rows]
    return "\n".join(lines)
