"""Shared fixtures: the repository on sys.path, the shared face data (or faces made here when
../shared/data is absent), and one tiny trained checkpoint for the tests that need a model."""
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The project's face fixtures beside its own checkout; a user's clone has none, and tests fall back
# on faces drawn here (draw_faces) or skip. AVATARS_SHARED_DATA points elsewhere: CI sets it to a
# missing folder to run the tests as a user's clone does.
SHARED_DATA = Path(os.environ.get("AVATARS_SHARED_DATA") or ROOT.parent / "shared" / "data")
sys.path.insert(0, str(ROOT))

import Utils  # noqa: E402,F401  sets up the CPU for Paddle, so it comes first

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from PIL import Image  # noqa: E402


def run_script(*args, check=True, timeout=600, **kwargs):
    """Run one of the project's scripts as a user would, from the repository root."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def start_script(*args, **kwargs):
    """Start one of the project's scripts in a process of its own, from the repository root, that
    Ctrl-C (SIGINT) can stop, with its output piped."""
    # Where pytest itself runs as a shell's background job, SIGINT is ignored, and a child would
    # inherit that; with a handler here, the child starts with the default, as from a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


def require_shared(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test fixtures only exist beside the project's own checkout")
    return path


def require(available, reason):
    """Skip a test whose optional tool (a browser, Gradio, VisualDL) is missing, with the reason;
    but in CI, which installs them all (.ci/run), a missing tool fails the test instead."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test, and .ci/run installs what it needs")
    pytest.skip(reason)


def draw_faces(count, seed=0):
    """count cartoon faces, 96x96 uint8 [count, 96, 96, 3], for when the shared faces are not there.
    Like the real ones they share a layout (hair framing a face, two eyes, a mouth) and differ in
    colours, sizes and places, with sharp line art, so that the metrics' tests can tell them from
    noise, from blurred copies and from each other as they do real faces."""
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)

    def colour(low=0, high=256):
        return tuple(int(value) for value in rng.integers(low, high, 3))

    faces = []
    for _ in range(count):
        picture = Image.new("RGB", (96, 96), colour(120))
        draw = ImageDraw.Draw(picture)
        x, y, size = (int(value) for value in (rng.integers(-6, 7), rng.integers(-4, 5), rng.integers(-5, 6)))
        hair, skin, iris = colour(0, 200), (int(rng.integers(220, 256)), int(rng.integers(180, 225)),
                                            int(rng.integers(150, 205))), colour(0, 200)
        draw.ellipse((10 + x - size, 4 + y - size, 86 + x + size, 92 + y), fill=hair, outline=(30, 20, 20), width=2)
        draw.ellipse((22 + x - size, 24 + y, 74 + x + size, 88 + y + size), fill=skin, outline=(60, 30, 30), width=2)
        draw.polygon([(18 + x, 20 + y), (78 + x, 20 + y), (70 + x, 44 + y + int(rng.integers(0, 8))),
                      (48 + x, 34 + y), (26 + x, 44 + y + int(rng.integers(0, 8)))], fill=hair)
        eye_w, eye_h, eye_y = int(rng.integers(6, 10)), int(rng.integers(6, 12)), 54 + y + int(rng.integers(-3, 4))
        for eye_x in (36 + x, 60 + x):
            draw.ellipse((eye_x - eye_w, eye_y - eye_h, eye_x + eye_w, eye_y + eye_h), fill=(250, 250, 250),
                         outline=(20, 10, 10), width=2)
            draw.ellipse((eye_x - eye_w + 3, eye_y - eye_h + 3, eye_x + eye_w - 3, eye_y + eye_h), fill=iris)
            draw.ellipse((eye_x - 2, eye_y - 1, eye_x + 2, eye_y + 4), fill=(10, 10, 10))
        mouth_y, mouth_w = 76 + y + int(rng.integers(-2, 3)), int(rng.integers(3, 8))
        draw.arc((48 + x - mouth_w, mouth_y - 3, 48 + x + mouth_w, mouth_y + 3), 0, 180, fill=(150, 40, 50), width=2)
        faces.append(np.asarray(picture.filter(ImageFilter.GaussianBlur(0.5))))
    return np.stack(faces)


def make_faces(folder, count, seed=0):
    """A folder of count cartoon faces (draw_faces) as PNG files, for when the shared faces are not there."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, face in enumerate(draw_faces(count, seed)):
        Image.fromarray(face).save(folder / f"{number}.png")
    return folder


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory):
    """12 face images: the first 12 of ../shared/data/faces when present, else made here."""
    folder = tmp_path_factory.mktemp("faces")
    shared = SHARED_DATA / "faces"
    if shared.is_dir():
        for path in sorted(shared.glob("*.jpg"))[:12]:
            (folder / path.name).symlink_to(path)
        return folder
    return make_faces(folder, 12)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, faces_dir):
    """A checkpoint after one epoch of Train.py on 8 faces (2 batches of 4), and its outputs."""
    run = tmp_path_factory.mktemp("trained")
    result = run_script("Train.py", "--data", faces_dir, "--limit", 8, "--batch-size", 4, "--epochs", 1,
                        "--seed", 5, "--sample-every", 1, "--model-dir", run / "Model", "--output", run / "Output",
                        "--device", "cpu")
    return run, result


@pytest.fixture
def on_cpu():
    """This process on the CPU for one test (on a GPU machine Paddle starts on the GPU)."""
    before = paddle.device.get_device()
    Utils.choose_device("cpu")
    yield
    paddle.set_device(before)


# ----------------------------------------------------------------------------------- the browser
# Headless Chromium driven by Selenium, for the studio's tests and the static page's (test_web.py).

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-proxy-server", "--window-size=1280,1000",
                  # a name outside 127.0.0.1 resolves to nothing, so the page cannot reach the internet
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to 127.0.0.1, never a proxy


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a fresh profile, downloading into a folder of the test's."""
    require(importlib.util.find_spec("selenium"), "Selenium is not installed (pip install -r requirements-dev.txt)")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    require(chromium and driver_path, "Chromium and its driver are not installed (apt-get install chromium "
                                      "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder = tmp_path_factory.mktemp("browser")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={folder / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.downloads = folder / "downloads"
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(driver.downloads)})
    yield driver
    driver.quit()


def wait(driver, condition, what, timeout=60):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda _: condition())
    except TimeoutException:
        page = driver.find_element("tag name", "body").text
        pytest.fail(f"no {what} after {timeout} s; the page says:\n{page[:2000]}")


def elements(driver, css):
    return driver.find_elements("css selector", css)


def downloaded(driver, suffix, button):
    """Click a download button and return the file the browser saved, once it is whole: Chromium
    may show the final name before the last bytes are written."""
    before = set(driver.downloads.glob(f"*{suffix}"))
    elements(driver, button)[0].click()
    files = wait(driver, lambda: set(driver.downloads.glob(f"*{suffix}")) - before, f"downloaded {suffix} file")
    path = files.pop()
    sizes = []

    def settled():
        sizes.append(path.stat().st_size)
        partial = list(driver.downloads.glob("*.crdownload"))
        return not partial and len(sizes) >= 3 and sizes[-1] == sizes[-2] == sizes[-3] > 0

    wait(driver, settled, f"whole {suffix} file")
    return path
