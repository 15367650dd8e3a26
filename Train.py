"""Train the avatar DCGAN on a folder of 96x96 faces, checkpointing to Model/ and resuming from it.

One process, GPU if there is one, else CPU:
    python Train.py --data DataSet/faces
Several GPUs on one machine (one process per GPU, each trains on its own share of every epoch,
gradients averaged by DataParallel; --batch-size is per process; only rank 0 writes files):
    python -m paddle.distributed.launch --gpus 0,1 Train.py --data DataSet/faces --batch-size 50 --model-dir GpuModel
(a new model folder: a checkpoint keeps its batch size, and the shipped Model/ trained at 32)
Several machines: the same launcher on each, with --nnodes, --master host:port and --rank 0 on the
machine whose --model-dir is trained on (docs/gpus.md, "Several machines"); the other machines need
the faces, not the model folder, which rank 0 sends them.
Run it again with the same --model-dir and it continues where it stopped (--fresh starts over).
Checkpoints go to --model-dir every epoch and on Ctrl-C/SIGTERM (Checkpoint.py says how they
survive crashes); sample grids and the loss curve go to --output.

What is trained (the hyper-parameters, the losses, one step's three phases, G_ema and mixed
precision) is Recipe.py's; this file hosts it: the command line, the processes, the model folder,
stopping, the pictures and the loop. --original trains the original repository's recipe exactly. At each
epoch's end r_t, D's overfitting signal, goes into the log and state.json.

Every step draws its randomness (noise, dropout, augmentation) from a seed derived from
(--seed, step) and every epoch's order from (--seed, epoch), so a resumed run goes on exactly as
one that never stopped.
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

import argparse
import contextlib
import math
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import paddle
from tqdm import tqdm

import Drawing
import Files
import Recipe
from Checkpoint import LOCK_FILE, FolderBusy, ModelFolder, RunState
from Files import UserError
from Net import Discriminator, Generator, init_dcgan_weights
from Reader import MAX_WORKERS, DataSetError, DeviceLoader, FaceDataset, check_folder, make_loader
from Recipe import (
    HYPER_PARAMETERS,
    ORIGINAL,
    MixedPrecision,
    MovingAverage,
    d_learning_rate,
    non_negative_int,
    positive_int,
    trained_with,
)

GRID_SIDE = 8  # the progress grids show 8x8 samples of one fixed noise batch


def add_hyper_parameters(parser):
    """One flag per hyper-parameter, defaulting to None so a resume can tell "not given" from
    "given"; the help says the real default once."""
    for name, hp in HYPER_PARAMETERS.items():
        flag = flag_name(name)
        text = hp.help if hp.default is None else f"{hp.help} (default {str(hp.default).lower()})"
        if isinstance(hp.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(flag, type=hp.type, choices=hp.choices, help=text)


def flag_name(name):
    """The flag of a hyper-parameter: "d_lr" -> "--d-lr"."""
    return "--" + name.replace("_", "-")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=Files.FACES_FOLDER,
                        help="folder of face images, searched recursively (default %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=300, help="train until this many epochs are done "
                                                                         "(default %(default)s)")
    add_hyper_parameters(parser)
    parser.add_argument("--original", action="store_true",
                        help="the original repository's recipe exactly: batch 100, lr 2e-4, beta1 0.8, 2 G "
                             "steps, Paddle's init, D with BatchNorm on its input too and at G's rate, cross "
                             "entropy, no EMA, no augmentation, no mirrored faces, no R1, no mode seeking, no "
                             "top-k, no cooldown (flags given beside it still count)")
    parser.add_argument("--brief", action="store_true", dest="original", help=argparse.SUPPRESS)  # its old name
    parser.add_argument("--model-dir", default="Model", help="checkpoint folder, read to resume and written every "
                                                             "epoch (default %(default)s)")
    parser.add_argument("--output", default="Output", help="folder for sample grids and the loss curve "
                                                           "(default %(default)s)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="where to train "
                                                                                         "(default %(default)s)")
    parser.add_argument("--num-workers", type=Files.within(int, 0, MAX_WORKERS), default=0,
                        help=f"data loader worker processes, at most {MAX_WORKERS} (default %(default)s)")
    parser.add_argument("--sample-every", type=non_negative_int, default=50,
                        help="write a sample grid every this many batches; 0: only at epoch ends (default %(default)s)")
    parser.add_argument("--limit", type=positive_int, help="use only the first N images of --data (default: all)")
    parser.add_argument("--save-every", type=non_negative_int, default=0,
                        help="also checkpoint every this many steps within an epoch; 0: only at epoch ends and when "
                             "stopped (default %(default)s)")
    add_run_flags(parser)
    args = parser.parse_args(argv)
    if args.original:
        for name, value in ORIGINAL.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        args.d_lr = d_learning_rate(vars(args))
    return args


def add_run_flags(parser):
    """The flags of this run alone, none of them a hyper-parameter: its log, where it starts, and
    how it uses a GPU."""
    parser.add_argument("--visualdl", action="store_true",
                        help="also log losses, spread, learning rates, images per second and the sample grids "
                             "for VisualDL, in <--output>/visualdl (pip install visualdl; then "
                             "visualdl --logdir Output/visualdl)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over, ignoring the checkpoint in --model-dir (replaced at the first checkpoint)")
    parser.add_argument("--fresh-d", action="store_true",
                        help="continue G (and G_ema) from the checkpoint, but start D and its Adam state afresh")
    parser.add_argument("--amp", action="store_true",
                        help="GPU only: mixed precision, bfloat16 where the GPU has it, else float16 with loss "
                             "scaling; weights, Adam and checkpoints stay float32")
    parser.add_argument("--cache-device", action="store_true",
                        help="hold the whole data set on the training device as uint8 and cut batches there "
                             "(for fast GPUs; 50,000 faces take 1.4 GB)")


def step_seed(seed, rank, step):
    """The seed of one step's noise and dropout: distinct per (seed, process, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------- outputs

