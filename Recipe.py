"""What defines training, apart from how it is hosted: the hyper-parameters and their flag types,
the losses, one step of the schedule with its three phases, G_ema, and mixed precision.

Per batch, as the original: D learns from a batch of generated faces alone (label "generated"),
then from the real batch alone (label "real"), then G learns --g-steps times, each on fresh
noise, through D (label "real"). Train.py runs the steps: the command line, the processes, the
checkpoints and the loop.
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

import argparse
import contextlib
import math
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import paddle
import paddle.nn.functional as F

import Augment
import Net
from Files import UserError, argument_type, within
from Net import Z_DIM, Generator

REAL, FAKE = 1, 0


# ------------------------------------------------------------------------------- the flags

positive_int = within(int, 1)
non_negative_int = within(int, 0)
learning_rate = argument_type(float, lambda value: math.isfinite(value) and value > 0, "a positive number")
below_one = argument_type(float, lambda value: 0 <= value < 1, "a number from 0 up to (not including) 1")
not_negative = within(float, 0)
fraction = argument_type(float, lambda value: 0 < value <= 1, "a number above 0 up to 1")


def augment_policy(text):
    """An argparse type: an --augment policy in the one spelling state.json keeps."""
    try:
        return Augment.parse_policy(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ----------------------------------------------------------------------------------- the losses
# Each loss is written on D's realness, the real-minus-generated difference of its two logits: one
# number per face, high where D finds the face real.

def realness_of(logits):
    """D's real-minus-generated logit difference, one number per image: how real D finds it."""
    return logits[:, REAL] - logits[:, FAKE]


def cross_entropy(realness, real=True):
    """The original's loss: softmax cross entropy of D's two logits against "real" (or, with
    real=False, "generated"), which is softplus of the realness negated (or of the realness)."""
    return F.softplus(-realness if real else realness)


def hinge(realness, real=True):
    """D's hinge loss (Lim & Ye 2017; Miyato et al. 2018 measured it better than cross entropy with
    spectral normalisation): D is pushed until realness reaches +1 on real faces and -1 on
    generated ones, and no further."""
    return F.relu(1 - realness if real else 1 + realness)


def negated(realness):
    """G's loss under hinge: the realness of its faces, negated."""
    return -realness


class Loss(NamedTuple):
    """A GAN loss, face by face: D's on faces that are all real or all generated, and G's on its own
    faces, which falls as D finds them more real (so --top-k can keep G's best)."""
    name: str  # what the loss curve's axis calls it
    d: Callable  # d(realness, real) -> each face's loss
    g: Callable  # g(realness) -> each face's loss


# --loss's choices. A new loss is one entry here (and a row of README.md's hyper-parameter table).
LOSSES = {"bce": Loss("softmax cross entropy", d=cross_entropy, g=cross_entropy),
          "hinge": Loss("hinge loss", d=hinge, g=negated)}


def d_loss(logits, label, kind):
    """D's mean loss on a batch that is all real (label REAL) or all generated (FAKE)."""
    return LOSSES[kind].d(realness_of(logits).astype("float32"), label == REAL).mean()


def g_loss(logits, kind, top=None):
    """G's mean loss on D's logits for its faces. top: taken over only the `top` faces D finds most
    real (--top-k); every loss falls as realness rises, so these are the faces G already draws best."""
    scores = realness_of(logits).astype("float32")  # in float32: half precision would rank with ties
    if top is not None and top < logits.shape[0]:
        scores = paddle.topk(scores, top).values
    return LOSSES[kind].g(scores).mean()


def loss_axis_name(loss, changes=()):
    """The loss curve's axis: the --loss in use, or, where state.json's changes show that it changed
    during the run, each change with its step."""
    switches = [f"--loss {change['loss']} from step {change['step']}" for change in changes if "loss" in change]
    return f"loss ({'; '.join(switches)})" if switches else LOSSES[loss].name


