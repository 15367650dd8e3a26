"""Export the generator for browsers: Model/ -> web/model/G_ema.onnx, checked against Paddle.

    python Export.py                                  # Model/ -> web/model/G_ema.onnx and G_ema.json
    python Export.py --model-dir runs/x/Model --output site/model

The generator that Run.py draws with (G_ema.safetensors where the folder has it, else
G.safetensors; --raw-g takes G.safetensors) is converted in evaluation mode, BatchNorm using its
running statistics, by paddle2onnx, Paddle's own exporter. Before anything is written, onnxruntime
runs the ONNX model on 64 fixed noise vectors and its pictures are compared with Paddle's: where
any value differs by more than 1e-4 (on the output's range [-1, 1]) the export is refused and no
file is left behind. Beside the model, G_ema.json tells the page what it needs: the model's step,
the noise's length and range ([0, 1), as Run.py draws it), the output's range and the weights'
hash. web/index.html draws with the two files in any browser (docs/browser.md).
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

import argparse
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import paddle

import Checkpoint
import Drawing
import Files
from Drawing import EXPORT_TOLERANCE
from Files import UserError
from Net import Z_DIM

ONNX_FILE = "G_ema.onnx"  # what web/app.js loads, whichever weights it was exported from
FACTS_FILE = "G_ema.json"
OPSET = 13  # ONNX operator set: every operator the generator uses, and run by onnxruntime-web's WASM backend
CHECKED_FACES = 64  # noise vectors the ONNX model must draw as Paddle does


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Utils.HelpFormatter)
    Checkpoint.add_generator_flags(parser)
    parser.add_argument("--output", default="web/model", help=f"folder for {ONNX_FILE} and {FACTS_FILE}")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    Utils.choose_device("cpu")
    output = Files.writable_folder(args.output, "--output")
    generator = Checkpoint.load_generator(args.model_dir, args.raw_g)  # says in one sentence what is wrong
    model = to_onnx(generator)
    difference = largest_difference(model, generator)
    if not difference <= EXPORT_TOLERANCE:
        raise UserError(f"the ONNX model draws up to {difference:.2g} away from Paddle's generator (at most "
                        f"{EXPORT_TOLERANCE:g} is allowed), so nothing was written; please report it with your "
                        f"Paddle and paddle2onnx versions.")
    weights = Checkpoint.generator_file(args.model_dir, args.raw_g)
    Files.write_bytes(output / ONNX_FILE, model)
    Files.write_json(facts(generator, weights, difference), output / FACTS_FILE)
    print(f"Wrote {output / ONNX_FILE} ({len(model) / 1e6:.1f} MB) from "
          f"{Checkpoint.drawn_with(args.model_dir, args.raw_g)}; on {CHECKED_FACES} noise vectors it draws within "
          f"{difference:.1g} of Paddle.")


def to_onnx(generator):
    """The generator as the bytes of an ONNX model: saved as a static program by paddle.jit.save,
    then converted by paddle2onnx. Asked for bytes rather than a file, paddle2onnx skips its
    optional optimisers, one of which would install packages from the internet."""
    try:
        import paddle2onnx
    except ImportError:
        raise UserError("paddle2onnx is not installed; pip install -r requirements-web.txt") from None
    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder) / "generator"
        try:
            program = Drawing.save_static(generator, prefix)
            model = paddle2onnx.export(str(program), f"{prefix}.pdiparams", save_file=None, opset_version=OPSET)
        except Exception as error:  # noqa: BLE001  paddle2onnx logs its own errors, then fails in various ways
            raise UserError(f"paddle2onnx {paddle2onnx.__version__} could not convert the generator of Paddle "
                            f"{paddle.__version__} ({type(error).__name__}: {error}).") from None
    return without_unused_constants(model)


def without_unused_constants(model):
    """The ONNX model without the constants that nothing reads (paddle2onnx leaves a few behind),
    which onnxruntime would otherwise name in a warning on every page load. The operations are in
    order, so one walk back from the outputs finds every one that is needed."""
    import onnx

    model = onnx.load_from_string(model)
    graph = model.graph
    needed = {output.name for output in graph.output}
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            needed.update(node.input)
    for node in [node for node in graph.node if not needed.intersection(node.output)]:
        graph.node.remove(node)
    for constant in [constant for constant in graph.initializer if constant.name not in needed]:
        graph.initializer.remove(constant)
    return model.SerializeToString()


def largest_difference(model, generator):
    """The largest difference between what onnxruntime draws with model (ONNX bytes) and what
    Paddle's generator draws, over CHECKED_FACES fixed noise vectors."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed; pip install -r requirements-web.txt") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    noise = Utils.random_noise(np.random.default_rng(0), CHECKED_FACES)
    try:
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        drawn = session.run(None, {session.get_inputs()[0].name: noise})[0]
    except Exception as error:  # noqa: BLE001  onnxruntime's own error types differ between versions
        raise UserError(f"onnxruntime {onnxruntime.__version__} cannot run the exported model ({error}), so nothing "
                        f"was written; please report it with your Paddle and paddle2onnx versions.") from None
    with paddle.no_grad():
        expected = generator(paddle.to_tensor(noise)).numpy()
    return float(np.abs(drawn - expected).max()) if drawn.shape == expected.shape else float("inf")


def facts(generator, weights, difference):
    """G_ema.json: what the page needs to draw with the model, and what it was made from."""
    step = generator.stamp.get("global_step")  # a string in the weights' metadata; absent from unstamped files
    return {"step": int(step) if step else None,
            "weights": weights.name,
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "noise_length": Z_DIM,
            "noise_range": [0.0, 1.0],  # half-open, [0, 1): uniform noise, as Run.py draws it
            "output_range": [-1.0, 1.0],  # channels first, [N, 3, 96, 96]; a pixel is round((x + 1) * 127.5)
            "largest_difference": difference,
            "checked_faces": CHECKED_FACES,
            "opset": OPSET}


if __name__ == "__main__":
    Utils.run_main(main)