def draw_sample_grid(G, fixed_noise):
    """An 8x8 grid of what G makes of the fixed noise, and the samples' spread."""
    G.eval()
    samples = Drawing.generate(G, fixed_noise)
    G.train()
    return Utils.sample_spread(samples), Utils.tile_images(samples, GRID_SIDE, GRID_SIDE)


class SampleGrid(NamedTuple):
    """A sample grid drawn but not yet on disk. The grid of a step that ends an epoch or a run is
    written after the checkpoint, so that a picture that cannot be written never costs one."""
    grid: np.ndarray
    path: Path
    title: str

    def write(self):
        """The grid as a PNG, titled like the original's; a failure is a warning (picture)."""
        picture(self._save, f"The sample grid {self.path}")

    def _save(self):
        plt = Utils.pyplot()
        height, width, _ = self.grid.shape
        title_height = 40
        # One figure pixel per image pixel, so the tiles are not resampled.
        figure = plt.figure(figsize=(width / 100, (height + title_height) / 100), dpi=100)
        axes = figure.add_axes([0, 0, 1, height / (height + title_height)])
        axes.imshow(self.grid, interpolation="nearest")
        axes.axis("off")
        figure.text(0.5, 1 - title_height / 2 / (height + title_height), self.title, ha="center", va="center",
                    fontsize=12)
        Utils.save_figure(figure, self.path)


def picture(write, what):
    """Call write(), which draws a picture to disk; a picture that cannot be written (a full
    disk, say) is a one-line warning, never the end of a training run."""
    try:
        write()
    except OSError as error:
        print(f"warning: {what} could not be written ({error.strerror or error}); training goes on.", file=sys.stderr)