# ----------------------------------------------------------------------------- the hyper-parameters

@dataclass(frozen=True)
class HyperParameter:
    """A flag that defines the run, kept in state.json and checked on every resume."""
    default: object  # what `python Train.py` trains with: the recipe that measured best on a CPU
    original: object  # the original repository's value, which --original trains with
    help: str
    type: object = None
    choices: tuple = None
    changeable: bool = False  # may be changed when continuing a checkpoint (recorded in state.json)
    d_form: bool = False  # shapes D: changing it when continuing starts D afresh (see Train.d_grows); recorded


# A checkpoint written before a hyper-parameter existed trained with its original value (the
# original had no --ema and no --augment), and continues with the default of a changeable one.
# docs/recipe.md gives the measurements behind each default that differs from the original's: "Making the
# recipe learn on a CPU", and for --flip and --d-lr "The diversity round".
HYPER_PARAMETERS = {
    "batch_size": HyperParameter(32, 100, "real images per batch (per process under several GPUs)", positive_int),
    "lr": HyperParameter(2e-4, 2e-4, "Adam learning rate of G (and of D under --original); may change when "
                                     "continuing a checkpoint, e.g. lowered once the measurements level off",
                         learning_rate, changeable=True),
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
                           Utils.seed_number),
    # The diversity round (docs/recipe.md, "The diversity round"): D's form, loss, penalty and speed.
    "loss": HyperParameter("bce", "bce", "the GAN loss: bce, the original's cross entropy of D's two logits, or "
                                         "hinge, on D's real-minus-generated logit difference; may change when "
                                         "continuing a checkpoint", choices=tuple(LOSSES), changeable=True),
    "d_norm": HyperParameter("batch", "batch", "D's normalisation: batch (BatchNorm, as the original) or spectral "
                                               "(spectral normalisation of its convolutions and linear layer, no "
                                               "BatchNorm); changing it when continuing starts D afresh",
                             choices=("batch", "spectral"), d_form=True),
    "mbstd": HyperParameter(False, False, "the minibatch standard deviation feature before D's linear layer; "
                                          "turning it on when continuing keeps D, its new inputs weighted zero, "
                                          "and turning it off starts D afresh", d_form=True),
    "r1": HyperParameter(0.0, 0.0, "weight gamma of the R1 penalty, gamma / 2 times the squared gradient of D's "
                                   "logit difference on real faces; 0: none; may change when continuing a checkpoint",
                         not_negative, changeable=True),
    "r1_every": HyperParameter(16, 16, "apply the R1 penalty every this many steps, scaled up to match (lazy "
                                       "regularisation); may change when continuing a checkpoint", positive_int,
                               changeable=True),
    "flip": HyperParameter(True, False, "mirror training faces left-right at random; may change when continuing "
                                        "a checkpoint", changeable=True),
    "d_lr": HyperParameter(4e-4, None, "Adam learning rate of D alone (under --original: --lr's); may change when "
                                       "continuing a checkpoint", learning_rate, changeable=True),
    # The second long training run (docs/recipe.md, "Mode seeking"): a term in G's loss aimed at variety itself.
    "mode_seeking": HyperParameter(0.0, 0.0, "weight of the mode-seeking term in G's loss, which rewards G for "
                                             "drawing unlike faces from unlike noise; 0: none; may change when "
                                             "continuing a checkpoint", not_negative, changeable=True),
    # The crispness round (docs/recipe.md, "The crispness round"): G learns from its best faces, and
    # the learning rates cool down to zero at the end of a run.
    "top_k": HyperParameter(1.0, 1.0, "top-k training: G's adversarial loss is taken from only the faces of its "
                                      "batch that D finds most real, a share that starts at the whole batch and "
                                      "shrinks by a hundredth each epoch down to this fraction (Sinha et al. "
                                      "2020; under several processes, of each one's batch); 1: every face; may "
                                      "change when continuing a checkpoint", fraction, changeable=True),
    "cooldown": HyperParameter(0, 0, "both learning rates fall linearly to zero over this many steps from where "
                                     "the run stands (a new value starts a new cooldown at full rate), and training "
                                     "stops there; 0: none; may change when continuing a checkpoint",
                               non_negative_int, changeable=True),
}
ORIGINAL = {name: hp.original for name, hp in HYPER_PARAMETERS.items()}


