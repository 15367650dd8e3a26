// The avatar page: the generator exported by Export.py (model/G_ema.onnx), run by onnxruntime-web's
// WASM backend in the visitor's browser. A face is 72 numbers; the generator turns a batch of them,
// [N, 72], into pictures [N, 3, 96, 96] in [-1, 1], which become pixels as Run.py makes them:
// round((x + 1) * 127.5), clamped to 0..255.
//
// The editor's face is kept in the address, #z=0.123,0.456,... (and the morph's far face in &to=),
// so that a link draws the same faces again. Noise drawn here is uniform in [0, 1), as Run.py draws
// it, with three decimals, so that the link holds exactly the numbers the face was drawn from; a
// link or a slider may hold any number from 0 to 1 (Run.py's strips end at 1).

const MODEL = "model/G_ema.onnx";
const FACTS = "model/G_ema.json";
const RUNTIME = "node_modules/onnxruntime-web/dist/";
const NOISE_LENGTH = 72;
const SIZE = 96;
const GRID_FACES = 16;
const MORPH_STEPS = 10;
const DECIMALS = 3;

// The page's state.
let session = null;  // the ONNX model, loaded by onnxruntime-web
let running = Promise.resolve();  // the last draw asked for: a session must not run twice at once
const editor = { noise: null, busy: false, again: false };  // see redrawEditor
let morphFar = null;  // the noise of the morph's last face

// What the tests and benchmarks/browser.py read: milliseconds, measured here.
const timings = { firstGrid: null, grid: [], editor: [], morph: [] };
window.avatarTimings = timings;

class PageError extends Error {}  // a sentence for the visitor, shown instead of the page

// ------------------------------------------------------------------------------------ the generator

async function loadGenerator() {
  if (typeof ort === "undefined") {
    throw new PageError('onnxruntime-web is missing: run "npm ci" in the web folder, then reload this page.');
  }
  ort.env.logLevel = "error";
  ort.env.wasm.wasmPaths = new URL(RUNTIME, document.baseURI).href;
  // Several threads need a cross-origin isolated page (special server headers); one always works.
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

  const model = await fetch(MODEL).catch(() => null);
  if (!model || !model.ok) {
    throw new PageError(`The generator ${MODEL} is missing: run "python Export.py" in the repository, ` +
                        "then reload this page.");
  }
  const runtime = await fetch(RUNTIME + "ort-wasm-simd-threaded.wasm", { method: "HEAD" }).catch(() => null);
  if (!runtime || !runtime.ok) {
    throw new PageError(`onnxruntime-web's WebAssembly files are missing from ${RUNTIME}: run "npm ci" in the ` +
                        "web folder, or copy them as docs/browser.md says, then reload this page.");
  }
  try {
    session = await ort.InferenceSession.create(new Uint8Array(await model.arrayBuffer()),
                                                { executionProviders: ["wasm"] });
  } catch (error) {
    console.error(error);
    throw new PageError(`The generator ${MODEL} cannot be read, so it may be damaged: run "python Export.py" ` +
                        "again, then reload this page.");
  }
  const facts = await fetch(FACTS).then((answer) => (answer.ok ? answer.json() : {})).catch(() => ({}));
  if (session.inputNames.length !== 1 || (facts.noise_length ?? NOISE_LENGTH) !== NOISE_LENGTH) {
    throw new PageError(`The model in ${MODEL} does not take ${NOISE_LENGTH} numbers: it was not exported by ` +
                        "this project's Export.py.");
  }
  return facts;
}

// Pictures (ImageData) for a list of noise vectors, drawn in one batch, after the draws asked before.
function draw(noises) {
  const result = running.then(() => drawNow(noises));
  running = result.catch(() => {});
  return result;
}

