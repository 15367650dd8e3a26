"""Avatar Studio: draw, edit and morph avatars in the browser with a trained generator.

    pip install -r requirements-studio.txt   # Gradio, once
    python Studio.py                         # serves http://127.0.0.1:7860 with Model/
    python Studio.py --port 8000 --model-dir Model
    python Studio.py --time-redraws 20       # how long a slider move takes to redraw, then exit

Three tabs. Avatars: a grid of avatars for a seed (the first of Run.py's avatars.png for the same
--seed); clicking one opens it in the editor. Editor: that face, large, with one slider per latent
value, the dimensions that change the picture most first, each labelled with what it was measured
to change; its 96x96 original downloads as a PNG. Morph: the 20 faces between two avatars, as a
PNG strip and an animated GIF.

It draws as Run.py does, with G_ema.safetensors where the model folder has it (else G.safetensors;
--raw-g takes G in any case), through the exported CPU generator, which draws on one thread of
its own whichever of Gradio's threads asks, so memory stays bounded under load (docs/studio.md). What
each dimension changes is measured once per weights file, as Figures.py measures it, and cached
beside the exported generator. The page is served on 127.0.0.1 alone, without share links or
Gradio's analytics; seeds are 0 to 2**63 - 1, as every script's --seed.

The drawing is plain functions (avatar_grid, redraw, morph_strip) that the tests call
without a browser; Handlers and page() only connect them to Gradio.
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

import argparse
import hashlib
import io
import os
import secrets
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import Checkpoint
import Drawing
import Files
from Files import UserError
from Net import Z_DIM

GRID_ROWS, GRID_COLUMNS = 2, 8
VIEW_SCALE = 4         # the editor shows a face at 4x, each pixel a sharp 4x4 block
MORPH_STEPS = 20       # faces in a morph, both ends included
GIF_FRAME_MS = 100
SLIDERS_IN_VIEW = 12   # the dimensions that change the picture most; the rest fold away
MEASUREMENT = "studio-v1"  # in the cache's file names: change it when measure_dimensions changes
CACHED_MEASUREMENTS = 16  # measurement files the cache keeps, the most recently used (about 5 kB each)
DOWNLOADS_KEPT = 256   # files offered for download kept on disk, the newest (Gradio serves its own copy)
FILES_KEPT_SECONDS = 86400  # Gradio's copies of the pictures it served are deleted a day after


# ------------------------------------------------------------------------------------- drawing

def parse_seed(text):
    """A seed typed into the page, as a number from 0 to 2**63 - 1 like every script's --seed; a
    ValueError says what a seed is."""
    try:
        return Utils.seed_number(str(text).strip())
    except argparse.ArgumentTypeError:
        raise ValueError(f"A seed is {Utils.SEED_RANGE}, such as 7; {str(text).strip()!r} is not.") from None


def within_limits(count, most, what):
    """count, refused with a ValueError beyond the most a script may draw at once (Utils.MAX_*)."""
    if not 1 <= count <= most:
        raise ValueError(f"{what} holds 1 to {most} faces, not {count}")
    return count


def seed_noise(seed, count):
    """The noise of a seed's avatars: the first `count` vectors Run.py draws for the same --seed."""
    return Utils.random_noise(np.random.default_rng(seed), count)


def avatar_grid(generator, seed, count=GRID_ROWS * GRID_COLUMNS):
    """A seed's avatars: their noise [count, 72] and faces, uint8 [count, 96, 96, 3]."""
    noise = seed_noise(seed, within_limits(count, Utils.MAX_GRID_SIDE ** 2, "a grid"))
    return noise, Drawing.generate(generator, noise)


def enlarge(picture, scale=VIEW_SCALE):
    """Nearest-neighbour upscaling: a browser's smooth scaling would blur the pixels the model drew."""
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


def slider_vector(values, order):
    """The latent vector of the sliders' values, given in the page's order of dimensions."""
    vector = np.zeros(Z_DIM, np.float32)
    vector[list(order)] = values
    return vector


def redraw(generator, vector):
    """One face, uint8 [96, 96, 3]: what a slider move draws."""
    return Drawing.generate(generator, np.asarray(vector, np.float32)[None])[0]


