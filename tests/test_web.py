"""Export.py and the static page in web/: the exported ONNX model draws what Paddle draws, and the
page, served from a folder on 127.0.0.1 and driven in headless Chromium, draws, edits, morphs,
downloads and links faces with the pixels Run.py draws. The tests skip where paddle2onnx,
onnxruntime, Chromium, Selenium or web/node_modules (npm ci) is missing, except in CI, which
installs them all."""
import Utils

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import paddle
import pytest
from PIL import Image

import Checkpoint
import Drawing
import Export
from conftest import LOCAL, ROOT, downloaded, elements, free_port, require, run_script, wait
from Files import UserError
from Net import Generator

MODEL = ROOT / "Model"
WEB = ROOT / "web"
PAGE_FILES = ("index.html", "app.js", "style.css")


def require_exporter():
    require(importlib.util.find_spec("paddle2onnx") and importlib.util.find_spec("onnxruntime"),
            "paddle2onnx and onnxruntime are not installed (pip install -r requirements-web.txt)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped model exported as README.md says, into a folder of the test's."""
    require_exporter()
    folder = tmp_path_factory.mktemp("export") / "model"
    result = run_script("Export.py", "--output", folder)
    return folder, result.stdout


@pytest.fixture(scope="module")
def generator():
    """What Run.py draws with."""
    Utils.choose_device("cpu")
    return Drawing.load_generator_for_inference(MODEL)


def shipped_step():
    return json.loads((MODEL / "state.json").read_text())["global_step"]


# -------------------------------------------------------------------------------------- Export.py

@pytest.mark.slow
def test_the_onnx_model_draws_what_paddle_draws(exported):
    import onnxruntime

    folder, stdout = exported
    facts = json.loads((folder / Export.FACTS_FILE).read_text())
    assert facts["step"] == shipped_step() and facts["noise_length"] == 72 and facts["weights"] == "G_ema.safetensors"
    assert facts["weights_sha256"] == hashlib.sha256((MODEL / "G_ema.safetensors").read_bytes()).hexdigest()
    assert 0 <= facts["largest_difference"] <= 1e-4 and f"on {Export.CHECKED_FACES} noise vectors" in stdout
    session = onnxruntime.InferenceSession(str(folder / Export.ONNX_FILE), providers=["CPUExecutionProvider"])
    generator = Checkpoint.load_generator(MODEL)
    for count in (1, 5):  # the editor's single face and a batch, on vectors other than the export's own check
        noise = Utils.random_noise(np.random.default_rng(count + 10), count)
        with paddle.no_grad():
            expected = generator(paddle.to_tensor(noise)).numpy()
        assert np.abs(session.run(None, {"noise": noise})[0] - expected).max() <= 1e-4


def test_an_export_that_draws_otherwise_than_paddle_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    require_exporter()
    paddle.seed(0)
    another = Generator()  # freshly initialised: its faces are nothing like the shipped model's
    another.eval()
    to_onnx = Export.to_onnx
    monkeypatch.setattr(Export, "to_onnx", lambda generator: to_onnx(another))
    with pytest.raises(UserError, match="away from Paddle's generator .* so nothing was written"):
        Export.main(["--model-dir", str(MODEL), "--output", str(tmp_path / "model")])
    assert list((tmp_path / "model").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing folder", "damaged weights"])
def test_a_missing_or_damaged_model_is_one_sentence_and_no_file(tmp_path, damage):
    model = tmp_path / "Model"
    if damage == "damaged weights":
        model.mkdir()
        (model / "G_ema.safetensors").write_bytes(b"not a safetensors file")
    result = run_script("Export.py", "--model-dir", model, "--output", tmp_path / "out", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and str(model) in result.stderr
    assert not (tmp_path / "out" / Export.ONNX_FILE).exists()


# ---------------------------------------------------------------------------------------- the page

@pytest.fixture(scope="module")
def site(exported, tmp_path_factory):
    """web/'s page in a folder of its own, as on a static host: the page's files, onnxruntime-web
    (web/node_modules, which npm ci brings) and the exported model."""
    require((WEB / "node_modules" / "onnxruntime-web").is_dir(),
            "web/node_modules is missing (cd web && npm ci)")
    return site_folder(tmp_path_factory.mktemp("site"), model=exported[0])


def site_folder(folder, model=None, onnx_bytes=None, runtime=True):
    for name in PAGE_FILES:
        shutil.copy(WEB / name, folder)
    if runtime:
        (folder / "node_modules").symlink_to(WEB / "node_modules")
    if model:
        shutil.copytree(model, folder / "model")
    if onnx_bytes is not None:
        (folder / "model").mkdir()
        (folder / "model" / Export.ONNX_FILE).write_bytes(onnx_bytes)
    return folder


@contextmanager
def serving(folder):
    """Python's static file server on a free port of 127.0.0.1, as README.md serves the page."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", str(folder), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 30
        while True:
            try:
                LOCAL.open(address, timeout=5).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield address
    finally:
        process.terminate()
        process.wait()


@pytest.fixture(scope="module")
def served(site):
    with serving(site) as address:
        yield address


def open_page(driver, address, fragment=""):
    """Load the page afresh (a new fragment alone would not reload it) and wait until it has drawn
    its grid, its editor and its morph, or said why it cannot."""
    driver.get("about:blank")
    driver.get(address + fragment)
    wait(driver, lambda: state(driver) in ("ready", "error"), "page drawn, or a sentence")


def state(driver):
    return driver.execute_script("return document.body.dataset.state")


def draws(driver, part):
    return int(driver.execute_script(f"return document.body.dataset.{part}Draws || 0"))


def pixels(driver, canvas):
    """The RGB pixels of a canvas of the page (a CSS selector, or an element)."""
    script = ("const canvas = typeof arguments[0] === 'string' ? document.querySelector(arguments[0]) : arguments[0];"
              "return Array.from(canvas.getContext('2d').getImageData(0, 0, 96, 96).data);")
    return np.array(driver.execute_script(script, canvas), np.uint8).reshape(96, 96, 4)[..., :3]


def status(driver):
    return elements(driver, "#status")[0].text


def noise_text(noise):
    return ",".join(f"{value:.3f}" for value in noise)


def three_decimals(rng):
    """A noise vector as the page draws them: values of three decimals, in [0, 1)."""
    return np.float32(np.floor(rng.random(72) * 1000) / 1000)


def mean_difference(a, b):
    return np.abs(a.astype(int) - b.astype(int)).mean()


@pytest.mark.slow
def test_a_linked_face_is_drawn_with_run_pys_pixels(served, browser, generator):
    rng = np.random.default_rng(5)
    face, far = three_decimals(rng), three_decimals(rng)
    open_page(browser, served, f"#z={noise_text(face)}&to={noise_text(far)}")
    assert state(browser) == "ready", status(browser)
    assert f"step {shipped_step():,}" in status(browser) and "onnxruntime-web" in status(browser)
    expected = Drawing.generate(generator, np.stack([face, far]))
    assert mean_difference(pixels(browser, "#face"), expected[0]) <= 2  # within 2/255 a channel, on average
    grid = elements(browser, "#grid canvas")
    assert len(grid) == 16 and all(pixels(browser, canvas).std() > 10 for canvas in grid[:3])  # faces, not blanks
    morph = elements(browser, "#morph canvas")
    assert len(morph) == 10
    assert mean_difference(pixels(browser, morph[0]), expected[0]) <= 2
    assert mean_difference(pixels(browser, morph[-1]), expected[1]) <= 2


@pytest.mark.slow
def test_a_slider_redraws_the_face_and_the_link(served, browser, generator):
    face = three_decimals(np.random.default_rng(6))
    open_page(browser, served, f"#z={noise_text(face)}")
    before, drawn = pixels(browser, "#face"), draws(browser, "editor")
    browser.execute_script("const slider = document.getElementById('z7');"
                           "slider.value = '0.950'; slider.dispatchEvent(new Event('input'));")
    wait(browser, lambda: draws(browser, "editor") > drawn, "a redraw after the slider moved")
    face[7] = np.float32(0.95)
    assert mean_difference(pixels(browser, "#face"), Drawing.generate(generator, face[None])[0]) <= 2
    assert mean_difference(pixels(browser, "#face"), before) > 1
    link = elements(browser, "#link")[0].get_attribute("href")
    assert link.split("#z=")[1].split("&")[0].split(",")[7] == "0.95"
    shown = pixels(browser, "#face")
    open_page(browser, link)  # the link draws the same face again
    assert np.array_equal(pixels(browser, "#face"), shown)


def test_slider_moves_during_a_redraw_wait_and_only_the_last_is_drawn(served, browser, generator):
    face = three_decimals(np.random.default_rng(7))
    open_page(browser, served, f"#z={noise_text(face)}")
    drawn = draws(browser, "editor")
    browser.execute_script("const slider = document.getElementById('z3');"
                           "for (const value of ['0.1', '0.3', '0.5', '0.7', '0.9']) {"
                           "  slider.value = value; slider.dispatchEvent(new Event('input')); }")
    wait(browser, lambda: browser.execute_script("return location.hash").split("&")[0].split(",")[3] == "0.9",
         "the last move in the link")
    assert draws(browser, "editor") - drawn == 2  # the first move's face, then the last's
    face[3] = np.float32(0.9)
    assert mean_difference(pixels(browser, "#face"), Drawing.generate(generator, face[None])[0]) <= 2


def test_a_link_that_is_not_72_numbers_from_0_to_1_is_said_and_random_faces_are_drawn(served, browser):
    for bad in ("0.5," * 70 + "0.5", "0.5," * 71 + "1.5", "0.5," * 71 + "NaN", "0.5," * 71):
        open_page(browser, served, f"#z={bad}")
        assert state(browser) == "ready" and "not 72 numbers from 0 to 1 each, so random faces" in status(browser)
        shown = browser.execute_script("return location.hash")[3:].split("&")[0].split(",")
        assert len(shown) == 72 and all(0 <= float(value) < 1 for value in shown)


def test_a_link_pasted_into_an_open_page_draws_its_faces(served, browser, generator):
    rng = np.random.default_rng(8)
    face, far = three_decimals(rng), three_decimals(rng)
    open_page(browser, served)
    drawn = draws(browser, "morph")
    browser.execute_script(f"location.hash = 'z={noise_text(face)}&to={noise_text(far)}'")
    wait(browser, lambda: draws(browser, "morph") > drawn, "the pasted link's morph")
    expected = Drawing.generate(generator, np.stack([face, far]))
    wait(browser, lambda: mean_difference(pixels(browser, "#face"), expected[0]) <= 2, "the pasted link's face")
    assert mean_difference(pixels(browser, elements(browser, "#morph canvas")[-1]), expected[1]) <= 2


def test_the_page_works_from_a_subfolder_and_asks_nothing_of_any_other_place(site, browser, tmp_path):
    (tmp_path / "avatars").symlink_to(site)  # as a static host serves a project's page under /name/
    with serving(tmp_path) as address:
        browser.get_log("performance")  # what earlier tests asked
        open_page(browser, address + "avatars/")
        assert state(browser) == "ready", status(browser)
        requests = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    urls = {event["params"]["request"]["url"] for event in requests if event["method"] == "Network.requestWillBeSent"}
    assert f"{address}avatars/model/G_ema.onnx" in urls
    assert all(url.startswith((address + "avatars/", "data:", "blob:")) or url == "about:blank" for url in urls), \
        sorted(urls)


def test_a_grid_face_goes_to_the_editor_and_new_faces_are_new(served, browser):
    open_page(browser, served)
    grid = elements(browser, "#grid canvas")
    chosen, drawn = pixels(browser, grid[3]), draws(browser, "editor")
    grid[3].click()
    wait(browser, lambda: draws(browser, "editor") > drawn, "the clicked face in the editor")
    assert mean_difference(pixels(browser, "#face"), chosen) <= 1  # one engine, batches of 16 and of 1
    grid_draws = draws(browser, "grid")
    elements(browser, "#new-faces")[0].click()
    wait(browser, lambda: draws(browser, "grid") > grid_draws, "new faces")
    assert mean_difference(pixels(browser, elements(browser, "#grid canvas")[3]), chosen) > 5


def test_another_face_redraws_the_morph(served, browser):
    open_page(browser, served)
    last, drawn = pixels(browser, elements(browser, "#morph canvas")[-1]), draws(browser, "morph")
    elements(browser, "#morph-again")[0].click()
    wait(browser, lambda: draws(browser, "morph") > drawn, "a new morph")
    morph = elements(browser, "#morph canvas")
    assert mean_difference(pixels(browser, morph[0]), pixels(browser, "#face")) <= 1  # it still starts at the face
    assert mean_difference(pixels(browser, morph[-1]), last) > 5


@pytest.mark.slow
def test_download_saves_the_face_as_a_png(served, browser):
    open_page(browser, served)
    path = downloaded(browser, ".png", "#download")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (96, 96)
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels(browser, "#face"))


@pytest.mark.parametrize("trouble, sentence", [
    ("no model", 'The generator model/G_ema.onnx is missing: run "python Export.py" in the repository, then '
                 'reload this page.'),
    ("damaged model", 'The generator model/G_ema.onnx cannot be read, so it may be damaged: run "python Export.py" '
                      'again, then reload this page.'),
    ("no onnxruntime-web", 'onnxruntime-web is missing: run "npm ci" in the web folder, then reload this page.'),
    ("no WebAssembly files", "onnxruntime-web's WebAssembly files are missing from node_modules/onnxruntime-web/"
                             'dist/: run "npm ci" in the web folder, or copy them as docs/browser.md says, then '
                             'reload this page.')])
def test_what_the_page_lacks_is_said_in_one_sentence(site, browser, tmp_path, trouble, sentence):
    model = site / "model" if trouble in ("no onnxruntime-web", "no WebAssembly files") else None
    damaged = b"\x08\x07not an onnx model" * 100 if trouble == "damaged model" else None
    folder = site_folder(tmp_path, model=model, onnx_bytes=damaged, runtime=trouble not in ("no onnxruntime-web",
                                                                                         "no WebAssembly files"))
    if trouble == "no WebAssembly files":  # the script alone, as when a host was given one file of three
        dist = folder / "node_modules" / "onnxruntime-web" / "dist"
        dist.mkdir(parents=True)
        shutil.copy(WEB / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.js", dist)
    with serving(folder) as address:
        open_page(browser, address)
        assert state(browser) == "error" and status(browser) == sentence
        assert not elements(browser, "main")[0].is_displayed()


def test_the_page_opened_from_disk_says_it_needs_a_server(site, browser):
    browser.get(f"file://{site / 'index.html'}")
    wait(browser, lambda: state(browser) == "error", "a sentence")
    assert status(browser) == ('This page draws only when a web server serves it: run "python -m http.server -d '
                               'web 8000" in the repository, then open http://127.0.0.1:8000.')


@pytest.mark.slow
def test_the_speed_benchmark_runs_and_writes_every_measurement(tmp_path):
    require_exporter()
    require((WEB / "node_modules" / "onnxruntime-web").is_dir(), "web/node_modules is missing (cd web && npm ci)")
    require(importlib.util.find_spec("selenium") and shutil.which("chromium") and shutil.which("chromedriver"),
            "Selenium, Chromium and its driver are needed (pip install -r requirements-dev.txt; apt-get install "
            "chromium chromium-driver)")
    output = tmp_path / "browser.json"
    result = run_script("benchmarks/browser.py", "--loads", 1, "--grids", 2, "--moves", 2, "--repeats", 1,
                        "--json", output, "--screenshot", tmp_path / "page.png")
    results = json.loads(output.read_text())
    page = results["page"]
    assert len(page["first_grid_ms"]) == 1 and len(page["editor_ms"]) == 2 and len(page["grid_ms_per_avatar"]) == 2
    assert all(value > 0 for value in page["editor_ms"] + page["morph_ms_per_avatar"])
    assert set(results["run_py"]["1"]["ms_per_avatar"]) == {"1", "10", "16", "64"}
    with Image.open(tmp_path / "page.png") as picture:
        assert picture.width >= 1000
    assert "editor redraw" in result.stdout