async function drawNow(noises) {
  const input = new Float32Array(noises.length * NOISE_LENGTH);
  noises.forEach((noise, i) => input.set(noise, i * NOISE_LENGTH));
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", input, [noises.length, NOISE_LENGTH]) };
  const output = (await session.run(feeds))[session.outputNames[0]];
  if (output.dims.join("x") !== `${noises.length}x3x${SIZE}x${SIZE}`) {
    throw new PageError(`The model in ${MODEL} draws pictures of ${output.dims.slice(1).join("x")}, not ` +
                        `3x${SIZE}x${SIZE}: it was not exported by this project's Export.py.`);
  }
  return noises.map((_, i) => toPicture(output.data, i));
}

// Face i of a [N, 3, 96, 96] batch as RGBA pixels. A Uint8ClampedArray rounds half to even and
// clamps to 0..255 as it stores, which is what Run.py's numpy does.
function toPicture(values, i) {
  const plane = SIZE * SIZE;
  const start = i * 3 * plane;
  const picture = new ImageData(SIZE, SIZE);
  for (let pixel = 0; pixel < plane; pixel++) {
    for (let channel = 0; channel < 3; channel++) {
      picture.data[4 * pixel + channel] = (values[start + channel * plane + pixel] + 1) * 127.5;
    }
    picture.data[4 * pixel + 3] = 255;
  }
  return picture;
}

async function timed(list, count, work) {
  const start = performance.now();
  const result = await work();
  list.push((performance.now() - start) / count);
  return result;
}

// ------------------------------------------------------------------------------------------ noise

function randomNoise() {
  const scale = 10 ** DECIMALS;
  return Float32Array.from({ length: NOISE_LENGTH }, () => Math.floor(Math.random() * scale) / scale);
}

// The shortest decimals that read back as exactly the same float32 values (9 digits always do).
function noiseText(noise) {
  return Array.from(noise, (value) => {
    for (let digits = 1; digits < 9; digits++) {
      const text = String(Number(value.toPrecision(digits)));
      if (Math.fround(Number(text)) === value) return text;
    }
    return String(Number(value.toPrecision(9)));
  }).join(",");
}

// A noise vector from a link's text: 72 decimal numbers from 0 to 1, else null.
function parseNoise(text) {
  const values = (text || "").split(",");
  const fits = values.length === NOISE_LENGTH && values.every((value) =>
    /^\s*(\d+\.?\d*|\.\d+)(e-?\d+)?\s*$/i.test(value) && Number(value) >= 0 && Number(value) <= 1);
  return fits ? Float32Array.from(values, Number) : null;
}

// The faces a link asks for; a part that is there but not 72 numbers from 0 to 1 is `bad`.
function readAddress() {
  const fields = new URLSearchParams(location.hash.slice(1));
  const face = parseNoise(fields.get("z"));
  const far = parseNoise(fields.get("to"));
  return { face, far, bad: (fields.has("z") && !face) || (fields.has("to") && !far) };
}

function writeAddress() {
  const address = `#z=${noiseText(editor.noise)}&to=${noiseText(morphFar)}`;
  history.replaceState(null, "", address);
  document.getElementById("link").href = address;
}

// ------------------------------------------------------------------------------------------ parts

function canvasFor(picture) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = SIZE;
  canvas.getContext("2d").putImageData(picture, 0, 0);
  return canvas;
}

function counted(part) {
  document.body.dataset[part] = Number(document.body.dataset[part] || 0) + 1;
}

async function drawGrid() {
  const noises = Array.from({ length: GRID_FACES }, randomNoise);
  const pictures = await timed(timings.grid, GRID_FACES, () => draw(noises));
  document.getElementById("grid").replaceChildren(...pictures.map((picture, i) => {
    const canvas = canvasFor(picture);
    canvas.title = "Edit this face";
    canvas.addEventListener("click", () => editFace(noises[i]).catch(showError));
    return canvas;
  }));
  counted("gridDraws");
}

// The editor redraws as a slider moves; while a redraw runs, later moves wait and only the last is drawn.
async function redrawEditor() {
  if (editor.busy) {
    editor.again = true;
    return;
  }
  editor.busy = true;
  try {
    do {
      editor.again = false;
      const [picture] = await timed(timings.editor, 1, () => draw([editor.noise]));
      document.getElementById("face").getContext("2d").putImageData(picture, 0, 0);
      counted("editorDraws");
    } while (editor.again);
  } finally {
    editor.busy = false;
  }
  writeAddress();
}