def refused_value(name, value):
    """Why a value that state.json records for a hyper-parameter is not one its flag would give
    (a hand-edited file: "x" for the batch size, say), or None where it is one. None itself is
    the recorded value of a flag whose default or original value is None (--seed, --d-lr)."""
    hp = HYPER_PARAMETERS[name]
    if value is None and None in (hp.default, hp.original):
        return None
    if hp.type is None and hp.choices is None:  # a switch
        return None if isinstance(value, bool) else "not true or false"
    if hp.choices:
        return None if value in hp.choices else f"not one of {', '.join(hp.choices)}"
    try:
        return None if hp.type(str(value)) == value and not isinstance(value, bool) else "not of its kind"
    except argparse.ArgumentTypeError as error:
        return str(error)


def wrong_hyper_parameters(recorded):
    """(name, value, why) for each hyper-parameter of recorded (a checkpoint's, as trained_with
    gives them) whose value its flag would not give: state.json was edited by hand."""
    return [(name, value, why) for name, value in recorded.items()
            if name in HYPER_PARAMETERS and (why := refused_value(name, value))]


def trained_with(state):
    """The hyper-parameters a checkpoint was trained with; a key it lacks did not exist yet (its
    original value), and D's rate where it is None is --lr's (d_learning_rate)."""
    saved = {**ORIGINAL, **state.hyper_parameters}
    return {**saved, "d_lr": d_learning_rate(saved)}


def d_learning_rate(hyper_parameters):
    """D's Adam rate: --d-lr, or where that is None (the original's, and in checkpoints from before
    --d-lr) --lr's, since the original trained both networks at one rate."""
    d_lr = hyper_parameters["d_lr"]
    return hyper_parameters["lr"] if d_lr is None else d_lr


TOP_K_DECAY = 0.99  # Sinha et al.'s gamma: the share of faces G learns from shrinks by 1% an epoch


def top_k_count(least, epochs_done, batch):
    """How many of a batch of G's faces --top-k takes G's adversarial loss from, in the epoch after
    epochs_done: Sinha et al.'s schedule (2020, https://arxiv.org/abs/2002.06224, section 3), the
    whole batch at first, shrinking by TOP_K_DECAY each epoch of the model's training, never below
    the share `least` (their nu), and at least one face. In early epochs every face of G is poor and
    each gradient helps; later the worst faces' gradients point G away from what D finds real."""
    share = max(TOP_K_DECAY ** epochs_done, least)
    return max(1, min(batch, round(share * batch)))


def cooldown_factor(steps, into):
    """What the learning rates are multiplied by on the step `into` steps into a --cooldown of
    `steps` steps: linearly from 1 on its first step down to 1 / steps on its last, 0 after it
    (the decay of warmup-stable-decay schedules, Hu et al. 2024); 1 without a cooldown."""
    if not steps:
        return 1.0
    return max(0.0, (steps - into) / steps)


def r1_penalty(judge, D, real):
    """R1 (Mescheder et al. 2018, https://arxiv.org/abs/1801.04406): the mean over the batch of the
    squared gradient of D's realness with respect to each real image, as D sees it (augmented).
    Penalising it keeps D flat around the real faces, so it cannot overfit them with steep
    walls. Returns D's logits on the real batch too, so the caller's loss reuses them."""
    real = real.detach()
    real.stop_gradient = False
    with Net.twice_differentiable(D), Augment.twice_differentiable():
        logits = judge(real)
        gradient, = paddle.grad(realness_of(logits).sum(), real, create_graph=True)
    return gradient.square().sum(axis=[1, 2, 3]).mean(), logits