class VisualDLLog:
    """--visualdl: the run as `visualdl --logdir <--output>/visualdl` shows it, live: every step's
    losses, learning rates and images per second, every sample grid and its spread. Each run
    (a --fresh one is another) has a folder of its own there, and a resumed run appends to it, so
    its curves go on where they stopped. Rank 0 alone writes."""

    def __init__(self, folder):
        from visualdl import LogWriter

        self.writer = LogWriter(logdir=str(folder), file_name="vdlrecords.train.log", flush_secs=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.writer.close()

    def step(self, step, losses, learning_rates, images_per_second):
        """One step's losses (d_fake, d_real, g), the learning rates (G's, D's) and the real images
        trained on per second of training step, by all processes together."""
        d_fake, d_real, g = losses
        scalars = {"loss/D": d_fake + d_real, "loss/D_fake": d_fake, "loss/D_real": d_real, "loss/G": g,
                   "learning_rate/G": learning_rates[0], "learning_rate/D": learning_rates[1],
                   "speed/images_per_second": images_per_second}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def sample(self, step, spread, grid):
        self.writer.add_scalar("samples/spread", spread, step)
        self.writer.add_image("samples/fixed_noise", grid, step)

    def overfitting(self, step, r_t):
        self.writer.add_scalar("diagnostics/r_t", r_t, step)


def check_visualdl(args):
    """--visualdl without VisualDL installed is refused before any work, by every process alike."""
    if not args.visualdl:
        return
    try:
        import visualdl  # noqa: F401
    except ImportError:
        raise UserError("--visualdl needs VisualDL, which requirements.txt leaves out: pip install visualdl "
                        "(README.md, \"Training\"), or train without --visualdl.") from None


# ------------------------------------------------------------------------------------ stopping

class StopRequest:
    """Within this block, Ctrl-C or SIGTERM asks the loop to stop after the current step and save
    (stopping halfway through an Adam update would leave the weights half changed), and says so at
    once. A second Ctrl-C stops at once (KeyboardInterrupt), giving up the steps since the last
    checkpoint, except while a checkpoint is being saved: then the save finishes first."""

    def __enter__(self):
        self.requested = self.saving = False
        self.previous = {sig: signal.signal(sig, self.request) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def request(self, signum, frame):
        if self.saving:
            print("\nSaving the checkpoint; training stops as soon as it is written.", file=sys.stderr, flush=True)
        elif self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        elif not self.requested:
            print("\nStopping after this step, with a checkpoint (Ctrl-C again stops at once, without it).",
                  file=sys.stderr, flush=True)
        self.requested = True

    @contextlib.contextmanager
    def while_saving(self):
        """Within this block, Ctrl-C and SIGTERM wait for the block's end."""
        self.saving = True
        try:
            yield
        finally:
            self.saving = False


# ------------------------------------------------------------------------- several processes

class ProcessGroup:
    """This process among the training processes (one per GPU; just one on a CPU). Rank 0 writes
    every file; decisions that end a step or the run are taken together, or one process would
    leave while the others wait for it in the next gradient all-reduce."""

    def __init__(self):
        self.rank, self.world_size = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
        self.writer = self.rank == 0
        if self.world_size > 1:
            paddle.distributed.init_parallel_env()

    def from_writer(self, value):
        """Rank 0's value of a picklable object, on every process."""
        if self.world_size == 1:
            return value
        box = [value]
        paddle.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, *flags):
        """For each flag, whether it is set on any process."""
        if self.world_size == 1:
            return flags
        votes = paddle.to_tensor([int(flag) for flag in flags], dtype="int32")
        paddle.distributed.all_reduce(votes, op=paddle.distributed.ReduceOp.MAX)
        return [bool(vote) for vote in votes.numpy()]

    def wait_for_all(self):
        if self.world_size > 1:
            paddle.distributed.barrier()


# --------------------------------------------------------------------------------- the set-up

def settle_hyper_parameters(args, state):
    """Fill unset flags from the checkpoint (or the defaults). Refuse flags that differ from the
    checkpoint's, since mixing them would train a model neither setting describes, except the
    changeable ones (--lr, --ema, --augment, ...) and those of D's form (--d-norm, --mbstd), whose
    change is recorded in state.changes. Returns the hyper-parameters and the changed ones."""
    saved = trained_with(state) if state else {}
    unknown = sorted(set(saved) - set(HYPER_PARAMETERS))
    if unknown:
        raise UserError(f"{args.model_dir} holds a checkpoint trained with hyper-parameters this version of Train.py "
                        f"does not know ({', '.join(unknown)}), so it cannot continue it as it was trained; update "
                        f"the project (git pull), or start over with --fresh or another --model-dir.")
    wrong = Recipe.wrong_hyper_parameters(saved)
    if wrong:
        name, value, why = wrong[0]
        raise UserError(f"{args.model_dir}'s state.json records {flag_name(name)} {value!r}, which that flag does "
                        f"not take ({why}): it was edited by hand; put back the state.json written with the "
                        f"weights, or start over with --fresh or another --model-dir.")
    settled, changed, conflicts = {}, {}, []
    for name, hp in HYPER_PARAMETERS.items():
        given = getattr(args, name)
        if name == "cooldown" and given is None and state and cooldown_steps_left(state) == 0:
            given = 0  # continued without --cooldown after its end: it trains on at full rate
        if given is None and hp.changeable and state and state.hyper_parameters.get(name) is None:
            # a checkpoint from before this flag, or one that recorded None (d_lr before it had a
            # default), goes on with today's default
            given = hp.default
        settled[name] = given if given is not None else saved.get(name, hp.default)
        if not state or given is None or given == saved[name]:
            continue
        if hp.changeable or hp.d_form:
            changed[name] = given
        else:
            conflicts.append(f"{as_flag(name, given)} (checkpoint: {as_value(saved[name])})")
    if conflicts:
        original_too = " (and --original, which gives the original repository's)" if args.original else ""
        raise UserError(f"{args.model_dir} holds a checkpoint trained with other hyper-parameters: "
                        f"{', '.join(conflicts)}; drop those flags{original_too} to continue it, or start over "
                        f"with --fresh or another --model-dir.")
    if settled["mode_seeking"] and settled["batch_size"] < 2:
        raise UserError("--mode-seeking compares the two halves of each batch, so it needs a --batch-size of at "
                        "least 2.")
    if settled["seed"] is None:
        settled["seed"] = secrets.randbelow(2**31)
    return settled, changed


def a_change(name, value, before):
    """A changed hyper-parameter as the flag that changed it and the value it had, for a sentence:
    "--lr 0.0001 (until now 0.0002)", "--flip (until now off)"."""
    return f"{as_flag(name, value)} (until now {as_value(before)})"


def as_flag(name, value):
    """A hyper-parameter's value as the flag that sets it: "--lr 0.0001", "--flip", "--no-flip"."""
    flag = flag_name(name)
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {value}"


def as_value(value):
    """A hyper-parameter's value for a sentence: on or off for a switch."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def what_ema_does(changed, before):
    """What happens to G_ema when --ema is turned on or off while continuing, as a clause, or ""."""
    if "ema" not in changed or bool(changed["ema"]) == bool(before["ema"]):
        return ""
    return ": G_ema starts as a copy of G" if changed["ema"] else ": G_ema is left out of the next checkpoint"


def d_grows(args, changed):
    """Whether D continues with --mbstd turned on: its saved weights fit once its linear layer has
    grown the new feature's inputs, weighted zero (Checkpoint.load_weights' grown), so D starts
    out computing what it did. Not when D's normalisation changes too, or with --fresh-d."""
    return changed.get("mbstd") is True and "d_norm" not in changed and not args.fresh_d