def morph_noise(start, end, steps=MORPH_STEPS):
    """`steps` vectors from start to end in equal steps, both ends included. The noise is uniform in
    the cube [0, 1]^72, so every vector on the straight line between two of its points is noise
    the generator was trained on."""
    weights = np.linspace(0, 1, steps, dtype=np.float32)[:, None]
    return (1 - weights) * start + weights * end


def morph_strip(generator, start, end, steps=MORPH_STEPS):
    """The morph's faces, uint8 [steps, 96, 96, 3]."""
    steps = within_limits(steps, Utils.MAX_STEPS, "a morph")
    return Drawing.generate(generator, morph_noise(np.asarray(start), np.asarray(end), steps))


def png_bytes(picture):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def time_redraws(generator, count):
    """The median seconds of `count` redraws as a slider move makes them: one face drawn, enlarged,
    and its PNG encoded for the download."""
    rng, seconds = np.random.default_rng(0), []
    for _ in range(count):
        started = time.perf_counter()
        face = redraw(generator, Utils.random_noise(rng, 1)[0])
        enlarge(face)
        png_bytes(face)
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


# --------------------------------------------------------------------------- the 72 dimensions

@dataclass(frozen=True)
class Dimension:
    index: int
    change: float  # mean absolute pixel change from 0.05 to 1.00, in grey levels (0 to 255)
    label: str


def measure_dimensions(generator, seed=0):
    """What moving each dimension from 0.05 to 1.00 changes, averaged over the base vectors
    Figures.py measures the hair on (so the studio names the dimensions of the README's
    pictures): the mean absolute pixel change in grey levels, the hair's brightness change
    (0 to 1) and its hue change (degrees, weighted by how colourful the hair is)."""
    base = Utils.random_noise(Drawing.measuring_rng(seed), Drawing.MEASURE_BASES)
    ends = Drawing.dimension_ends(generator, base)
    change = np.abs(ends[:, 1].astype(np.float32) - ends[:, 0]).mean(axis=(1, 2, 3, 4))
    shade, hue = Drawing.hair_changes(ends)
    return {"change": change.tolist(), "hair_shade": shade.tolist(), "hair_hue": hue.tolist()}


def cached_measurements(generator, weights):
    """measure_dimensions of the weights file, measured once and then read from the cache."""
    path = Drawing.inference_cache() / f"{MEASUREMENT}-{Drawing.file_digest(weights)}.json"
    if path.exists():
        Files.mark_used(path)
        return Files.read_json(path)
    print("Measuring what each of the 72 latent dimensions changes (once per weights file)...", flush=True)
    measured = measure_dimensions(generator)
    try:
        Files.write_json(measured, path)
        Files.keep_most_recent(list(path.parent.glob("studio-*.json")), CACHED_MEASUREMENTS)
    except OSError as error:  # a full disk or a cache that is not a folder costs only the next start's time
        warnings.warn(f"the measurements could not be cached in {path.parent} ({error.strerror or error}), so "
                      f"the next start measures again.", stacklevel=2)
    return measured


def dimensions_by_change(measured):
    """Every dimension, the one that changes the picture most first, labelled with what it changes:
    the hair's shade or colour for the dimension that changes each most (as Figures.py chooses
    them), else only how much it changes the picture."""
    change, shade, hue = (np.asarray(measured[key]) for key in ("change", "hair_shade", "hair_hue"))
    shade_dim, colour_dim = Drawing.hair_dimensions(shade, hue)
    picture = {dim: f"the picture by {change[dim]:.1f} grey levels" for dim in range(Z_DIM)}
    label = {dim: f"z{dim}: changes {picture[dim]}" for dim in range(Z_DIM)}
    label[shade_dim] = f"z{shade_dim}: hair shade (its brightness by {shade[shade_dim]:.3f} of 1; {picture[shade_dim]})"
    label[colour_dim] = f"z{colour_dim}: hair colour (its hue by {hue[colour_dim]:.1f} degrees; {picture[colour_dim]})"
    order = np.argsort(-change, kind="stable")
    return [Dimension(int(dim), float(change[dim]), label[dim]) for dim in order]


