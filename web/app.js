// The avatar page: the generator exported by Export.py (model/G_ema.onnx), run by onnxruntime-web's
// WASM backend in the visitor's browser. A face is 72 numbers in [0, 1); the generator turns a batch
// of them, [N, 72], into pictures [N, 3, 96, 96] in [-1, 1], which become pixels as Run.py makes them:
// round((x + 1) * 127.5), clamped to 0..255.
//
// The editor's face is kept in the address, #z=0.123,0.456,... (and the morph's far face in &to=),
// so that a link draws the same face again. Noise drawn here has three decimals, so that the link
// holds exactly the numbers the face was drawn from.

const MODEL = "model/G_ema.onnx";
const FACTS = "model/G_ema.json";
const NOISE_LENGTH = 72;
const SIZE = 96;
const GRID_FACES = 16;
const MORPH_STEPS = 10;
const DECIMALS = 3;

// What the tests and benchmarks/browser.py read: milliseconds, measured here.
const timings = { firstGrid: null, grid: [], editor: [], morph: [] };
window.avatarTimings = timings;

class PageError extends Error {}  // a sentence for the visitor, shown instead of the page

// ------------------------------------------------------------------------------------ the generator

let session = null;
let running = Promise.resolve();  // one run at a time: a session must not run twice at once

async function loadGenerator() {
  if (typeof ort === "undefined") {
    throw new PageError('onnxruntime-web is missing: run "npm ci" in the web folder, then reload this page.');
  }
  ort.env.logLevel = "error";
  ort.env.wasm.wasmPaths = new URL("node_modules/onnxruntime-web/dist/", document.baseURI).href;
  // Several threads need a cross-origin isolated page (special server headers); one always works.
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

  const response = await fetch(MODEL).catch(() => null);
  if (!response || !response.ok) {
    throw new PageError(`The generator ${MODEL} is missing: run "python Export.py" in the repository, ` +
                        "then reload this page.");
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  } catch (error) {
    throw new PageError(`The generator ${MODEL} cannot be read, so it may be damaged: run "python Export.py" ` +
                        "again, then reload this page.");
  }
  const facts = await fetch(FACTS).then((answer) => (answer.ok ? answer.json() : {})).catch(() => ({}));
  if (facts.noise_length !== undefined && facts.noise_length !== NOISE_LENGTH) {
    throw new PageError(`The generator in ${MODEL} takes ${facts.noise_length} numbers, not ${NOISE_LENGTH}: ` +
                        "it was not exported by this project's Export.py.");
  }
  return facts;
}

// Pictures (ImageData) for a list of noise vectors, drawn in one batch.
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
    throw new PageError(`The generator in ${MODEL} draws pictures of ${output.dims.slice(1).join("x")}, not ` +
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

// The shortest decimals that read back as exactly the same float32 values.
function noiseText(noise) {
  return Array.from(noise, (value) => {
    for (let digits = 1; digits < 9; digits++) {
      const text = String(Number(value.toPrecision(digits)));
      if (Math.fround(Number(text)) === value) return text;
    }
    return String(value);
  }).join(",");
}

// A noise vector from a link's text, or null where it is not 72 numbers from 0 to 1.
function parseNoise(text) {
  const values = (text || "").split(",").map(Number);
  const fits = values.length === NOISE_LENGTH && values.every((value) => value >= 0 && value <= 1);
  return fits ? Float32Array.from(values) : null;
}

function readAddress() {
  const fields = new URLSearchParams(location.hash.slice(1));
  return { face: fields.get("z"), far: fields.get("to") };
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

async function drawGrid() {
  const noises = Array.from({ length: GRID_FACES }, randomNoise);
  const pictures = await timed(timings.grid, GRID_FACES, () => draw(noises));
  const grid = document.getElementById("grid");
  grid.replaceChildren(...pictures.map((picture, i) => {
    const canvas = canvasFor(picture);
    canvas.dataset.noise = noiseText(noises[i]);
    canvas.title = "Edit this face";
    canvas.addEventListener("click", () => editFace(noises[i]));
    return canvas;
  }));
  document.body.dataset.gridDraws = Number(document.body.dataset.gridDraws || 0) + 1;
}

// The editor redraws as a slider moves; while a redraw runs, later moves wait and only the last is drawn.
const editor = { noise: randomNoise(), busy: false, again: false };

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
      document.body.dataset.editorDraws = Number(document.body.dataset.editorDraws || 0) + 1;
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
    const number = document.createElement("span");
    number.textContent = i;
    label.append(number, slider);
    sliders.append(label);
  }
}

function editFace(noise) {
  editor.noise = Float32Array.from(noise);
  editor.noise.forEach((value, i) => { document.getElementById(`z${i}`).value = value; });
  return Promise.all([redrawEditor(), drawMorph()]).catch(showError);
}

let morphFar = randomNoise();

async function drawMorph() {
  const noises = Array.from({ length: MORPH_STEPS }, (_, step) => {
    const t = step / (MORPH_STEPS - 1);
    return editor.noise.map((value, i) => (1 - t) * value + t * morphFar[i]);
  });
  const pictures = await timed(timings.morph, MORPH_STEPS, () => draw(noises));
  document.getElementById("morph").replaceChildren(...pictures.map(canvasFor));
  document.body.dataset.morphDraws = Number(document.body.dataset.morphDraws || 0) + 1;
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

// ------------------------------------------------------------------------------------------ page

function say(text, isError = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function showError(error) {
  const sentence = error instanceof PageError ? error.message
    : `Drawing failed (${error && error.message ? error.message : error}); reload the page to try again.`;
  say(sentence, true);
  document.body.dataset.state = "error";
}

async function start() {
  const facts = await loadGenerator();
  const address = readAddress();
  const face = parseNoise(address.face);
  morphFar = parseNoise(address.far) || morphFar;
  makeSliders();
  document.body.dataset.state = "ready";
  await drawGrid();
  timings.firstGrid = performance.now();  // since the page began to load
  await editFace(face || randomNoise());
  const threads = ort.env.wasm.numThreads;
  const step = facts.step ? `step ${facts.step.toLocaleString("en")}, ` : "";
  say(`The generator (${step}exported by Export.py) draws here with onnxruntime-web on ${threads} ` +
      `thread${threads > 1 ? "s" : ""}.` +
      (address.face && !face ? " The link's face was not 72 numbers from 0 to 1, so a random face is shown." : ""));

  document.getElementById("new-faces").addEventListener("click", () => drawGrid().catch(showError));
  document.getElementById("random-face").addEventListener("click", () => editFace(randomNoise()));
  document.getElementById("download").addEventListener("click", downloadFace);
  document.getElementById("morph-again").addEventListener("click", () => {
    morphFar = randomNoise();
    drawMorph().catch(showError);
  });
  document.getElementById("morph-steps").textContent = MORPH_STEPS;
  window.addEventListener("hashchange", () => {
    const linked = parseNoise(readAddress().face);
    if (linked && noiseText(linked) !== noiseText(editor.noise)) editFace(linked);
  });
}

window.addEventListener("unhandledrejection", (event) => showError(event.reason));
start().catch(showError);