def mode_seeking_term(faces, noise):
    """The mode-seeking term of MSGAN (Mao et al. 2019, https://arxiv.org/abs/1903.05628): 1 / (r +
    1e-5), where r is how far apart the batch's first and second halves are as faces (their mean
    absolute difference) over how far apart their noise is. G lowers it by drawing unlike faces
    from unlike noise, the opposite of collapsing many noise vectors onto one face. It is taken on
    the faces as G drew them, before DiffAugment, whose random shifts, colours and cutouts would
    part two faces without G doing anything."""
    half = faces.shape[0] // 2

    def halves_apart(batch):
        return (batch[:half] - batch[half:2 * half]).abs().mean()

    return 1 / (halves_apart(faces.astype("float32")) / halves_apart(noise) + 1e-5)


# ------------------------------------------------------------------------------------ one step

def optimizer_step(optimizer, loss, scaler=None):
    """Backpropagate loss and let optimizer step (through the float16 loss scaler, if any); returns loss."""
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:  # float16: scale the loss up so that small gradients do not round to zero, and back down
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    optimizer.clear_grad()
    return loss


class FrozenWeights:
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


def d_weight_gradients_off(D):
    """The block of G's updates. A plain D is frozen there. Under several processes D is a
    DataParallel, which cannot be frozen (it expects a gradient for every weight), so D's weight
    gradients are computed but kept out of the all-reduce, and cleared afterwards."""
    return D.no_sync() if hasattr(D, "no_sync") else FrozenWeights(D)


class StepResult(NamedTuple):
    """What one step measured, as tensors, so the caller decides when to wait for the device."""
    d_fake: paddle.Tensor  # D's loss on the generated batch
    d_real: paddle.Tensor  # D's loss on the real batch (without the R1 penalty)
    g: paddle.Tensor  # G's loss over every face, the mean over its updates (without the mode-seeking term)
    real_sign: paddle.Tensor  # the mean sign of D's realness on the real batch: ADA's overfitting signal r_t


class Players(NamedTuple):
    """What a step trains: G and D (under several processes, their DataParallel wrappers, which
    average the gradients) with their Adam optimizers, and where those flags are on, --ema's
    MovingAverage, updated after every G update, and --amp's MixedPrecision."""
    G: paddle.nn.Layer
    D: paddle.nn.Layer
    opt_g: paddle.optimizer.Optimizer
    opt_d: paddle.optimizer.Optimizer
    ema: object = None  # a MovingAverage, or None
    amp: object = None  # a MixedPrecision, or None for float32


@dataclass(frozen=True)
class StepConfig:
    """How one step trains, beside what it trains (Players) and the real batch."""
    g_steps: int = 1  # G's updates, each on fresh noise
    augment: str = Augment.NONE  # the DiffAugment policy of every batch D sees
    loss: str = "bce"  # a name of LOSSES
    r1: float = 0.0  # the R1 penalty's weight in this step's real phase (r1_weight), 0 for none
    mode_seeking: float = 0.0  # the mode-seeking term's weight in G's loss, 0 for none
    top: int | None = None  # G's adversarial loss from only this many of its faces (top_k_count); None: all

    @classmethod
    def at(cls, hp, step, epochs_done, batch):
        """The configuration of the step after `step` steps and `epochs_done` epochs, under the
        hyper-parameters hp, on real batches of `batch` faces."""
        top = top_k_count(hp["top_k"], epochs_done, batch) if hp["top_k"] < 1 else None
        return cls(g_steps=hp["g_steps"], augment=hp["augment"], loss=hp["loss"], r1=r1_weight(hp, step),
                   mode_seeking=hp["mode_seeking"], top=top)


