"""One source for every number: the figures README.md, the model card and the manual quote by hand
are checked against the files and code they come from (Res/metrics.json, Model/state.json,
Model/evaluations.json, Recipe.py's table, Net.py, Utils.py's limits), so that a new model or a
changed default cannot leave the prose behind."""
import Utils

import json
import re

import numpy as np
import pytest

import Recipe
from conftest import ROOT
from Net import Discriminator, Generator

README = (ROOT / "README.md").read_text()
MODEL_CARD = (ROOT / "Model" / "README.md").read_text()
METRICS = json.loads((ROOT / "Res" / "metrics.json").read_text())
STATE = json.loads((ROOT / "Model" / "state.json").read_text())


def table_row(text, first_cell):
    """The cells of the Markdown table row whose first cell is first_cell."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r}")


def one_decimal(*values):
    return " / ".join(f"{value:.1f}" for value in values)


FLOOR = json.loads((ROOT / "Model" / "evaluations.json").read_text())["floor"]


@pytest.mark.parametrize("page", [README, MODEL_CARD], ids=["README.md", "Model/README.md"])
def test_the_metric_tables_are_res_metrics_json_and_the_floor_evaluations_json(page):
    scales = [f"swd_{side}px" for side in (96, 48, 24, 12)]
    row = table_row(page, "SWD x1e3, 96 / 48 / 24 / 12 px")
    assert row[1:3] == [one_decimal(*(METRICS[key] for key in scales)), one_decimal(*(FLOOR[key] for key in scales))]
    row = table_row(page, "SWD x1e3, mean")
    assert row[1].strip("*") == one_decimal(METRICS["swd_mean"]) and row[2] == one_decimal(FLOOR["swd_mean"])
    row = table_row(page, next(cell for cell in ("MS-SSIM between random pairs (lower: more varied)",
                                                 "MS-SSIM, random pairs") if f"| {cell} |" in page))
    assert row[1].strip("*") == f"{METRICS['ms_ssim_candidates']:.3f}"
    assert row[2].startswith(f"{METRICS['ms_ssim_real']:.3f} ")
    row = table_row(page, "median distance to the nearest training face")
    assert row[1] == one_decimal(METRICS["nearest_median_candidates"])
    assert row[2].startswith(one_decimal(METRICS["nearest_median_real"]))
    row = table_row(page, next(cell for cell in ("spread (per-pixel standard deviation)",
                                                 "spread (per-pixel standard deviation, grey levels)")
                               if f"| {cell} |" in page))
    assert row[1] == one_decimal(METRICS["spread_candidates"])
    assert row[2].startswith(one_decimal(METRICS["spread_real"]))


def test_the_shipped_step_is_the_one_state_json_and_the_metrics_record():
    step, batch = STATE["global_step"], STATE["hyper_parameters"]["batch_size"]
    assert METRICS["step"] == step
    assert f"{step:,} batches of {batch} ({step * batch:,} faces seen)" in README
    assert f"drawn by G_ema at step {step:,}" in README
    assert f"| **this one** | {step:,} |" in MODEL_CARD and f"- **Training**: {step:,} batches of {batch}" in MODEL_CARD


def test_the_evaluation_history_ends_with_the_readmes_figures():
    last = json.loads((ROOT / "Model" / "evaluations.json").read_text())["evaluations"][-1]
    assert last["step"] == STATE["global_step"]
    assert round(last["swd_mean"], 1) == round(METRICS["swd_mean"], 1)
    assert round(last["ms_ssim_candidates"], 3) == round(METRICS["ms_ssim_candidates"], 3)


def test_the_readmes_hyper_parameter_table_is_recipe_pys():
    flags = {"lr": "--lr", "beta1": "--beta1", "batch_size": "--batch-size", "g_steps": "--g-steps",
             "init": "--init", "ema": "--ema", "augment": "--augment", "loss": "--loss", "d_norm": "--d-norm",
             "r1": "--r1", "r1_every": "--r1-every", "d_lr": "--d-lr", "mode_seeking": "--mode-seeking",
             "top_k": "--top-k", "cooldown": "--cooldown", "epochs": None}
    switches = {"d_input_bn": "`--d-input-bn` / `--no-d-input-bn`", "flip": "`--flip` / `--no-flip`",
                "mbstd": "`--mbstd` / `--no-mbstd`"}
    for name, hp in Recipe.HYPER_PARAMETERS.items():
        if name == "seed":
            continue
        cells = table_row(README, switches.get(name) or f"`{flags[name]}`")
        assert written(cells[1]) == hp.default, (name, cells[1], hp.default)
        original = "`--lr`" if hp.original is None else hp.original  # D at G's rate
        assert cells[2] == original if isinstance(original, str) and original.startswith("`") \
            else written(cells[2]) == original, (name, cells[2], hp.original)


def written(cell):
    """A table cell's value as Python reads the flag's."""
    if cell in ("on", "off"):
        return cell == "on"
    try:
        return int(cell) if re.fullmatch(r"-?[0-9]+", cell) else float(cell)
    except ValueError:
        return cell


def count(network):
    return sum(int(np.prod(p.shape)) for p in network.parameters() if not p.stop_gradient)


@pytest.mark.parametrize("page", ["README.md", "docs/networks.md"])
def test_parameter_counts_are_nets(page):
    text = (ROOT / page).read_text()
    for network in (Generator(), Discriminator(input_norm=False), Discriminator(input_norm=True)):
        assert f"{count(network):,}" in text, (page, type(network).__name__, count(network))


def test_run_pys_limits_in_the_manual_are_utils():
    text = (ROOT / "docs" / "generating.md").read_text()
    side = Utils.MAX_GRID_SIDE
    assert f"`--grid` is at most {side}x{side} ({side * side:,} faces), `--steps` at most {Utils.MAX_STEPS}" in text
    last = f"avatar_{Utils.MAX_COUNT - 1:04d}.png"
    assert f"`--count` at most\n{Utils.MAX_COUNT:,} (`avatar_0000.png` to `{last}`)" in text


def test_the_record_of_every_evaluation_is_evaluations_json():
    evaluations = {entry["step"]: entry
                   for entry in json.loads((ROOT / "Model" / "evaluations.json").read_text())["evaluations"]}
    record = (ROOT / "docs" / "experiments" / "training-runs.md").read_text()
    rows = [[cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
            for line in record.splitlines() if re.match(r"\| \**[0-9][0-9,]* *\** \|", line)]
    assert len(rows) == len(evaluations)
    for step, _, swd, scales, ms_ssim, *_ in rows:
        entry = evaluations[int(step.replace(",", ""))]
        assert (swd, ms_ssim) == (f"{entry['swd_mean']:.1f}", f"{entry['ms_ssim_candidates']:.3f}"), step
        assert scales == one_decimal(*(entry[f"swd_{side}px"] for side in (96, 48, 24, 12))), step