def why_d_starts_afresh(args, changed):
    """The reason D starts afresh when continuing a checkpoint (--fresh-d, or a new form of D,
    whose saved weights would not fit), or None when D continues."""
    new_form = [f"--{name.replace('_', '-')}" for name in changed
                if HYPER_PARAMETERS[name].d_form and not (name == "mbstd" and d_grows(args, changed))]
    if new_form:
        return f"{' and '.join(new_form)} changed the form of D"
    return "--fresh-d" if args.fresh_d else None


def open_model_folder(args, folder):
    """Rank 0's part of the set-up: check both folders can be written before any work, take the
    model folder, repair an interrupted save, and read where training stopped. Returns the saved
    RunState or None, the settled hyper-parameters, and whether D starts afresh."""
    Files.writable_folder(args.model_dir, "--model-dir")
    folder.lock()  # before --output is made: a run refused for a busy folder must leave nothing behind
    Files.writable_folder(args.output, "--output")
    repaired = folder.recover()
    if repaired:
        print(repaired)
    if args.fresh:
        if folder.has_checkpoint():
            folder.keep_at_next_save = f"before-fresh-{time.strftime('%Y%m%d-%H%M%S')}"
            aside = folder.path / folder.keep_at_next_save
            print(f"--fresh: starting over; the checkpoint in {folder.path} stays there until this run's first "
                  f"checkpoint, which keeps it in {aside} (to bring it back, stop this run, delete the checkpoint "
                  f"files in {folder.path} and move that folder's files there).")
        state = None
    else:
        state = folder.read_state()
    hp, changed = settle_hyper_parameters(args, state)
    if changed:
        before = trained_with(state)
        flags = ", ".join(a_change(name, value, before[name]) for name, value in changed.items())
        print(f"Continuing with {flags} from step {state.global_step}{what_ema_does(changed, before)}.")
        state.changes.append({"step": state.global_step, **changed})
    if state and d_grows(args, changed):
        print("D continues: its linear layer takes --mbstd's new feature with weights of zero, so it starts out "
              "as it was trained.")
    fresh_d = why_d_starts_afresh(args, changed) if state else None
    if fresh_d:
        print(f"D starts afresh ({fresh_d}), with new weights and Adam state; G continues from step "
              f"{state.global_step}.")
        state.changes.append({"step": state.global_step, "fresh_d": fresh_d})
    return state, hp, bool(fresh_d)


def agree_on_start(args, procs, folder):
    """Rank 0 opens the model folder and every process takes its decisions (seed and run id
    included), so all ranks shuffle alike and a resume goes on exactly. A mistake found by rank 0
    ends every process with the same sentence instead of leaving the others waiting (a busy folder
    stays FolderBusy, which no rank cleans up after). Returns the saved RunState or None, the
    hyper-parameters, whether D starts afresh and the run's id."""
    decided = None
    if procs.writer:
        try:
            state, hp, fresh_d = open_model_folder(args, folder)
            # A new run, or a checkpoint from before run ids, gets a new id.
            run = state.run if state and state.run else secrets.token_hex(4)
            decided = {"state": state.to_json() if state else None, "hp": hp, "fresh_d": fresh_d, "run": run}
        except UserError as error:
            decided = {"error": str(error), "busy": isinstance(error, FolderBusy)}
            if procs.world_size == 1:
                raise
    decided = procs.from_writer(decided)
    if "error" in decided:
        raise (FolderBusy if decided["busy"] else UserError)(decided["error"])
    state = RunState.from_json(decided["state"], folder.path) if decided["state"] else None
    return state, decided["hp"], decided["fresh_d"], decided["run"]


def load_checkpoint(folder, procs, nets, saved, fresh_d=False):
    """Rank 0 loads the checkpoint in its model folder into nets. Every other rank loads the same
    files, sent by rank 0 into a temporary folder of its own, so that on several machines the model
    folder need only be on rank 0's. fresh_d: leave D and its Adam state as built. Returns whether
    Adam's state was there."""
    weights, optimizers = nets.weights, nets.optimizers
    if fresh_d:
        del weights["D"], optimizers["D"]
    grown = ("D",) if nets.D.mbstd and not trained_with(saved)["mbstd"] else ()  # see d_grows
    ema_saved = trained_with(saved)["ema"]
    if nets.ema and not ema_saved:  # --ema turned on for this checkpoint: G_ema starts as the loaded G
        del weights["G_ema"]
    files = procs.from_writer(folder.checkpoint_bytes() if procs.writer and procs.world_size > 1 else None)
    if procs.writer:
        with_adam = folder.load(weights, optimizers, saved, nets.scalers, grown)
    else:
        with tempfile.TemporaryDirectory(prefix="checkpoint-from-rank-0-") as copy:
            for name, data in files.items():
                (Path(copy) / name).write_bytes(data)
            with_adam = ModelFolder(copy).load(weights, optimizers, saved, nets.scalers, grown)
    if nets.ema and not ema_saved:
        nets.ema.start_from(nets.G)
    return with_adam