function makeSliders() {
  const sliders = document.getElementById("sliders");
  for (let i = 0; i < NOISE_LENGTH; i++) {
    const label = document.createElement("label");
    const slider = Object.assign(document.createElement("input"), {
      type: "range", min: 0, max: 1, step: 10 ** -DECIMALS, id: `z${i}`,
    });
    slider.addEventListener("input", () => {
      editor.noise[i] = Number(slider.value);
      redrawEditor().catch(showError);
    });
    slider.addEventListener("change", () => drawMorph().catch(showError));  // once the slider is let go
    const number = document.createElement("span");
    number.textContent = i;
    label.append(number, slider);
    sliders.append(label);
  }
}

// The editor and the morph start from this face.
function editFace(noise) {
  editor.noise = Float32Array.from(noise);
  editor.noise.forEach((value, i) => { document.getElementById(`z${i}`).value = value; });
  return Promise.all([redrawEditor(), drawMorph()]);
}

async function drawMorph() {
  const noises = Array.from({ length: MORPH_STEPS }, (_, step) => {
    const t = step / (MORPH_STEPS - 1);
    return editor.noise.map((value, i) => (1 - t) * value + t * morphFar[i]);
  });
  const pictures = await timed(timings.morph, MORPH_STEPS, () => draw(noises));
  document.getElementById("morph").replaceChildren(...pictures.map(canvasFor));
  counted("morphDraws");
  writeAddress();
}

function downloadFace() {
  document.getElementById("face").toBlob((blob) => {
    const link = Object.assign(document.createElement("a"), {
      href: URL.createObjectURL(blob), download: "avatar.png",
    });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }, "image/png");
}

// A link pasted into the address bar of an open page: its good parts are drawn, the rest stays.
function followAddress() {
  const address = readAddress();
  if (address.bad) say(`${BAD_LINK}, so the faces shown stay.`);
  morphFar = address.far || morphFar;
  return editFace(address.face || editor.noise);
}

// ------------------------------------------------------------------------------------------ page

const BAD_LINK = "The link's faces are not 72 numbers from 0 to 1 each";

function say(text, isError = false) {
  if (document.body.dataset.state === "error") return;  // the sentence that stopped the page stays
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function showError(error) {
  console.error(error);
  say(error instanceof PageError ? error.message : "Drawing failed; reload the page to try again.", true);
  document.body.dataset.state = "error";
}

function listen() {
  document.getElementById("new-faces").addEventListener("click", () => drawGrid().catch(showError));
  document.getElementById("random-face").addEventListener("click", () => editFace(randomNoise()).catch(showError));
  document.getElementById("download").addEventListener("click", downloadFace);
  document.getElementById("morph-again").addEventListener("click", () => {
    morphFar = randomNoise();
    drawMorph().catch(showError);
  });
  document.getElementById("morph-steps").textContent = MORPH_STEPS;
  // The page's own address updates (history.replaceState) fire no hashchange: this is the visitor's.
  window.addEventListener("hashchange", () => followAddress().catch(showError));
}

async function start() {
  const facts = await loadGenerator();
  const address = readAddress();
  editor.noise = address.face || randomNoise();
  morphFar = address.far || randomNoise();
  makeSliders();
  listen();
  await drawGrid();
  timings.firstGrid = performance.now();  // since the page began to load
  await editFace(editor.noise);
  const threads = ort.env.wasm.numThreads;
  const step = facts.step ? `step ${facts.step.toLocaleString("en")}, ` : "";
  say(`The generator (${step}exported by Export.py) draws here with onnxruntime-web on ${threads} ` +
      `thread${threads > 1 ? "s" : ""}.` + (address.bad ? ` ${BAD_LINK}, so random faces are shown instead.` : ""));
  document.body.dataset.state = "ready";
}

window.addEventListener("unhandledrejection", (event) => showError(event.reason));
start().catch(showError);
