"""Train the avatar DCGAN on a folder of 96x96 faces, checkpointing to Model/ and resuming from it.

One process, GPU if there is one, else CPU:
    python Train.py --data DataSet/faces
Several GPUs on one machine (one process per GPU, each trains on its own share of every epoch,
gradients averaged by DataParallel; --batch-size is per process; only rank 0 writes files):
    python -m paddle.distributed.launch --gpus 0,1 Train.py --data DataSet/faces --batch-size 50
Several machines: the same launcher on each, with --nnodes, --master host:port and --rank 0 on the
machine whose --model-dir is trained on (README.md, "Several machines"); the other machines need
the faces, not the model folder, which rank 0 sends them.
Run it again with the same --model-dir and it continues where it stopped (--fresh starts over).
Checkpoints go to --model-dir every epoch and on Ctrl-C/SIGTERM (Checkpoint.py says how they
survive crashes); sample grids and the loss curve go to --output.

Per batch, as the original: one discriminator update on a batch of generated faces alone
(label 0), one on the real batch alone (label 1), then --g-steps generator updates, each on fresh
noise, with label 1. Loss: softmax cross entropy over D's two logits. Two additions, both on by
default because together they measured best on a CPU: --augment passes every batch D sees, real
or generated, through DiffAugment (Augment.py), and --ema keeps G_ema, a moving average of G's
weights, saved beside G for Run.py to draw with. --loss hinge, --d-norm spectral, --r1, --d-lr,
--mbstd and --flip change D's loss, form, penalty and data (README.md, "Hyper-parameters"); at
each epoch's end r_t, D's overfitting signal, goes into the log and state.json. --brief trains
the original's recipe exactly.

Every step draws its randomness (noise, dropout, augmentation) from a seed derived from
(--seed, step) and every epoch's order from (--seed, epoch), so a resumed run goes on exactly as
one that never stopped.
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)
from Utils import UserError

import argparse
import contextlib
import math
import platform
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

import Augment
import Files
import Net
from Checkpoint import LOCK_FILE, FolderBusy, ModelFolder, RunState
from Net import Z_DIM, Discriminator, Generator, init_dcgan_weights
from Reader import DataSetError, DeviceLoader, FaceDataset, check_folder, make_loader

REAL, FAKE = 1, 0
GRID_SIDE = 8  # the progress grids show 8x8 samples of one fixed noise batch


# ------------------------------------------------------------------------------- the flags

def number(kind, accept, wanted):
    """An argparse type: text -> kind, refused with "is not <wanted>" unless accept(value)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value
    return parse


positive_int = number(int, lambda value: value >= 1, "a whole number of at least 1")
count = number(int, lambda value: value >= 0, "a whole number of at least 0")
seed_number = number(int, lambda value: 0 <= value < 2**63, "a whole number from 0 to 2**63 - 1")
learning_rate = number(float, lambda value: math.isfinite(value) and value > 0, "a positive number")
below_one = number(float, lambda value: 0 <= value < 1, "a number from 0 up to (not including) 1")
not_negative = number(float, lambda value: math.isfinite(value) and value >= 0, "a number of at least 0")