# ---------------------------------------------------------------------------------------- the page

class Downloads:
    """The files the page offers for download, in a folder of their own; each is named by its
    content, so two visitors never overwrite each other's. Gradio serves a copy of its own, so
    only the newest `keep` stay here."""

    def __init__(self, folder, keep=DOWNLOADS_KEPT):
        self.folder, self.keep = Path(folder), keep

    def save(self, stem, suffix, data):
        path = self.folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}{suffix}"
        if path.exists():
            Files.mark_used(path)
        else:
            Files.write_bytes(path, data)
            Files.keep_most_recent(list(self.folder.glob("[!.]*")), self.keep)  # not another's file being written
        return str(path)


CSS = "img { image-rendering: pixelated; }"  # thumbnails too: sharp pixels, never a smooth blur


class Handlers:
    """What the page's events call: the drawing functions above, with the page's values in and out."""

    def __init__(self, generator, order, downloads):
        self.generator, self.order, self.downloads = generator, order, downloads

    def faces_of_seed(self, text):
        noise, faces = avatar_grid(self.generator, seed_or_error(text))
        return noise, list(faces)

    def show(self, vector):
        """The editor's face for a vector: large, and its 96x96 PNG to download."""
        face = redraw(self.generator, vector)
        return vector, enlarge(face), self.downloads.save("avatar", ".png", png_bytes(face))

    def edit(self, vector):
        """The editor set to a vector: the sliders at its values, its face shown."""
        return (*[float(vector[dim]) for dim in self.order], *self.show(vector))

    def slid(self, *values):
        return self.show(slider_vector(values, self.order))

    def random_face(self):
        return self.edit(Utils.random_noise(np.random.default_rng(), 1)[0])

    def end_face(self, vector):
        """A morph's end: its vector, and its face at twice the size."""
        return vector, enlarge(redraw(self.generator, vector), 2)

    def end_of_seed(self, text):
        return self.end_face(seed_noise(seed_or_error(text), 1)[0])

    def morph(self, start, end):
        """The strip of the morph, and its PNG and GIF to download."""
        faces = morph_strip(self.generator, start, end)
        strip = Utils.tile_images(faces, 1, len(faces))
        return (strip, self.downloads.save("morph", ".png", png_bytes(strip)),
                self.downloads.save("morph", ".gif", Utils.gif_bytes(faces, GIF_FRAME_MS)))


def seed_or_error(text):
    """parse_seed, its sentence shown in the page."""
    import gradio as gr

    try:
        return parse_seed(text)
    except ValueError as error:
        raise gr.Error(str(error), print_exception=False) from None