def load_faces(args, hp, procs):
    try:
        dataset = FaceDataset(args.data, limit=args.limit, flip=hp["flip"], seed=hp["seed"])
    except DataSetError as error:
        raise UserError(str(error)) from None
    loader = (DeviceLoader(dataset, hp["batch_size"], seed=hp["seed"]) if args.cache_device
              else make_loader(dataset, hp["batch_size"], num_workers=args.num_workers, seed=hp["seed"]))
    if len(loader.batch_sampler) == 0:
        raise UserError(f"{len(dataset)} images in {args.data} do not fill one batch of {hp['batch_size']} "
                        f"on each of {procs.world_size} process(es); lower --batch-size or add images.")
    return dataset, loader


@dataclass
class Networks:
    """What the steps train and a checkpoint holds: G and D with their Adam optimizers, and where
    those flags are on, --ema's G_ema and --amp's loss scalers."""
    G: Generator
    D: Discriminator
    opt_g: paddle.optimizer.Optimizer
    opt_d: paddle.optimizer.Optimizer
    ema: MovingAverage | None
    amp: MixedPrecision | None

    @property
    def weights(self):
        """Whose weights a checkpoint holds: G_ema is saved and loaded with G and D, as one unit."""
        return {"G": self.G, "D": self.D, **({"G_ema": self.ema.G_ema} if self.ema else {})}

    @property
    def optimizers(self):
        return {"G": self.opt_g, "D": self.opt_d}

    @property
    def scalers(self):
        return self.amp.scalers if self.amp else {}


def build_networks(hp, device, world_size, amp=False):
    Utils.seed_everything(hp["seed"])
    G, D = Generator(), Discriminator(input_norm=hp["d_input_bn"], norm=hp["d_norm"], mbstd=hp["mbstd"])
    if hp["init"] == "dcgan":
        for network in (G, D):
            init_dcgan_weights(network)
    if device == "gpu":
        # cuDNN otherwise picks its fastest backward algorithms, some of which add in a varying
        # order: a resumed run would then not go on exactly as one that never stopped.
        paddle.set_flags({"FLAGS_cudnn_deterministic": True})
    if device == "gpu" and world_size > 1:
        # BatchNorm statistics of the whole batch across GPUs, not of each GPU's share, so that
        # 2 GPUs x 50 normalise as one batch of 100 and rank 0 saves the statistics of all.
        # Paddle has this on GPUs only; CPU processes normalise their own shares.
        G, D = (paddle.nn.SyncBatchNorm.convert_sync_batchnorm(network) for network in (G, D))
    opt_g = paddle.optimizer.Adam(hp["lr"], beta1=hp["beta1"], parameters=G.parameters())
    opt_d = paddle.optimizer.Adam(hp["d_lr"], beta1=hp["beta1"], parameters=D.parameters())
    return Networks(G, D, opt_g, opt_d, ema=MovingAverage(G, hp["ema"]) if hp["ema"] else None,
                    amp=MixedPrecision() if amp else None)


@dataclass
class Session:
    """Everything one training run works with, built whole by set_up."""
    args: argparse.Namespace
    procs: ProcessGroup
    folder: ModelFolder
    state: RunState
    dataset: FaceDataset
    loader: object
    nets: Networks
    players: Recipe.Players  # what the steps train: nets' G and D, under several processes in DataParallel
    fixed_noise: np.ndarray  # the noise of every sample grid
    run_record: dict  # this run's entry in state.stretches: its machine and CPU time
    cpu_started: float  # time.process_time() when this run began
    stop: StopRequest  # Ctrl-C and SIGTERM, within the loop
    visualdl: VisualDLLog | None  # --visualdl's log on rank 0, while there is training to do; else None
    last_saved: str | None  # where the folder's newest checkpoint of this run stands, e.g. "step 8 (...)"
    step_seconds: list = field(default_factory=list)  # this run's steps, data loading and pictures left out
    started: float = 0.0  # time.time() when training began, less the wall seconds of the runs before


@contextlib.contextmanager
def nothing_left_if_refused(*folders):
    """Within this block, a refusal (UserError) or a stop (Ctrl-C, SIGTERM) removes the folders it
    made for folders (parents included) while they hold nothing but the model folder's lock: a run
    refused or stopped before training leaves nothing behind. A folder another process holds is
    left alone: it may have made it a moment ago."""
    made = [top for top in map(first_missing, folders) if top]
    try:
        yield
    except FolderBusy:
        raise
    except (UserError, KeyboardInterrupt):
        for top in made:
            if top.is_dir() and all(path.is_dir() or path.name == LOCK_FILE for path in top.rglob("*")):
                shutil.rmtree(top, ignore_errors=True)
        raise


def first_missing(folder):
    """The outermost folder that making folder would create, or None if folder exists."""
    folder, top = Path(folder).absolute(), None
    while not folder.exists():
        folder, top = folder.parent, folder
    return top


def agree_on_space(session):
    """Refuse before the first step when the model folder cannot hold the next checkpoint; rank 0
    checks, every rank ends with its sentence."""
    problem = None
    if session.procs.writer:
        try:
            session.folder.check_space(session.nets.weights, session.nets.optimizers, session.state)
        except UserError as error:
            problem = str(error)
    problem = session.procs.from_writer(problem)
    if problem:
        raise UserError(problem)