def train_step(players, real, config=StepConfig()):
    """One batch of the original's schedule, in three phases, as config says. Returns a StepResult.
    With config.top, G's adversarial loss comes from only its best faces; the mode-seeking term
    still takes every face."""
    G, D, opt_g, opt_d, ema, amp = players
    batch = real.shape[0]
    autocast = amp.autocast if amp else contextlib.nullcontext
    scalers = amp.scalers if amp else {}

    def judge(images):
        return D(Augment.diff_augment(images, config.augment))

    # 1. D on a batch of generated faces, labelled "generated".
    with paddle.no_grad(), autocast():
        fake = G(paddle.rand([batch, Z_DIM]))
    with autocast():
        d_fake = d_loss(judge(fake), FAKE, config.loss)
    optimizer_step(opt_d, d_fake, scalers.get("D"))

    # 2. D on the real batch, labelled "real" (with the R1 penalty on its lazy steps).
    objective, d_real, logits = real_phase_loss(judge, D, real, config.loss, config.r1, autocast)
    optimizer_step(opt_d, objective, scalers.get("D"))
    real_sign = paddle.sign(realness_of(logits.detach()).astype("float32")).mean()

    # 3. G, --g-steps times on fresh noise, through D, which learns nothing here.
    g_losses = []
    with d_weight_gradients_off(D):
        for _ in range(config.g_steps):
            noise = paddle.rand([batch, Z_DIM])
            with autocast():
                faces = G(noise)
                logits = judge(faces)
                generated = g_loss(logits, config.loss)  # over every face: the logged loss, with or without top-k
                adversarial = generated if config.top is None else g_loss(logits, config.loss, config.top)
            objective = adversarial
            if config.mode_seeking:
                objective = objective + config.mode_seeking * mode_seeking_term(faces, noise)
            optimizer_step(opt_g, objective, scalers.get("G"))
            g_losses.append(generated)  # G's loss alone, as D's is logged without the R1 penalty
            if ema:
                ema.update()
    opt_d.clear_grad()  # under DataParallel, D's unused gradients of the G steps
    return StepResult(d_fake.detach(), d_real.detach(), paddle.add_n(g_losses).detach() / config.g_steps, real_sign)


def real_phase_loss(judge, D, real, loss, r1, autocast):
    """Phase 2's loss: D's on the real batch, plus r1 / 2 times the R1 penalty where r1 is not 0.
    The penalty's pass runs in float32, since its second derivative is where half precision would
    lose the most. Returns the loss to step on, D's loss alone, and D's logits."""
    if r1:
        penalty, logits = r1_penalty(judge, D, real)
        d_real = d_loss(logits, REAL, loss)
        return d_real + r1 / 2 * penalty, d_real, logits
    with autocast():
        logits = judge(real)
        d_real = d_loss(logits, REAL, loss)
    return d_real, d_real, logits


def r1_weight(hp, step):
    """The R1 weight of step's real phase: gamma times --r1-every on every --r1-every-th step,
    so the penalty weighs as much on average as gamma on every step (StyleGAN2's lazy R1), else 0."""
    return hp["r1"] * hp["r1_every"] if hp["r1"] and step % hp["r1_every"] == 0 else 0.0


# ----------------------------------------------------------------------------------------- G_ema

class MovingAverage:
    """--ema: G_ema, a copy of G that is never trained. After every G update each of its weights
    moves towards G's, ema = decay * ema + (1 - decay) * G, so it is an average of G's recent
    weights (about the last 1 / (1 - decay) updates). G itself swings back and forth as it plays
    against D; the average damps the swings, and in many GANs it draws better samples than G does
    (Yazici et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training",
    https://arxiv.org/abs/1806.04498).

    Its BatchNorm running statistics are not averaged: before G_ema is saved they are measured
    anew on G_ema's own activations (fit_batch_norm_statistics). G's statistics, copied instead,
    describe another network's activations, and measured worse (docs/recipe.md, "Making the recipe
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


# ------------------------------------------------------------------------------- mixed precision

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