def page(generator, dimensions, downloads, drawn_with):
    """The Gradio page: three tabs laid out, and their events wired to the Handlers."""
    import gradio as gr

    draw = Handlers(generator, [dim.index for dim in dimensions], downloads)
    with gr.Blocks(title="Avatar Studio", analytics_enabled=False,
                   delete_cache=(FILES_KEPT_SECONDS // 24, FILES_KEPT_SECONDS)) as app:
        gr.Markdown(f"# Avatar Studio\nPick an avatar, edit it, morph two. Drawn by {drawn_with}.")
        with gr.Tabs(selected="avatars") as tabs:
            with gr.Tab("Avatars", id="avatars"):
                seed, draw_button, new_seed, grid, grid_noise = avatars_tab()
            with gr.Tab("Editor", id="editor"):
                chosen, face, large, download, randomise, reset, sliders = editor_tab(dimensions)
            with gr.Tab("Morph", id="morph"):
                ends, morphed = morph_tab()
        shown = [face, large, download]
        editor = [*sliders, *shown]  # what Handlers.edit returns, in its order
        wire_avatars(draw, seed, draw_button, new_seed, grid, grid_noise, [chosen, *editor, tabs])
        wire_editor(draw, chosen, sliders, shown, randomise, reset)
        wire_morph(draw, ends, face, morphed)
        wire_page_load(app, draw, seed, grid, grid_noise, [chosen, *editor], ends, morphed)
    return app


def wire_avatars(draw, seed, draw_button, new_seed, grid, grid_noise, picked):
    """The Avatars tab's events: a seed's grid drawn, a new seed, and a click on a face that opens
    it in the editor (picked: the chosen noise, the editor's components and the tabs)."""
    import gradio as gr

    def pick(noise, event: gr.SelectData):
        vector = noise[event.index]
        return (vector, *draw.edit(vector), gr.Tabs(selected="editor"))

    gr.on([draw_button.click, seed.submit], draw.faces_of_seed, seed, [grid_noise, grid])
    new_seed.click(lambda: str(secrets.randbelow(2**31)), None, seed) \
        .then(draw.faces_of_seed, seed, [grid_noise, grid])
    grid.select(pick, grid_noise, picked)


def wire_editor(draw, chosen, sliders, shown, randomise, reset):
    """The Editor tab's events: a slider redraws the face; Randomise and Reset move every slider."""
    import gradio as gr

    editor = [*sliders, *shown]
    gr.on([slider.input for slider in sliders], draw.slid, sliders, shown, trigger_mode="always_last",
          show_progress="hidden")
    randomise.click(draw.random_face, None, editor)
    reset.click(draw.edit, chosen, editor)


def wire_morph(draw, ends, face, morphed):
    """The Morph tab's events: an end taken from a seed or from the editor's face redraws the morph."""
    import gradio as gr

    starts = [end.vector for end in ends]
    for end in ends:
        gr.on([end.take_seed.click, end.seed.submit], draw.end_of_seed, end.seed, [end.vector, end.face]) \
            .then(draw.morph, starts, morphed)
        end.take_face.click(draw.end_face, face, [end.vector, end.face]).then(draw.morph, starts, morphed)


def wire_page_load(app, draw, seed, grid, grid_noise, edited, ends, morphed):
    """What an opened page shows at once: the seed's grid, its first face in the editor (edited:
    the chosen noise and the editor's components) and the morph between the two ends' seeds."""
    starts = [end.vector for end in ends]
    app.load(draw.faces_of_seed, seed, [grid_noise, grid]) \
        .then(lambda noise: (noise[0], *draw.edit(noise[0])), grid_noise, edited) \
        .then(draw.end_of_seed, ends[0].seed, [ends[0].vector, ends[0].face]) \
        .then(draw.end_of_seed, ends[1].seed, [ends[1].vector, ends[1].face]) \
        .then(draw.morph, starts, morphed)


def avatars_tab():
    import gradio as gr

    with gr.Row():
        seed = gr.Textbox("0", label="Seed", elem_id="seed", scale=3)
        draw = gr.Button("Draw", elem_id="draw", scale=1)
        new_seed = gr.Button("New seed", elem_id="new-seed", scale=1)
    grid = gr.Gallery(label="Click an avatar to edit it", columns=GRID_COLUMNS, rows=GRID_ROWS, height="auto",
                      format="png", allow_preview=False, object_fit="contain", buttons=[], elem_id="grid")
    return seed, draw, new_seed, grid, gr.State()


def editor_tab(dimensions):
    """The face and its download on the left; on the right one slider per dimension, those that
    change the picture most in view and the others folded away."""
    import gradio as gr

    def slider(dim):
        return gr.Slider(0, 1, step=0.001, label=dim.label, buttons=[], elem_id=f"z{dim.index}")

    with gr.Row():
        with gr.Column():
            large = gr.Image(label=f"Enlarged {VIEW_SCALE}x", format="png", interactive=False, buttons=[],
                             elem_id="face")
            download = gr.DownloadButton("Download the 96x96 PNG", elem_id="download")
            with gr.Row():
                randomise = gr.Button("Randomise", elem_id="randomise")
                reset = gr.Button("Reset", elem_id="reset")
        with gr.Column():
            sliders = [slider(dim) for dim in dimensions[:SLIDERS_IN_VIEW]]
            with gr.Accordion(f"The other {len(dimensions) - SLIDERS_IN_VIEW} dimensions", open=False,
                              elem_id="other-dimensions"):
                sliders += [slider(dim) for dim in dimensions[SLIDERS_IN_VIEW:]]
    return gr.State(), gr.State(), large, download, randomise, reset, sliders


@dataclass
class MorphEnd:
    seed: object
    take_seed: object
    take_face: object
    face: object
    vector: object


def morph_tab():
    import gradio as gr

    ends = []
    with gr.Row():
        for name, default in (("from", "1"), ("to", "2")):
            with gr.Column():
                seed = gr.Textbox(default, label=f"{name.capitalize()}: seed", elem_id=f"{name}-seed")
                with gr.Row():
                    take_seed = gr.Button("The seed's first avatar", elem_id=f"{name}-take-seed")
                    take_face = gr.Button("The edited face", elem_id=f"{name}-take-face")
                face = gr.Image(format="png", interactive=False, show_label=False, buttons=[], elem_id=f"{name}-face")
                ends.append(MorphEnd(seed, take_seed, take_face, face, gr.State()))
    strip = gr.Image(format="png", interactive=False, show_label=False, buttons=[], elem_id="strip")
    with gr.Row():
        png = gr.DownloadButton("Download the strip (PNG)", elem_id="strip-png")
        gif = gr.DownloadButton("Download the animation (GIF)", elem_id="strip-gif")
    return ends, [strip, png, gif]


def error_page(message):
    """What the page shows when there is nothing to draw with: the reason, in one sentence."""
    import gradio as gr

    with gr.Blocks(title="Avatar Studio", analytics_enabled=False) as app:
        gr.Markdown(f"# Avatar Studio\n\n**The studio cannot draw:** {message}", elem_id="status")
    return app


# -------------------------------------------------------------------------------------- the script

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=Utils.HelpFormatter)
    Checkpoint.add_generator_flags(parser)
    parser.add_argument("--port", type=int, default=7860, help="port of the page on 127.0.0.1")
    parser.add_argument("--time-redraws", type=int, metavar="N",
                        help="time N redraws as a slider move makes them, print the median and exit")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be from 1 to 65535, not {args.port}")
    if args.time_redraws is not None and args.time_redraws < 1:
        parser.error(f"--time-redraws must be at least 1, not {args.time_redraws}")
    return args


def import_gradio():
    # Before Gradio loads: no version check or usage report leaves this machine.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the studio needs Gradio, which requirements.txt leaves out to keep the first "
                        "install small: run `pip install -r requirements-studio.txt` first.") from None