def set_up(args):
    # Rank 0 alone makes the folders and takes the model folder's lock, so it alone cleans up after a
    # refusal: first the folders it made, while it holds the lock, then the lock.
    folder = ModelFolder(args.model_dir)
    with folder.released_if_refused(), \
            nothing_left_if_refused(*((args.model_dir, args.output) if paddle.distributed.get_rank() == 0 else ())):
        return build_session(args, folder)


def build_session(args, folder):
    cpu_started = time.process_time()
    procs = ProcessGroup()
    device = choose_device(args)
    try:
        check_folder(args.data)  # before any folder is made
    except DataSetError as error:
        raise UserError(str(error)) from None
    saved, hp, fresh_d, run = agree_on_start(args, procs, folder)
    dataset, loader = load_faces(args, hp, procs)
    nets = build_networks(hp, device, procs.world_size, args.amp)
    if saved:
        resume(folder, procs, nets, saved, fresh_d)
    state = saved or RunState(hyper_parameters=hp)
    record_run(args, state, hp, run, dataset, loader, procs, device)
    to_train = state.epochs_done < args.epochs
    train_G, train_D = (paddle.DataParallel(nets.G), paddle.DataParallel(nets.D)) if procs.world_size > 1 \
        else (nets.G, nets.D)
    players = Recipe.Players(train_G, train_D, nets.opt_g, nets.opt_d, nets.ema, nets.amp)
    logging = args.visualdl and procs.writer and to_train
    visualdl = VisualDLLog(Path(args.output) / "visualdl" / run) if logging else None
    session = Session(args, procs, folder, state, dataset, loader, nets, players,
                      fixed_noise=Utils.random_noise(np.random.default_rng([hp["seed"], 0xF1ED]), GRID_SIDE ** 2),
                      run_record=state.stretches[-1], cpu_started=cpu_started, stop=StopRequest(), visualdl=visualdl,
                      last_saved=saved.where() if saved else None)
    say_what_trains(session, device)
    if to_train:
        agree_on_space(session)
    return session


def choose_device(args):
    device = Utils.choose_device(args.device)
    if args.amp and device != "gpu":
        raise UserError("--amp (mixed precision) is for GPUs; Paddle's CPU kernels gain nothing from it, "
                        "so train on CPU without --amp.")
    return device


def resume(folder, procs, nets, saved, fresh_d):
    with_adam = load_checkpoint(folder, procs, nets, saved, fresh_d)
    print_once(procs, f"Resuming from {folder.path}: {saved.epochs_done} epochs and {saved.batches_done} batches "
                      f"done (step {saved.global_step})"
                      + ("." if with_adam else "; no usable optimizer state there, so Adam starts afresh."))


def record_run(args, state, hp, run, dataset, loader, procs, device):
    """Write into state what this run trains with: its id and hyper-parameters (after loading,
    which checks the files' stamps), its data (a change of data recorded), and a new stretch,
    which counts what this run costs beside the earlier ones: a model's CPU-hours add up."""
    if state.data and (state.data, state.images) != (str(args.data), len(dataset)):
        state.changes.append({"step": state.global_step, "data": str(args.data), "images": len(dataset)})
        print_once(procs, f"Continuing on {len(dataset)} faces in {args.data} "
                          f"(until now {state.images} in {state.data}).")
    state.run, state.hyper_parameters = run, hp
    state.data, state.images, state.steps_per_epoch = str(args.data), len(dataset), len(loader.batch_sampler)
    state.stretches.append({"from_step": state.global_step, "to_step": state.global_step,
                            "machine": Utils.machine_name(device), "processes": procs.world_size,
                            "threads": Utils.cpu_threads(), "cpu_seconds": 0.0})
    state.versions = {"paddle": paddle.__version__, "numpy": np.__version__, "python": platform.python_version()}


def say_what_trains(session, device):
    state, hp, procs, amp = session.state, session.state.hyper_parameters, session.procs, session.nets.amp
    precision = f", {amp.dtype} mixed precision" if amp else ""
    print_once(procs, f"Training on {device} ({procs.world_size} process(es){precision}), {state.images} faces, "
                      f"{state.steps_per_epoch} batches of {hp['batch_size']} per epoch, seed {hp['seed']}.")
    if session.dataset.skipped:
        print_once(procs, f"Skipped {len(session.dataset.skipped)} unreadable files.")


def print_once(procs, message):
    """Print message on rank 0 alone, so that several processes say it once."""
    if procs.writer:
        print(message)


# --------------------------------------------------------------------------------- the loop

def checkpoint(session):
    """Save where the run stands, unless it was saved there already. Returns whether a stop was
    asked for, on any process, by the end of the save (a Ctrl-C during a save waits for it)."""
    if session.last_saved != session.state.where():
        session.state.wall_seconds = round(time.time() - session.started, 1)
        session.run_record.update(to_step=session.state.global_step,
                                  cpu_seconds=round(time.process_time() - session.cpu_started, 1))
        nets = session.nets
        with session.stop.while_saving():
            if session.procs.writer:
                if nets.ema:
                    nets.ema.fit_batch_norm_statistics(session.state.hyper_parameters["seed"])
                session.folder.save(nets.weights, nets.optimizers, session.state, nets.scalers)
            session.last_saved = session.state.where()
        session.procs.wait_for_all()  # nobody leaves before rank 0's checkpoint is on disk
    stop, = session.procs.any(session.stop.requested)
    return stop


