"""paddle.hub entries: the shipped generator and discriminator, ready to use.

    import paddle
    G = paddle.hub.load("path/to/AvatarGenerator", "generator", source="local")
    G = paddle.hub.load("owner/AvatarGenerator", "generator", source="github")  # "owner/name:branch"
    images = G(paddle.rand([16, 72]))  # [16, 3, 96, 96] in [-1, 1]

paddle.hub imports this file with the repository first on sys.path, checks that every module in
`dependencies` imports, and calls the entry by name with the keyword arguments given to load.
It takes the repository off sys.path again before that call, so the entries put it back to
import the project's own modules. Every public callable here is an entry (paddle.hub.list), so
everything else has a leading underscore.
"""
import sys as _sys
from pathlib import Path as _Path

dependencies = ["paddle", "numpy", "safetensors", "PIL"]

_REPOSITORY = _Path(__file__).resolve().parent


def _project():
    """The project's Utils, Net and Checkpoint, imported from this repository."""
    if str(_REPOSITORY) not in _sys.path:
        _sys.path.insert(0, str(_REPOSITORY))
    import Utils  # first, as in every script: it sets up the CPU for Paddle

    import Checkpoint
    import Net
    return Utils, Net, Checkpoint


def generator(model_dir=None, raw_g=False):
    """The generator of the repository's Model/ (or of model_dir), in evaluation mode: the
    averaged G_ema.safetensors where the folder has it (Train.py --ema), else G.safetensors;
    raw_g=True takes G.safetensors in any case. It turns noise [N, 72], uniform in [0, 1), into
    faces [N, 3, 96, 96] in [-1, 1]."""
    Utils, _, _ = _project()
    return Utils.load_generator(model_dir or _REPOSITORY / "Model", raw_g)


def discriminator(model_dir=None):
    """The discriminator of the repository's Model/ (or of model_dir), in evaluation mode, built
    as it was trained (its normalisation, BatchNorm on its input or not, and the minibatch standard
    deviation feature, as state.json records): faces [N, 3, 96, 96] in [-1, 1] to logits [N, 2],
    index 1 meaning real."""
    Utils, Net, Checkpoint = _project()
    folder = _Path(model_dir or _REPOSITORY / "Model")
    state = Checkpoint.ModelFolder(folder).read_state()
    # A checkpoint from before a flag existed was trained as the original: BatchNorm everywhere.
    trained = state.hyper_parameters if state else {}
    network = Net.Discriminator(input_norm=trained.get("d_input_bn", True), norm=trained.get("d_norm", "batch"),
                                mbstd=trained.get("mbstd", False))
    Utils.load_weights(network, folder / Checkpoint.weights_file("D"))
    network.eval()
    return network