def serve(app, port):
    import logging

    import gradio as gr

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's check that its own server answers
    try:
        app.launch(server_name="127.0.0.1", server_port=port, share=False, ssr_mode=False, pwa=False,
                   mcp_server=False, quiet=True, prevent_thread_lock=True, footer_links=[],
                   theme=gr.themes.Default(), css=CSS)
    except OSError:
        raise UserError(f"port {port} of 127.0.0.1 is taken; stop what uses it, or pass another --port.") \
            from None
    print(f"Avatar Studio: http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
    app.block_thread()


def main(argv=None):
    args = parse_args(argv)
    Utils.choose_device("cpu")  # one face at a time: the exported CPU generator answers fastest
    if args.time_redraws:
        generator = Drawing.load_generator_for_inference(args.model_dir, args.raw_g)
        median = time_redraws(generator, args.time_redraws)
        print(f"A redraw took {median * 1000:.1f} ms (median of {args.time_redraws}).")
        return
    import_gradio()
    try:
        generator = Drawing.load_generator_for_inference(args.model_dir, args.raw_g)
    except UserError as error:
        print(f"error: {error} The page says so too.", flush=True)
        serve(error_page(str(error)), args.port)
        return
    weights = Checkpoint.generator_file(args.model_dir, args.raw_g)
    dimensions = dimensions_by_change(cached_measurements(generator, weights))
    with tempfile.TemporaryDirectory(prefix="avatar-studio-") as folder:
        drawn_with = Checkpoint.drawn_with(args.model_dir, args.raw_g)
        serve(page(generator, dimensions, Downloads(folder), drawn_with), args.port)


if __name__ == "__main__":
    Utils.run_main(main)