def sample(session, epoch):
    """Draw the sample grid of the fixed noise and record its spread. Returns the SampleGrid, to
    write to --output."""
    state, losses = session.state, session.state.losses
    spread, grid = draw_sample_grid(session.nets.G, session.fixed_noise)
    title = (f"Epoch {epoch}  Batch {state.batches_done}  D loss {losses['d_fake'][-1] + losses['d_real'][-1]:.4f}  "
             f"G loss {losses['g'][-1]:.4f}  spread {spread:.1f}")
    path = Path(session.args.output) / f"epoch_{epoch:04d}_batch_{state.batches_done:04d}.png"
    state.spread.append([state.global_step, round(spread, 2)])
    if session.visualdl:
        session.visualdl.sample(state.global_step, spread, grid)
    return SampleGrid(grid, path, title)


def divergence_message(session, losses, epoch):
    seen = losses if not all(math.isfinite(loss) for loss in losses) else "non-finite on another process"
    where = f"the losses became {seen} at epoch {epoch}, step {session.state.global_step + 1}; training stopped"
    return f"{where} and {what_was_kept(session)}. Try a lower --lr or --d-lr, or --init dcgan."


def what_was_kept(session):
    """Which checkpoint the model folder holds after a run ended without saving, as a clause."""
    folder = session.folder.path
    if session.last_saved:
        return f"the last checkpoint in {folder}, of {session.last_saved}, was kept"
    if session.args.fresh and session.folder.has_checkpoint():
        return f"no checkpoint of this run was written, so {folder} still holds the one --fresh started over from"
    return f"no checkpoint was written yet, so {folder} holds none"


def run_step(session, real, epoch):
    """One batch: the update, then the decisions every process takes together. Returns the
    losses and whether to stop after this step."""
    state, hp, procs = session.state, session.state.hyper_parameters, session.procs
    paddle.seed(step_seed(hp["seed"], procs.rank, state.global_step))
    started = time.perf_counter()
    cool_learning_rates(session)
    config = Recipe.StepConfig.at(hp, state.global_step, state.epochs_done, real.shape[0])
    result = Recipe.train_step(session.players, real, config)
    *losses, real_sign = [float(value) for value in result]  # waits for the device
    session.step_seconds.append(time.perf_counter() - started)
    diverged, stop = procs.any(not all(math.isfinite(loss) for loss in losses), session.stop.requested)
    if diverged:
        raise UserError(divergence_message(session, losses, epoch))
    for key, value in zip(("d_fake", "d_real", "g"), losses):
        state.losses[key].append(round(value, 5))
    state.real_sign.append(round(real_sign, 4))
    state.global_step += 1
    state.batches_done += 1
    return losses, stop


def cooldown_start(state):
    """The step where the --cooldown under way began: where it was last set when continuing a
    checkpoint (state.changes), or step 0 for a run started with it."""
    return max((change["step"] for change in state.changes if "cooldown" in change), default=0)


def cooldown_steps_left(state):
    """Steps left of the --cooldown under way, or None without one (0: it is over)."""
    steps = state.hyper_parameters.get("cooldown", 0)  # 0 in a checkpoint from before --cooldown
    return max(0, steps - (state.global_step - cooldown_start(state))) if steps else None


def cool_learning_rates(session):
    """Under --cooldown, set both Adam rates for the coming step (Recipe.cooldown_factor)."""
    hp, nets = session.state.hyper_parameters, session.nets
    if hp["cooldown"]:
        factor = Recipe.cooldown_factor(hp["cooldown"], session.state.global_step - cooldown_start(session.state))
        nets.opt_g.set_lr(hp["lr"] * factor)
        nets.opt_d.set_lr(hp["d_lr"] * factor)


def run_epoch(session, epoch):
    """Train the rest of one epoch. Returns whether it finished (False: the run was asked to stop,
    or its --cooldown ended) and the SampleGrid of its last step, which waits for the checkpoint,
    or None."""
    state, args = session.state, session.args
    session.loader.batch_sampler.set_epoch(epoch, start_batch=state.batches_done)
    session.dataset.set_epoch(epoch)
    progress = tqdm(session.loader, total=state.steps_per_epoch, initial=state.batches_done,
                    desc=f"epoch {epoch}/{args.epochs}", disable=not session.procs.writer, dynamic_ncols=True)
    grid = None  # no step at all if the run stopped after this epoch's last batch and is resumed
    with progress:
        for real in progress:
            losses, stop = run_step(session, real, epoch)
            if session.visualdl:
                log_step(session, losses)
            progress.set_postfix(D=f"{losses[0] + losses[1]:.3f}", G=f"{losses[2]:.3f}")
            every = args.sample_every and state.batches_done % args.sample_every == 0
            last = state.batches_done == state.steps_per_epoch
            grid = sample(session, epoch) if session.procs.writer and (every or last) else None
            if stop or (cooldown_steps_left(state) == 0 and not last):
                return False, grid
            if args.save_every and state.global_step % args.save_every == 0 and not last and checkpoint(session):
                return False, grid  # stopped during the save
            if grid and not last:
                grid.write()
    state.epochs_done, state.batches_done = epoch, 0
    measure_overfitting(session, epoch)
    return True, grid