def augment_policy(text):
    """An argparse type: an --augment policy in the one spelling state.json keeps."""
    try:
        return Augment.parse_policy(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@dataclass(frozen=True)
class HyperParameter:
    """A flag that defines the run, kept in state.json and checked on every resume."""
    default: object  # what `python Train.py` trains with: the recipe that measured best on a CPU
    brief: object  # the original's value, which --brief trains with
    help: str
    type: object = None
    choices: tuple = None
    changeable: bool = False  # may be changed when continuing a checkpoint (recorded in state.json)
    d_form: bool = False  # shapes D: changing it when continuing starts D afresh (recorded in state.json)


# A checkpoint written before a hyper-parameter existed trained with its brief value (the
# original had no --ema and no --augment), and continues with the default of a changeable one.
# README.md, "Making the recipe learn on a CPU", gives the measurements behind each default that
# differs from the brief.
HYPER_PARAMETERS = {
    "batch_size": HyperParameter(32, 100, "real images per batch (per process under several GPUs)", positive_int),
    "lr": HyperParameter(2e-4, 2e-4, "Adam learning rate of both networks; may change when continuing a "
                                     "checkpoint, e.g. lowered once the measurements level off", learning_rate,
                         changeable=True),
    "beta1": HyperParameter(0.5, 0.8, "Adam beta1 of both networks", below_one),
    "g_steps": HyperParameter(1, 2, "generator updates per batch", positive_int),
    "init": HyperParameter("dcgan", "paddle", "weight initialisation: DCGAN's N(0, 0.02), or Paddle's default",
                           choices=("dcgan", "paddle")),
    "d_input_bn": HyperParameter(False, True, "BatchNorm in D's first block, as the original (with --d-norm "
                                              "batch); --no-d-input-bn leaves it out, as DCGAN does"),
    "ema": HyperParameter(0.998, 0.0, "decay of G_ema, a moving average of G's weights saved beside G, which "
                                      "Run.py draws with; it averages about 1 / (1 - decay) G updates; 0: no "
                                      "G_ema; may change when continuing a checkpoint", below_one, changeable=True),
    "augment": HyperParameter(",".join(Augment.POLICIES), Augment.NONE,
                              "DiffAugment policy for every batch D sees: none, or any of color, translation, "
                              "cutout joined by commas; may change when continuing a checkpoint",
                              augment_policy, changeable=True),
    "seed": HyperParameter(None, None, "seed of noise, dropout and data order (default: drawn at random, then kept)",
                           seed_number),
    # The diversity round (README.md, "Making the recipe learn on a CPU"): D's form, loss and penalty.
    "loss": HyperParameter("bce", "bce", "the GAN loss: bce, the original's cross entropy of D's two logits, or "
                                         "hinge, on D's real-minus-generated logit difference; may change when "
                                         "continuing a checkpoint", choices=("bce", "hinge"), changeable=True),
    "d_norm": HyperParameter("batch", "batch", "D's normalisation: batch (BatchNorm, as the original) or spectral "
                                               "(spectral normalisation of its convolutions and linear layer, no "
                                               "BatchNorm); changing it when continuing starts D afresh",
                             choices=("batch", "spectral"), d_form=True),
    "mbstd": HyperParameter(False, False, "the minibatch standard deviation feature before D's linear layer; "
                                          "changing it when continuing starts D afresh", d_form=True),
    "r1": HyperParameter(0.0, 0.0, "weight gamma of the R1 penalty, gamma / 2 times the squared gradient of D's "
                                   "logit difference on real faces; 0: none; may change when continuing a checkpoint",
                         not_negative, changeable=True),
    "r1_every": HyperParameter(16, 16, "apply the R1 penalty every this many steps, scaled up to match (lazy "
                                       "regularisation); may change when continuing a checkpoint", positive_int,
                               changeable=True),
    "flip": HyperParameter(False, False, "mirror training faces left-right at random; may change when continuing "
                                         "a checkpoint", changeable=True),
    "d_lr": HyperParameter(None, None, "Adam learning rate of D alone (default: --lr); may change when continuing a "
                                       "checkpoint", learning_rate, changeable=True),
}
BRIEF = {name: hp.brief for name, hp in HYPER_PARAMETERS.items()}


def trained_with(state):
    """The hyper-parameters a checkpoint was trained with; a key it lacks did not exist yet."""
    return {**BRIEF, **state.hyper_parameters}


def add_hyper_parameters(parser):
    """One flag per hyper-parameter, defaulting to None so a resume can tell "not given" from
    "given"; the help says the real default once."""
    for name, hp in HYPER_PARAMETERS.items():
        flag = "--" + name.replace("_", "-")
        text = hp.help if hp.default is None else f"{hp.help} (default {str(hp.default).lower()})"
        if isinstance(hp.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(flag, type=hp.type, choices=hp.choices, help=text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="DataSet/faces", help="folder of face images, searched recursively "
                                                                "(default %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=300, help="train until this many epochs are done "
                                                                         "(default %(default)s)")
    add_hyper_parameters(parser)
    parser.add_argument("--brief", action="store_true",
                        help="the original's recipe exactly: batch 100, lr 2e-4, beta1 0.8, 2 G steps, Paddle's "
                             "init, D with BatchNorm on its input too, cross entropy, no EMA, no augmentation, no R1 "
                             "(flags given beside it still count)")
    parser.add_argument("--model-dir", default="Model", help="checkpoint folder, read to resume and written every "
                                                             "epoch (default %(default)s)")
    parser.add_argument("--output", default="Output", help="folder for sample grids and the loss curve "
                                                           "(default %(default)s)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="where to train "
                                                                                         "(default %(default)s)")
    parser.add_argument("--num-workers", type=count, default=0, help="data loader worker processes "
                                                                     "(default %(default)s)")
    parser.add_argument("--sample-every", type=count, default=50,
                        help="write a sample grid every this many batches; 0: only at epoch ends (default %(default)s)")
    parser.add_argument("--limit", type=positive_int, help="use only the first N images of --data (default: all)")
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
    args = parser.parse_args(argv)
    if args.brief:
        for name, value in BRIEF.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    return args


# ------------------------------------------------------------------------------------- the step

def gan_loss(logits, label):
    """Mean softmax cross entropy of D's two logits against one label for the whole batch."""
    labels = paddle.full([logits.shape[0], 1], label, dtype="int64")
    return F.cross_entropy(logits, labels)


def realness(logits):
    """D's real-minus-generated logit difference, one number per image: how real D finds it.
    Softmax cross entropy against "real" is softplus(-realness), against "generated" softplus(realness)."""
    return logits[:, REAL] - logits[:, FAKE]


def d_loss(logits, label, kind):
    """D's loss on a batch that is all real (label REAL) or all generated (FAKE). kind "hinge":
    D is pushed until realness reaches +1 on real faces and -1 on generated ones, and no
    further (Lim & Ye 2017; Miyato et al. 2018 measured it better than cross entropy with spectral
    normalisation)."""
    if kind == "bce":
        return gan_loss(logits, label)
    sign = 1 if label == REAL else -1
    return F.relu(1 - sign * realness(logits)).mean()


def g_loss(logits, kind):
    """G's loss on D's logits for its faces: the original's cross entropy against "real", or under
    hinge the mean realness, negated."""
    return gan_loss(logits, REAL) if kind == "bce" else -realness(logits).mean()


def r1_penalty(judge, D, real):
    """R1 (Mescheder et al. 2018, https://arxiv.org/abs/1801.04406): the mean over the batch of the
    squared gradient of D's realness with respect to each real image, as D sees it (augmented).
    Penalising it keeps D flat around the real faces, so it cannot overfit them with steep
    walls. Returns D's logits on the real batch too, so the caller's loss reuses them."""
    real = real.detach()
    real.stop_gradient = False
    with Net.twice_differentiable(D):
        logits = judge(real)
        gradient, = paddle.grad(realness(logits).sum(), real, create_graph=True)
    return gradient.square().sum(axis=[1, 2, 3]).mean(), logits


def update(optimizer, loss, scaler=None):
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:  # float16: scale the loss up so that small gradients do not round to zero, and back down
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    optimizer.clear_grad()
    return loss


def amp_dtype(capability, cuda_version):
    """The mixed-precision type a GPU of this compute capability computes fast, as Paddle's
    auto_cast decides (it silently falls back to float32 elsewhere): bfloat16 from Ampere (8.0)
    with CUDA 11 or newer, float16 from Volta (7.0), None below."""
    if capability >= (8, 0) and cuda_version and int(str(cuda_version).split(".")[0]) >= 11:
        return "bfloat16"
    return "float16" if capability >= (7, 0) else None


def amp_white_list(dtype, kernels=None):
    """The operators --amp computes in dtype: Paddle's own list, plus conv2d_transpose where this
    Paddle has a GPU kernel of that type. Paddle leaves it out of its list, and G's four
    transposed convolutions are most of G's work. kernels: Paddle's kernel registry (for tests)."""
    from paddle.amp import amp_lists

    paddle_list = set(amp_lists.white_list()[dtype]["O1"])
    if kernels is None:
        kernels = paddle.base.core._get_all_register_op_kernels("phi")
    gpu_kernel = re.compile(rf"data_type\[(::phi::dtype::)?{dtype}\].*place\[Place\(gpu")
    if any(gpu_kernel.search(key) for key in kernels.get("conv2d_transpose", [])):
        return paddle_list | {"conv2d_transpose"}
    return paddle_list


class MixedPrecision:
    """--amp: the forward passes in bfloat16 where the GPU supports it (same range as float32, no
    loss scaling needed), else in float16 with one loss scaler per optimizer, saved with the
    checkpoint. Paddle's level O1 keeps the weights, Adam's moments and precision-sensitive
    operators (softmax cross entropy, BatchNorm statistics) in float32, so checkpoints do not
    change."""

    def __init__(self):
        capability = paddle.device.cuda.get_device_capability()
        self.dtype = amp_dtype(capability, paddle.version.cuda())
        if self.dtype is None:
            raise UserError(f"--amp needs a GPU of compute capability 7.0 or newer; this "
                            f"{paddle.device.cuda.get_device_name()} is {capability[0]}.{capability[1]}, where "
                            f"Paddle computes in float32 anyway, so train without --amp.")
        self.white_list = amp_white_list(self.dtype)
        float16 = self.dtype == "float16"
        self.scalers = {"G": paddle.amp.GradScaler(), "D": paddle.amp.GradScaler()} if float16 else {}

    def autocast(self):
        return paddle.amp.auto_cast(dtype=self.dtype, level="O1", custom_white_list=self.white_list)


class frozen:
    """Within this block the layer's weights get no gradients: G's updates pass gradients through D
    to G without spending time on D's own weight gradients, which the G step does not use."""

    def __init__(self, layer):
        # BatchNorm's running statistics are parameters with stop_gradient set: leave them be.
        self.parameters = [p for p in layer.parameters() if not p.stop_gradient]

    def __enter__(self):
        for parameter in self.parameters:
            parameter.stop_gradient = True

    def __exit__(self, *exc):
        for parameter in self.parameters:
            parameter.stop_gradient = False


def d_weights_unused(D):
    """The block of G's updates. A plain D is frozen there. Under several processes D is a
    DataParallel, which cannot be frozen (it expects a gradient for every weight), so D's weight
    gradients are computed but kept out of the all-reduce, and cleared afterwards."""
    return D.no_sync() if hasattr(D, "no_sync") else frozen(D)


class StepResult(NamedTuple):
    """What one step measured, as tensors, so the caller decides when to wait for the device."""
    d_fake: paddle.Tensor  # D's loss on the generated batch
    d_real: paddle.Tensor  # D's loss on the real batch (without the R1 penalty)
    g: paddle.Tensor  # G's loss, the mean over its updates
    real_sign: paddle.Tensor  # the mean sign of D's realness on the real batch: ADA's overfitting signal r_t


def train_step(G, D, opt_g, opt_d, real, g_steps, amp=None, augment=Augment.NONE, ema=None, loss="bce", r1=0.0):
    """One batch of the original's schedule, in three phases. Returns a StepResult.
    amp: a MixedPrecision, or None for float32. augment: the DiffAugment policy of every batch D
    sees. ema: a MovingAverage to update after every G update, or None. loss: "bce" or "hinge".
    r1: the weight of the R1 penalty in this step's real phase (the caller scales it for lazy
    steps), 0 for none."""
    batch = real.shape[0]
    autocast = amp.autocast if amp else contextlib.nullcontext
    scalers = amp.scalers if amp else {}

    def judge(images):
        return D(Augment.diff_augment(images, augment))

    # 1. D on a batch of generated faces, labelled "generated".
    with paddle.no_grad(), autocast():
        fake = G(paddle.rand([batch, Z_DIM]))
    with autocast():
        d_fake = d_loss(judge(fake), FAKE, loss)
    update(opt_d, d_fake, scalers.get("D"))

    # 2. D on the real batch, labelled "real"; with R1 in float32, since its second derivative
    # is where half precision would lose the most.
    if r1:
        penalty, logits = r1_penalty(judge, D, real)
        d_real = d_loss(logits, REAL, loss)
        update(opt_d, d_real + r1 / 2 * penalty, scalers.get("D"))
    else:
        with autocast():
            logits = judge(real)
            d_real = d_loss(logits, REAL, loss)
        update(opt_d, d_real, scalers.get("D"))
    real_sign = paddle.sign(realness(logits.detach()).astype("float32")).mean()

    # 3. G, --g-steps times on fresh noise, through D, which learns nothing here.
    g_losses = []
    with d_weights_unused(D):
        for _ in range(g_steps):
            with autocast():
                generated = g_loss(judge(G(paddle.rand([batch, Z_DIM]))), loss)
            g_losses.append(update(opt_g, generated, scalers.get("G")))
            if ema:
                ema.update()
    opt_d.clear_grad()  # under DataParallel, D's unused gradients of the G steps
    return StepResult(d_fake.detach(), d_real.detach(), paddle.add_n(g_losses).detach() / g_steps, real_sign)


def r1_weight(hp, step):
    """The R1 weight of step's real phase: gamma times --r1-every on every --r1-every-th step,
    so the penalty weighs as much on average as gamma on every step (StyleGAN2's lazy R1), else 0."""
    return hp["r1"] * hp["r1_every"] if hp["r1"] and step % hp["r1_every"] == 0 else 0.0


class MovingAverage:
    """--ema: G_ema, a copy of G that is never trained. After every G update each of its weights
    moves towards G's, ema = decay * ema + (1 - decay) * G, so it is an average of G's recent
    weights (about the last 1 / (1 - decay) updates). G itself swings back and forth as it plays
    against D; the average damps the swings, and in many GANs it draws better samples than G does
    (Yazici et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training",
    https://arxiv.org/abs/1806.04498).

    Its BatchNorm running statistics are not averaged: before G_ema is saved they are measured
    anew on G_ema's own activations (fit_batch_norm_statistics). G's statistics, copied instead,
    describe another network's activations, and measured worse (README.md, "Making the recipe
    learn on a CPU")."""

    STATISTICS_BATCHES = 8  # batches of noise the statistics are averaged over (40 measured the same)
    STATISTICS_BATCH_SIZE = 64

    def __init__(self, G, decay):
        self.decay = decay
        self.G_ema = Generator()
        self.start_from(G)
        self.G_ema.eval()
        averages = dict(self.G_ema.named_parameters())
        # BatchNorm's running statistics are parameters with stop_gradient set, not weights.
        self.weights = [(averages[name], p) for name, p in G.named_parameters() if not p.stop_gradient]
        for average in averages.values():
            average.stop_gradient = True

    def start_from(self, G):
        self.G_ema.set_state_dict(G.state_dict())

    @paddle.no_grad()
    def update(self):
        for average, current in self.weights:
            paddle.assign(average * self.decay + current * (1 - self.decay), output=average)

    @paddle.no_grad()
    def fit_batch_norm_statistics(self, seed):
        """Set each BatchNorm's running mean and variance of G_ema to the average of its batch
        statistics over STATISTICS_BATCHES batches of noise drawn from seed: a function of G_ema's
        weights and the seed alone, so a resumed run saves the same statistics."""
        norms = [layer for layer in self.G_ema.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
        momentum = {layer: layer._momentum for layer in norms}
        rng = np.random.default_rng([seed, 0xB17])
        self.G_ema.train()
        try:
            for batch in range(self.STATISTICS_BATCHES):
                for layer in norms:
                    layer._momentum = batch / (batch + 1)  # running = mean of the batches so far
                self.G_ema(paddle.to_tensor(Utils.random_noise(rng, self.STATISTICS_BATCH_SIZE)))
        finally:
            self.G_ema.eval()
            for layer, value in momentum.items():
                layer._momentum = value


def step_seed(seed, rank, step):
    """The seed of one step's noise and dropout: distinct per (seed, process, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------- outputs

def draw_sample_grid(G, fixed_noise):
    """An 8x8 grid of what G makes of the fixed noise, and the samples' spread."""
    G.eval()
    samples = Utils.generate(G, fixed_noise)
    G.train()
    return Utils.sample_spread(samples), Utils.tile_images(samples, GRID_SIDE, GRID_SIDE)


def save_sample_grid(grid, path, title):
    """The grid as a PNG, titled like the original's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width, _ = grid.shape
    title_height = 40
    # One figure pixel per image pixel, so the tiles are not resampled.
    figure = plt.figure(figsize=(width / 100, (height + title_height) / 100), dpi=100)
    axes = figure.add_axes([0, 0, 1, height / (height + title_height)])
    axes.imshow(grid, interpolation="nearest")
    axes.axis("off")
    figure.text(0.5, 1 - title_height / 2 / (height + title_height), title, ha="center", va="center", fontsize=12)
    try:
        Files.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)


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

    def step(self, session, losses):
        state, procs = session.state, session.procs
        d_fake, d_real, g = losses
        # Real images trained on per second of training step, by all processes together.
        speed = state.hyper_parameters["batch_size"] * procs.world_size / session.step_seconds[-1]
        scalars = {"loss/D": d_fake + d_real, "loss/D_fake": d_fake, "loss/D_real": d_real, "loss/G": g,
                   "learning_rate/G": session.opt_g.get_lr(), "learning_rate/D": session.opt_d.get_lr(),
                   "speed/images_per_second": speed}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, state.global_step)

    def sample(self, step, spread, grid):
        self.writer.add_scalar("samples/spread", spread, step)
        self.writer.add_image("samples/fixed_noise", grid, step)


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
    (stopping halfway through an Adam update would leave the weights half changed); a second
    Ctrl-C stops at once."""

    def __enter__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self.request) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def request(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


# ------------------------------------------------------------------------- several processes

class Processes:
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
    settled, changed, conflicts = {}, {}, []
    for name, hp in HYPER_PARAMETERS.items():
        given = getattr(args, name)
        if given is None and hp.changeable and state and name not in state.hyper_parameters:
            given = hp.default  # a checkpoint from before this flag goes on with today's default
        settled[name] = given if given is not None else saved.get(name, hp.default)
        if not state or given is None or given == saved[name]:
            continue
        if hp.changeable or hp.d_form:
            changed[name] = given
        else:
            flag = name.replace("_", "-")
            conflicts.append(f"--{'' if given else 'no-'}{flag} (checkpoint: --{'' if saved[name] else 'no-'}{flag})"
                             if isinstance(given, bool) else f"--{flag} {given} (checkpoint: {saved[name]})")
    if conflicts:
        raise UserError(f"{args.model_dir} holds a checkpoint trained with other hyper-parameters: "
                        f"{', '.join(conflicts)}; drop those flags to continue it, or start over "
                        f"with --fresh or another --model-dir.")
    if settled["seed"] is None:
        settled["seed"] = secrets.randbelow(2**31)
    return settled, changed


def why_d_starts_afresh(args, changed):
    """The reason D starts afresh when continuing a checkpoint (--fresh-d, or a new form of D,
    whose saved weights would not fit), or None when D continues."""
    new_form = [f"--{name.replace('_', '-')}" for name in changed if HYPER_PARAMETERS[name].d_form]
    if new_form:
        return f"{' and '.join(new_form)} changed the form of D"
    return "--fresh-d" if args.fresh_d else None


def open_model_folder(args):
    """Rank 0's part of the set-up: check both folders can be written before any work, take the
    model folder, repair an interrupted save, and read where training stopped. Returns the
    folder, the saved RunState or None, the settled hyper-parameters, and whether D starts afresh."""
    Files.writable_folder(args.output, "--output")
    Files.writable_folder(args.model_dir, "--model-dir")
    folder = ModelFolder(args.model_dir)
    folder.lock()
    repaired = folder.recover()
    if repaired:
        print(repaired)
    if args.fresh:
        if folder.has_checkpoint():
            print(f"--fresh: starting over; the checkpoint in {folder.path} stays until this run's first "
                  f"checkpoint replaces it.")
        state = None
    else:
        state = folder.read_state()
    hp, changed = settle_hyper_parameters(args, state)
    if changed:
        before = trained_with(state)
        ema = ("" if "ema" not in changed or bool(changed["ema"]) == bool(before["ema"])
               else ": G_ema starts as a copy of G" if changed["ema"] else ": G_ema is left out of the next checkpoint")
        print("Continuing with " + ", ".join(f"--{name.replace('_', '-')} {value} (until now {before[name]})"
                                              for name, value in changed.items())
              + f" from step {state.global_step}{ema}.")
        state.changes.append({"step": state.global_step, **changed})
    fresh_d = why_d_starts_afresh(args, changed) if state else None
    if fresh_d:
        print(f"D starts afresh ({fresh_d}), with new weights and Adam state; G continues from step "
              f"{state.global_step}.")
        state.changes.append({"step": state.global_step, "fresh_d": fresh_d})
    return folder, state, hp, bool(fresh_d)


def agree_on_start(args, procs):
    """Rank 0 opens the model folder and every process takes its decisions (seed and run id
    included), so all ranks shuffle alike and a resume goes on exactly. A mistake found by rank 0
    ends every process with the same sentence instead of leaving the others waiting. Returns the
    folder, the saved RunState or None, the hyper-parameters, whether D starts afresh and the run's id."""
    folder, decided = ModelFolder(args.model_dir), None
    if procs.writer:
        try:
            folder, state, hp, fresh_d = open_model_folder(args)
            # A new run, or a checkpoint from before run ids, gets a new id.
            run = state.run if state and state.run else secrets.token_hex(4)
            decided = {"state": state.to_json() if state else None, "hp": hp, "fresh_d": fresh_d, "run": run}
        except UserError as error:
            decided = {"error": str(error)}
            if procs.world_size == 1:
                raise
    decided = procs.from_writer(decided)
    if "error" in decided:
        raise UserError(decided["error"])
    state = RunState.from_json(decided["state"], folder.path) if decided["state"] else None
    return folder, state, decided["hp"], decided["fresh_d"], decided["run"]


def load_checkpoint(session, saved, fresh_d=False):
    """Rank 0 loads the checkpoint in its model folder. Every other rank loads the same files,
    sent by rank 0 into a temporary folder of its own, so that on several machines the model
    folder need only be on rank 0's. fresh_d: leave D and its Adam state as built. Returns
    whether Adam's state was there."""
    procs, networks, optimizers = session.procs, session.networks, session.optimizers
    if fresh_d:
        del networks["D"], optimizers["D"]
    ema_saved = trained_with(saved)["ema"]
    if session.ema and not ema_saved:  # --ema turned on for this checkpoint: G_ema starts as the loaded G
        del networks["G_ema"]
    files = procs.from_writer(session.folder.checkpoint_bytes() if procs.writer and procs.world_size > 1 else None)
    if procs.writer:
        with_adam = session.folder.load(networks, optimizers, saved, session.scalers)
    else:
        with tempfile.TemporaryDirectory(prefix="checkpoint-from-rank-0-") as copy:
            for name, data in files.items():
                (Path(copy) / name).write_bytes(data)
            with_adam = ModelFolder(copy).load(networks, optimizers, saved, session.scalers)
    if session.ema and not ema_saved:
        session.ema.start_from(session.G)
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
class Session:
    """Everything one training run works with."""
    args: argparse.Namespace
    procs: Processes
    folder: ModelFolder
    state: RunState
    dataset: FaceDataset
    loader: object
    G: Generator
    D: Discriminator
    opt_g: paddle.optimizer.Optimizer
    opt_d: paddle.optimizer.Optimizer
    amp: object
    fixed_noise: np.ndarray
    ema: MovingAverage = None  # --ema's G_ema and its updates; None without --ema
    last_saved: str = None  # where the folder's newest checkpoint of this run stands, e.g. "step 8 (...)"
    step_seconds: list = None  # this run's steps, data loading and pictures left out
    train_G: object = None  # the networks the steps run through (DataParallel wrappers under several processes)
    train_D: object = None
    stop: object = None  # the StopRequest of the loop
    visualdl: VisualDLLog = None  # --visualdl's log on rank 0; None elsewhere and without the flag
    stretch: dict = None  # this run's entry in state.stretches
    cpu_started: float = 0.0  # time.process_time() when this run began

    @property
    def networks(self):
        """What a checkpoint holds the weights of: G_ema is saved and loaded with G and D, as one unit."""
        return {"G": self.G, "D": self.D, **({"G_ema": self.ema.G_ema} if self.ema else {})}

    @property
    def optimizers(self):
        return {"G": self.opt_g, "D": self.opt_d}

    @property
    def scalers(self):
        return self.amp.scalers if self.amp else {}


def build_networks(hp, device, world_size):
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
    opt_d = paddle.optimizer.Adam(hp["d_lr"] or hp["lr"], beta1=hp["beta1"], parameters=D.parameters())
    return G, D, opt_g, opt_d


@contextlib.contextmanager
def nothing_left_if_refused(*folders):
    """Within this block, a refusal (UserError) removes the folders it made for folders (parents
    included) while they hold nothing but the model folder's lock: a refused run leaves nothing
    behind. A folder another process holds is left alone: it may have made it a moment ago."""
    made = [top for top in map(first_missing, folders) if top]
    try:
        yield
    except FolderBusy:
        raise
    except UserError:
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
            session.folder.check_space(session.networks, session.optimizers, session.state)
        except UserError as error:
            problem = str(error)
    problem = session.procs.from_writer(problem)
    if problem:
        raise UserError(problem)


def set_up(args):
    # Rank 0 alone makes the folders, so it alone removes them.
    with nothing_left_if_refused(*((args.model_dir, args.output) if paddle.distributed.get_rank() == 0 else ())):
        return build_session(args)


def build_session(args):
    cpu_started = time.process_time()
    procs = Processes()
    device = Utils.choose_device(args.device)
    if args.amp and device != "gpu":
        raise UserError("--amp (mixed precision) is for GPUs; Paddle's CPU kernels gain nothing from it, "
                        "so train on CPU without --amp.")
    try:
        check_folder(args.data)  # before any folder is made
    except DataSetError as error:
        raise UserError(str(error)) from None
    folder, saved, hp, fresh_d, run = agree_on_start(args, procs)
    dataset, loader = load_faces(args, hp, procs)
    G, D, opt_g, opt_d = build_networks(hp, device, procs.world_size)
    state = saved or RunState(hyper_parameters=hp)
    session = Session(args, procs, folder, state, dataset, loader, G, D, opt_g, opt_d,
                      amp=MixedPrecision() if args.amp else None, step_seconds=[], cpu_started=cpu_started,
                      ema=MovingAverage(G, hp["ema"]) if hp["ema"] else None,
                      fixed_noise=Utils.random_noise(np.random.default_rng([hp["seed"], 0xF1ED]), GRID_SIDE ** 2))
    if saved:
        with_adam = load_checkpoint(session, saved, fresh_d)
        session.last_saved = saved.where()
        say(session, f"Resuming from {folder.path}: {saved.epochs_done} epochs and {saved.batches_done} batches "
                     f"done (step {saved.global_step})"
                     + ("." if with_adam else "; no usable optimizer state there, so Adam starts afresh."))
    state.run, state.hyper_parameters = run, hp  # after loading, which checks the files' stamps
    if saved and saved.data and (saved.data, saved.images) != (str(args.data), len(dataset)):
        state.changes.append({"step": state.global_step, "data": str(args.data), "images": len(dataset)})
        say(session, f"Continuing on {len(dataset)} faces in {args.data} (until now {saved.images} in {saved.data}).")
    state.data, state.images, state.steps_per_epoch = str(args.data), len(dataset), len(loader.batch_sampler)
    # What this stretch of training costs, kept beside the earlier ones: a model's CPU-hours add up.
    session.stretch = {"from_step": state.global_step, "to_step": state.global_step,
                       "machine": Utils.machine_name(device), "processes": procs.world_size,
                       "threads": Utils.cpu_threads(), "cpu_seconds": 0.0}
    state.stretches.append(session.stretch)
    state.versions = {"paddle": paddle.__version__, "numpy": np.__version__, "python": platform.python_version()}
    say(session, f"Training on {device} ({procs.world_size} process(es)"
                 + (f", {session.amp.dtype} mixed precision" if session.amp else "") + f"), {len(dataset)} faces, "
                 f"{state.steps_per_epoch} batches of {hp['batch_size']} per epoch, seed {hp['seed']}.")
    if dataset.skipped:
        say(session, f"Skipped {len(dataset.skipped)} unreadable files.")
    if state.epochs_done < args.epochs:
        agree_on_space(session)
    return session


def say(session, message):
    if session.procs.writer:
        print(message)


# --------------------------------------------------------------------------------- the loop

def checkpoint(session, started):
    session.state.wall_seconds = round(time.time() - started, 1)
    session.stretch.update(to_step=session.state.global_step,
                           cpu_seconds=round(time.process_time() - session.cpu_started, 1))
    if session.procs.writer:
        if session.ema:
            session.ema.fit_batch_norm_statistics(session.state.hyper_parameters["seed"])
        session.folder.save(session.networks, session.optimizers, session.state, session.scalers)
    session.last_saved = session.state.where()
    session.procs.wait_for_all()  # nobody leaves before rank 0's checkpoint is on disk


def sample(session, epoch):
    """Draw the sample grid of the fixed noise, record its spread, and return the function that
    writes it to --output: at an epoch's end it is written after the checkpoint."""
    state, losses = session.state, session.state.losses
    spread, grid = draw_sample_grid(session.G, session.fixed_noise)
    title = (f"Epoch {epoch}  Batch {state.batches_done}  D loss {losses['d_fake'][-1] + losses['d_real'][-1]:.4f}  "
             f"G loss {losses['g'][-1]:.4f}  spread {spread:.1f}")
    path = Path(session.args.output) / f"epoch_{epoch:04d}_batch_{state.batches_done:04d}.png"
    state.spread.append([state.global_step, round(spread, 2)])
    if session.visualdl:
        session.visualdl.sample(state.global_step, spread, grid)
    return lambda: picture(lambda: save_sample_grid(grid, path, title), f"The sample grid {path}")


def divergence_message(session, losses, epoch):
    seen = losses if not all(math.isfinite(loss) for loss in losses) else "non-finite on another process"
    where = f"the losses became {seen} at epoch {epoch}, step {session.state.global_step + 1}; training stopped"
    folder = session.folder.path
    if session.last_saved:
        kept = f"the last checkpoint in {folder}, of {session.last_saved}, was kept"
    elif session.args.fresh and session.folder.has_checkpoint():
        kept = f"no checkpoint of this run was written, so {folder} still holds the one --fresh would have replaced"
    else:
        kept = f"no checkpoint was written yet, so {folder} holds none"
    return f"{where} and {kept}. Try a lower --lr, or --init dcgan."


def run_step(session, real, epoch):
    """One batch: the update, then the decisions every process takes together. Returns the
    losses and whether to stop after this step."""
    state, hp, procs = session.state, session.state.hyper_parameters, session.procs
    paddle.seed(step_seed(hp["seed"], procs.rank, state.global_step))
    started = time.perf_counter()
    result = train_step(session.train_G, session.train_D, session.opt_g, session.opt_d, real, hp["g_steps"],
                        amp=session.amp, augment=hp["augment"], ema=session.ema, loss=hp["loss"],
                        r1=r1_weight(hp, state.global_step))
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


def run_epoch(session, epoch):
    """Train the rest of one epoch. Returns whether it finished (False: the run was asked to stop)
    and the writing of its last sample grid, which waits for the checkpoint, or None."""
    state, args = session.state, session.args
    session.loader.batch_sampler.set_epoch(epoch, start_batch=state.batches_done)
    session.dataset.set_epoch(epoch)
    progress = tqdm(session.loader, total=state.steps_per_epoch, initial=state.batches_done,
                    desc=f"epoch {epoch}/{args.epochs}", disable=not session.procs.writer, dynamic_ncols=True)
    with progress:
        for real in progress:
            losses, stop = run_step(session, real, epoch)
            if session.visualdl:
                session.visualdl.step(session, losses)
            progress.set_postfix(D=f"{losses[0] + losses[1]:.3f}", G=f"{losses[2]:.3f}")
            every = args.sample_every and state.batches_done % args.sample_every == 0
            last = state.batches_done == state.steps_per_epoch
            write_grid = sample(session, epoch) if session.procs.writer and (every or last) else None
            if stop:
                return False, write_grid
            if write_grid and not last:
                write_grid()
    state.epochs_done, state.batches_done = epoch, 0
    measure_overfitting(session, epoch)
    return True, write_grid


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
    say(session, f"Epoch {epoch}: D's overfitting signal r_t = {r_t:.3f} (the mean sign of its real-minus-generated "
                 f"logit on the real batches, from -1 to 1: near 0 D cannot tell them from generated faces, near "
                 f"1 it is sure of each).")
    if session.visualdl:
        session.visualdl.writer.add_scalar("diagnostics/r_t", r_t, state.global_step)


def train(args):
    check_visualdl(args)
    session = set_up(args)
    state, folder = session.state, session.folder.path
    if state.epochs_done >= args.epochs:
        say(session, f"{folder} already holds {state.epochs_done} epochs (--epochs {args.epochs}); nothing to do.")
        return state
    # Under several processes the steps run through DataParallel wrappers, which average the
    # gradients; checkpoints and samples use the plain networks.
    several = session.procs.world_size > 1
    session.train_G, session.train_D = ((paddle.DataParallel(session.G), paddle.DataParallel(session.D)) if several
                                        else (session.G, session.D))
    if args.visualdl and session.procs.writer:
        session.visualdl = VisualDLLog(Path(args.output) / "visualdl" / state.run)
    started = time.time() - state.wall_seconds
    with StopRequest() as session.stop, session.visualdl or contextlib.nullcontext():
        while state.epochs_done < args.epochs:
            finished, write_grid = run_epoch(session, state.epochs_done + 1)
            checkpoint(session, started)  # first: a picture that fails must not cost the checkpoint
            if write_grid:
                write_grid()
            if not finished:
                say(session, f"Stopped in epoch {state.epochs_done + 1} after batch {state.batches_done}; checkpoint "
                             f"saved to {folder}. Run the same command to continue.")
                session.procs.wait_for_all()  # the launcher ends every process once one has left
                sys.exit(130)
            if session.procs.writer:
                loss_curve = Path(args.output) / "loss.png"
                picture(lambda: Utils.save_loss_curve(state.losses, state.steps_per_epoch, loss_curve),
                        f"The loss curve {loss_curve}")
    say(session, f"Done: {state.epochs_done} epochs, {state.global_step} steps; model in {folder}, samples in "
                 f"{args.output}. A training step took {np.median(session.step_seconds):.2f} s "
                 f"(median of this run's {len(session.step_seconds)}).")
    return state


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    Utils.run_main(main)
