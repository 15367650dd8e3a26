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

The entries are called from Python, so their errors speak of their arguments (model_dir=,
raw_g=), not of the scripts' flags, and say only what they checked.
"""
import sys as _sys
from pathlib import Path as _Path

dependencies = ["paddle", "numpy", "safetensors", "PIL"]

_REPOSITORY = _Path(__file__).resolve().parent


def _project():
    """The project's Net, Checkpoint and UserError, imported from this repository."""
    if str(_REPOSITORY) not in _sys.path:
        _sys.path.insert(0, str(_REPOSITORY))
    import Utils  # noqa: F401  first, as in every script: it sets up the CPU for Paddle

    import Checkpoint
    import Net
    from Files import UserError
    return Net, Checkpoint, UserError



def generator(model_dir=None, raw_g=False):
    """The generator of the repository's Model/ (or of model_dir), in evaluation mode: the
    averaged G_ema.safetensors where the folder has it (Train.py --ema), else G.safetensors;
    raw_g=True takes G.safetensors in any case. It turns noise [N, 72], uniform in [0, 1), into
    faces [N, 3, 96, 96] in [-1, 1]."""
    Net, Checkpoint, UserError = _project()
    folder = _folder(UserError, model_dir)
    path = Checkpoint.generator_file(folder, raw_g, raw_g_said="raw_g=True")
    if raw_g and not path.exists() and (folder / Checkpoint.AVERAGED_GENERATOR_FILE).exists():
        raise UserError(f"{path} does not exist, so raw_g=True has nothing to load; leave raw_g out to load "
                        f"{Checkpoint.AVERAGED_GENERATOR_FILE}, the averaged generator beside it.")
    _check_readable(UserError, path)
    return _loaded(Checkpoint, Net.Generator(), path)


def discriminator(model_dir=None):
    """The discriminator of the repository's Model/ (or of model_dir), in evaluation mode, built
    as it was trained (its normalisation, BatchNorm on its input or not, and the minibatch standard
    deviation feature, as state.json records): faces [N, 3, 96, 96] in [-1, 1] to logits [N, 2],
    index 1 meaning real."""
    Net, Checkpoint, UserError = _project()
    folder = _folder(UserError, model_dir)
    path = folder / Checkpoint.weights_file("D")
    _check_readable(UserError, path)
    try:
        state = Checkpoint.ModelFolder(folder).read_state()
    except Checkpoint.DamagedState as error:  # its advice is for Train.py's user: say it for a Python caller
        raise UserError(f"{error.path} cannot be used ({error.reason}), so how {path.name} was built is unknown: "
                        f"put back the state.json saved with it, or pass model_dir= another folder.") from None
    import Recipe  # on the path since _project()

    # A checkpoint from before a flag existed was trained as the original: BatchNorm everywhere.
    trained = Recipe.trained_with(state) if state else Recipe.ORIGINAL
    wrong = Recipe.wrong_hyper_parameters(trained)  # as Train.py checks them
    if wrong:
        name, value, why = wrong[0]
        raise UserError(f"{folder / Checkpoint.STATE_FILE} records {name}={value!r}, which Train.py never writes "
                        f"({why}): it was edited by hand, so how {path.name} was built is unknown; put back the "
                        f"state.json saved with it, or pass model_dir= another folder.")
    network = Net.Discriminator(input_norm=trained["d_input_bn"], norm=trained["d_norm"], mbstd=trained["mbstd"])
    return _loaded(Checkpoint, network, path)


def _folder(UserError, model_dir):
    folder = _Path(model_dir or _REPOSITORY / "Model")
    if not folder.is_dir():
        raise UserError(f"model_dir={str(folder)!r} is not a folder; pass model_dir= the folder Train.py saved "
                        f"a model into.")
    return folder


def _check_readable(UserError, path):
    """Refuse a missing or unreadable weights file in a caller's terms, before Checkpoint.load_weights
    would in a script user's."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise UserError(f"{path} does not exist; pass model_dir= a folder that holds {path.name}, such as "
                        f"one Train.py saved a model into.")
    try:
        with safe_open(str(path), "np") as weights:
            weights.keys()
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable safetensors file ({error}): it is damaged or was never one; "
                        f"put back a good copy of it, or pass model_dir= another folder.") from None


def _loaded(Checkpoint, network, path):
    """network with the weights of path (checked by _check_readable), in evaluation mode."""
    Checkpoint.load_weights(network, path)  # what is left to refuse, weights of another network, says so in plain words
    network.eval()
    return network