def measure_overfitting(session, epoch):
    """At an epoch's end: r_t, the mean over the epoch of the sign of D's realness on the real
    batches it trained on (Karras et al. 2020, "Training GANs with Limited Data", section 3,
    https://arxiv.org/abs/2006.06676), into the log, state.json and VisualDL. It rises towards 1 as
    D learns the training faces by heart; ADA holds it near 0.6."""
    state = session.state
    signs = state.real_sign[-state.steps_per_epoch:]  # a checkpoint from before r_t has fewer
    if not signs:
        return
    r_t = round(float(np.mean(signs)), 4)
    state.overfitting.append({"epoch": epoch, "step": state.global_step, "r_t": r_t})
    print_once(session.procs, f"Epoch {epoch}: D's overfitting signal r_t = {r_t:.3f} (near 1: D learns the "
                              f"faces by heart; docs/training.md#progress).")
    if session.visualdl:
        session.visualdl.overfitting(state.global_step, r_t)


def log_step(session, losses):
    """The step just taken, into --visualdl's log."""
    nets, procs = session.nets, session.procs
    images_per_second = session.state.hyper_parameters["batch_size"] * procs.world_size / session.step_seconds[-1]
    session.visualdl.step(session.state.global_step, losses, (nets.opt_g.get_lr(), nets.opt_d.get_lr()),
                          images_per_second)


STOPPED = 130  # the exit status of a run stopped by Ctrl-C or SIGTERM, as a shell reports Ctrl-C


def train(args):
    """Train until --epochs are done or a signal asks to stop. Returns the exit status: 0 when
    every epoch asked for is done (or already was), or the --cooldown is over, STOPPED when stopped
    after a checkpoint."""
    check_visualdl(args)
    session = set_up(args)
    state, folder = session.state, session.folder.path
    if state.epochs_done >= args.epochs:
        print_once(session.procs, f"{folder} already holds {state.epochs_done} epochs (--epochs {args.epochs}); "
                                  f"nothing to do.")
        return 0
    if cooldown_steps_left(state) == 0:
        print_once(session.procs, f"{folder} has finished its cooldown of {state.hyper_parameters['cooldown']} steps "
                                  f"(its learning rates reached zero at step {state.global_step}); nothing to do. "
                                  f"To train it on, leave --cooldown out or give --cooldown 0; a new value starts "
                                  f"another cooldown.")
        return 0
    left = cooldown_steps_left(state)
    if left and left > (args.epochs - state.epochs_done) * state.steps_per_epoch - state.batches_done:
        print_once(session.procs, f"warning: --epochs {args.epochs} ends the run before its cooldown does "
                                  f"({left} steps left), with the learning rates above zero; raise --epochs to "
                                  f"cool down fully.")
    session.started = time.time() - state.wall_seconds
    try:
        with session.stop, session.visualdl or contextlib.nullcontext():
            return train_epochs(session)
    except KeyboardInterrupt:  # a second Ctrl-C: StopRequest
        print_once(session.procs, f"Stopped at once, without saving the steps since the last checkpoint: "
                                  f"{what_was_kept(session)}.")
        return STOPPED


def train_epochs(session):
    """train()'s loop, from the session's step on: the same return values."""
    state, args, folder = session.state, session.args, session.folder.path
    while state.epochs_done < args.epochs and cooldown_steps_left(state) != 0:
        finished, grid = run_epoch(session, state.epochs_done + 1)
        stop = checkpoint(session)  # first: a picture that fails must not cost the checkpoint
        if grid:
            grid.write()
        if (stop or not finished) and cooldown_steps_left(state) != 0:
            print_once(session.procs, f"Stopped at {state.where()}; checkpoint saved to {folder}. Run the same "
                                      f"command to continue.")
            session.procs.wait_for_all()  # the launcher ends every process once one has left
            return STOPPED
        if session.procs.writer:
            loss_curve = Path(args.output) / "loss.png"
            axis_name = Recipe.loss_axis_name(state.hyper_parameters["loss"], state.changes)
            picture(lambda: Utils.save_loss_curve(state.losses, state.steps_per_epoch, loss_curve, axis_name),
                    f"The loss curve {loss_curve}")
    if cooldown_steps_left(state) == 0:
        print_once(session.procs, f"Cooldown done: the learning rates reached zero at step {state.global_step}, "
                                  f"checkpoint saved to {folder}. Continued without --cooldown, it trains on at "
                                  f"full rate.")
    # No step at all if the run was stopped after an epoch's last batch and resumed.
    timing = (f" A training step took {np.median(session.step_seconds):.2f} s (median of this run's "
              f"{len(session.step_seconds)})." if session.step_seconds else "")
    print_once(session.procs, f"Done: {state.epochs_done} epochs, {state.global_step} steps; model in {folder}, "
                              f"samples in {args.output}.{timing}")
    return 0


def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    Utils.run_main(main)
