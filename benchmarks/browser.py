"""How fast the static page (web/) draws in headless Chromium, beside Run.py's drawing on the same machine.

    python benchmarks/browser.py                          # a table on stdout, the numbers in benchmarks/browser.json
    python benchmarks/browser.py --screenshot Res/web.png

It exports the generator of --model-dir with Export.py into a folder of its own, serves the page
from there on 127.0.0.1 (Python's static server, as README.md does) and drives headless Chromium
with Selenium. The page measures itself (window.avatarTimings in web/app.js) with
performance.now():
1. time to first grid: from the start of the page's load to its 16 avatars drawn, a fresh
   browser profile each time, so that nothing is cached;
2. milliseconds per avatar of the grid ("New faces", 16 at once) and of the morph (10 at once);
3. an editor redraw: one slider moved, one face drawn, each move waited for.
Run.py's generator (Drawing.load_generator_for_inference, Paddle's inference engine with oneDNN)
is timed drawing the same batch sizes, with 1 thread (as the page's WASM) and with Run.py's
default. Needs web/node_modules (cd web && npm ci), Selenium and Debian's chromium and chromedriver.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1280,1000",
                  "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
sys.path.insert(0, str(ROOT))
from Files import within  # noqa: E402  (no Paddle: the parent process only drives the browser)

at_least_one = within(int, 1)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="Model")
    parser.add_argument("--loads", type=at_least_one, default=5, help="page loads timed for the first grid")
    parser.add_argument("--grids", type=at_least_one, default=10, help="grids of 16 timed")
    parser.add_argument("--moves", type=at_least_one, default=50, help="editor redraws timed")
    parser.add_argument("--repeats", type=at_least_one, default=20, help="Run.py batches timed at each size")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "browser.json"))
    parser.add_argument("--screenshot", help="also save a picture of the page here")
    parser.add_argument("--paddle-worker", type=int, help=argparse.SUPPRESS)  # threads, for Run.py's timing
    return parser.parse_args()


def main():
    args = parse_args()
    if args.paddle_worker:
        print(json.dumps(time_run_py(args.model_dir, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as folder:
        site = make_site(Path(folder), args.model_dir)
        with serving(site) as address:
            page = time_page(address, args)
    run_py = {threads: json.loads(subprocess.run(
        [sys.executable, __file__, "--model-dir", args.model_dir, "--repeats", str(args.repeats),
         "--paddle-worker", str(threads)], cwd=ROOT, check=True, capture_output=True, text=True,
        env=dict(os.environ, OMP_NUM_THREADS=str(threads))).stdout.splitlines()[-1])
        for threads in (1, os.cpu_count())}
    results = {"page": page, "run_py": run_py, "cpu": cpu_name(), "cpu_count": os.cpu_count()}
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)


def make_site(folder, model_dir):
    """The page, onnxruntime-web and a fresh export, as a static host would hold them."""
    for name in ("index.html", "app.js", "style.css"):
        shutil.copy(ROOT / "web" / name, folder)
    (folder / "node_modules").symlink_to(ROOT / "web" / "node_modules")
    subprocess.run([sys.executable, "Export.py", "--model-dir", model_dir, "--output", folder / "model"],
                   cwd=ROOT, check=True, capture_output=True)
    return folder


class serving:
    def __init__(self, folder):
        self.folder = folder

    def __enter__(self):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process = subprocess.Popen([sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d",
                                         str(self.folder), str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                LOCAL.open(address, timeout=5).read()
                return address
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the static server did not start")

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait()


def browser(profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def wait_for(driver, script, timeout=120):
    deadline = time.time() + timeout
    while not driver.execute_script(script):
        if time.time() > deadline:
            raise RuntimeError(f"the page did not get there: {script}")
        time.sleep(0.01)


def time_page(address, args):
    first_grids = []
    for load in range(args.loads):
        with tempfile.TemporaryDirectory() as profile:
            driver = browser(profile)
            try:
                driver.get(address)
                wait_for(driver, "return document.body.dataset.morphDraws > 0")
                first_grids.append(driver.execute_script("return window.avatarTimings.firstGrid"))
                if load == 0 and args.screenshot:  # the page as a visitor first sees it, morph included
                    driver.set_window_size(1280, 1240)
                    driver.save_screenshot(args.screenshot)
                if load == args.loads - 1:
                    return dict(first_grid_ms=first_grids, **time_drawing(driver, args))
            finally:
                driver.quit()


def time_drawing(driver, args):
    """Grids, editor redraws and morphs on a loaded page, each waited for before the next."""
    for _ in range(args.grids):
        before = int(driver.execute_script("return document.body.dataset.gridDraws"))
        driver.find_element("id", "new-faces").click()
        wait_for(driver, f"return document.body.dataset.gridDraws > {before}")
    for move in range(args.moves):
        before = int(driver.execute_script("return document.body.dataset.editorDraws"))
        value = (move * 37 % 1000) / 1000
        driver.execute_script(f"const slider = document.getElementById('z{move % 72}');"
                              f"slider.value = '{value}'; slider.dispatchEvent(new Event('input'));")
        wait_for(driver, f"return document.body.dataset.editorDraws > {before}")
    for _ in range(args.grids):
        before = int(driver.execute_script("return document.body.dataset.morphDraws"))
        driver.find_element("id", "morph-again").click()
        wait_for(driver, f"return document.body.dataset.morphDraws > {before}")
    timings = driver.execute_script("return window.avatarTimings")
    # The first of each is the page's own load: warm-up, left out.
    return {"grid_ms_per_avatar": timings["grid"][1:], "editor_ms": timings["editor"][1:],
            "morph_ms_per_avatar": timings["morph"][1:],
            "threads": driver.execute_script("return ort.env.wasm.numThreads"),
            "browser": driver.capabilities.get("browserVersion")}


def time_run_py(model_dir, repeats):
    """Milliseconds per avatar of Run.py's generator at the page's batch sizes (this process's threads)."""
    sys.path.insert(0, str(ROOT))
    import Utils  # sets up the CPU for Paddle, so it comes first

    import numpy as np

    import Drawing

    Utils.choose_device("cpu")
    generator = Drawing.load_generator_for_inference(model_dir)
    rng = np.random.default_rng(0)
    timings = {}
    for batch in (1, 10, 16, 64):
        Drawing.generate(generator, Utils.random_noise(rng, batch))  # warm-up
        times = []
        for _ in range(repeats):
            noise = Utils.random_noise(rng, batch)
            start = time.perf_counter()
            Drawing.generate(generator, noise)
            times.append((time.perf_counter() - start) * 1000 / batch)
        timings[str(batch)] = times
    return {"ms_per_avatar": timings, "threads": Utils.cpu_threads()}


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def print_table(results):
    page, run_py = results["page"], results["run_py"]
    median = statistics.median
    print(f"{results['cpu']}, {results['cpu_count']} cores; Chromium {page['browser']}, "
          f"onnxruntime-web WASM on {page['threads']} thread(s)")
    print(f"{'measurement':56s} {'median':>9s}")
    print(f"{'page: first grid after the page opens (ms)':56s} {median(page['first_grid_ms']):9.0f}")
    print(f"{'page: grid of 16, ms per avatar':56s} {median(page['grid_ms_per_avatar']):9.1f}")
    print(f"{'page: editor redraw, one face (ms)':56s} {median(page['editor_ms']):9.1f}")
    print(f"{'page: morph of 10, ms per avatar':56s} {median(page['morph_ms_per_avatar']):9.1f}")
    for threads, timing in run_py.items():
        for batch, times in timing["ms_per_avatar"].items():
            label = f"Run.py's generator, {threads} thread(s), batch {batch}, ms/avatar"
            print(f"{label:56s} {median(times):9.1f}")


if __name__ == "__main__":
    main()
