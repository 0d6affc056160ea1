"""MkDocs hook: the documentation's tables that restate files of the checkout, generated when
the site is built, so that no measured number or search range is pasted into a page.

A page marks where a table goes with an HTML comment:

    <!-- benchmark: first_wave_cpu.json -->     a result file of benchmarks/results/
    <!-- search-spaces -->                      every search_spaces/*.yaml

and the build replaces it. A benchmark's table comes with the command that produces the file (the
usage line of the benchmark's own docstring, and the command the JSON recorded where it has one)
and the machine the JSON records. An unknown name, a missing file or a file without the fields
its table needs stops the build (mkdocs.yml names this hook; `mkdocs build --strict`).

The hook also puts the pictures that live beside the code (`PICTURES`) into the site, so that
pages can show them without a copy in docs/.
"""

from __future__ import annotations

import ast
import json
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
SPACES = REPO / "search_spaces"
MARKER = re.compile(r"<!--\s*(benchmark|search-spaces)(?::\s*(\S+))?\s*-->")
#: site path -> the file in the checkout it is copied from
PICTURES = {
    "img/search_efficiency.png": "benchmarks/results/search_efficiency.png",
}
NEVER = "—"


class BenchmarkError(Exception):
    """A marker the build cannot fill: one line naming the file and what is wrong."""


Table = list[list[str]]


def markdown_table(header: Sequence[str], rows: Table) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: float | None, digits: int = 2) -> str:
    return NEVER if value is None else f"{value:,.{digits}f}"


def amount(value: float) -> str:
    """A target or a measurement: whole numbers from 100 on, two decimals below."""
    return number(value, 0 if abs(value) >= 100 else 2)


def spread(values: Sequence[float], digits: int = 2) -> str:
    """'median (min–max)' of several values; the value alone when there is one."""
    if len(values) == 1:
        return number(values[0], digits)
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"{number(middle, digits)} ({number(low, digits)}–{number(high, digits)})"


# ---------------------------------------------------------------- the tables, one per benchmark


def first_wave(doc: Mapping[str, Any]) -> str:
    rows = [
        [
            str(run["trials"]),
            str(run["limit"]),
            str(run["proposed_before_any_result"]),
            str(run["most_running"]),
            number(run["wall_s"], 1),
        ]
        for run in doc["runs"]
    ]
    header = ["trials", "concurrency limit", "proposed before any result", "most running at once"]
    return markdown_table([*header, "wall (s)"], rows)


def gpu_trials(doc: Mapping[str, Any]) -> str:
    rows = []
    for run in doc["runs"]:
        summary = run["summary"]
        per_trial = summary["img_per_s_per_trial"]
        rows.append(
            [
                run["name"],
                summary["step"],
                str(run["processes"]),
                "on" if run["mps"] else "off",
                " / ".join(number(v, 0) for v in per_trial),
                number(summary["img_per_s"], 0),
                number(summary["steady_epoch_s"]),
                number(summary["startup_s"], 1),
            ]
        )
    header = ["run", "step", "processes", "MPS", "img/s per trial", "img/s total", "epoch (s)"]
    runs = markdown_table([*header, "start-up (s)"], rows)
    targets = [
        [name, amount(t["target"]), amount(t["value"]), "met" if t["met"] else "**not met**"]
        for name, t in doc["targets"].items()
    ]
    return runs + "\n\n" + markdown_table(["target", "wanted", "measured", ""], targets)


def image_pipeline(doc: Mapping[str, Any]) -> str:
    rows = [
        [row["pipeline"], row["transforms"], number(row["images_per_s_per_process"], 1)]
        for row in doc["rows"]
    ]
    settings = (
        f"{doc['images']} JPEGs, batch {doc['batch_size']}, {doc['workers']} loader workers, "
        f"torch on {doc['threads']} thread(s)."
    )
    return markdown_table(["pipeline", "transforms", "images/s per process"], rows) + (
        "\n\n" + settings
    )


def disk_traffic(doc: Mapping[str, Any]) -> str:
    """The latest measurement the file holds (its last entry)."""
    entries = [v for v in doc.values() if isinstance(v, dict) and "trial_mb_per_trial_epoch" in v]
    if not entries:
        raise KeyError("trial_mb_per_trial_epoch")
    last = entries[-1]
    rows = [
        ["trials x epochs", f"{last['trials']} x {last['epochs']}"],
        [
            "written by the trial processes, per trial-epoch",
            f"{number(last['trial_mb_per_trial_epoch'], 1)} MB",
        ],
        [
            "written by every process of the sweep, per trial-epoch",
            f"{number(last['all_mb_per_trial_epoch'], 1)} MB",
        ],
        ["one checkpoint (weights and optimiser state)", f"{number(last['checkpoint_mb'], 1)} MB"],
        ["the results folder at the end", f"{number(last['results_folder_mb'], 1)} MB"],
    ]
    return markdown_table(["latest measurement", ""], rows)


def _fidelity_cell(cell: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    """(the rho to show, the draws) of one mode at one point: a file of several draws pools
    them (`pooled`, with an interval); a file of one draw holds the draw itself."""
    if "pooled" in cell:
        return cell["pooled"], list(cell["draws"])
    return cell, [cell]


def _rho(pooled: Mapping[str, Any]) -> str:
    if pooled.get("rho") is None:
        return "n/a"
    text = f"{pooled['rho']:+.2f}"
    if pooled.get("low") is not None:
        text += f" [{pooled['low']:+.2f}, {pooled['high']:+.2f}]"
    return text


def rung_fidelity(doc: Mapping[str, Any]) -> str:
    points = doc["points"]
    rows = []
    for mode, row in doc["fidelity"].items():
        cells = []
        for name in points:
            pooled, draws = _fidelity_cell(row[name])
            kept = sum(bool(d["survives"]) for d in draws)
            regret = max(d["regret"] for d in draws)
            cells.append(f"{_rho(pooled)}, kept {kept}/{len(draws)}, regret {regret:.1f}")
        rows.append([mode, *cells])
    header = ["mode", *(f"{name} (epoch {epoch})" for name, epoch in points.items())]
    draws = doc.get("draws", 1)
    note = (
        f"{draws} draw(s) of {doc['configs']} configurations per mode, {doc['epochs']} epochs at "
        f"batch {doc['batch_size']}. Each cell: Spearman's rho between the validation accuracy "
        "there and the final one; in how many draws the final best was in the top half there "
        "(what ASHA with reduction factor 2 keeps); the largest regret (pp)."
    )
    return markdown_table(header, rows) + "\n\n" + note


def _to_target(summary: Mapping[str, Any]) -> str:
    return NEVER if summary["to_target"] is None else str(summary["to_target"])


def _median_seed_fraction(summaries: Sequence[Mapping[str, Any]], grid_compute: float) -> str:
    """The trial-epochs the median search seed took to reach the grid's best (a seed that never
    did counts as the most), as trial-epochs and a fraction of the grid's."""
    reached = sorted(
        (s["to_target"] for s in summaries), key=lambda v: float("inf") if v is None else v
    )
    median = reached[(len(reached) - 1) // 2]
    return "never" if median is None else f"{median} ({median / grid_compute:.2f})"


def _search_rows_by_seed(result: Mapping[str, Any]) -> Table:
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for summary in result["summaries"]:
        by_method.setdefault(summary["method"], []).append(summary)
    rows = []
    for method, summaries in by_method.items():
        epochs = [s["trial_epochs"] for s in summaries]
        rows.append(
            [
                result["mode"],
                method,
                str(len(summaries)) if method != "grid" else "",
                f"{min(epochs)}–{max(epochs)}" if len(epochs) > 1 else str(epochs[0]),
                spread([s["best_val"] for s in summaries]),
                spread([s["best_test"] for s in summaries]),
                "/".join(_to_target(s) for s in summaries),
                _median_seed_fraction(summaries, result["grid_compute"])
                if method != "grid"
                else "",
            ]
        )
    return rows


def _interval(ci: Mapping[str, Any], sign: bool = False) -> str:
    fmt = "{:+.2f}" if sign else "{:.2f}"
    if ci.get("mean") is None:
        return NEVER
    text = fmt.format(ci["mean"])
    if ci.get("low") is not None:
        text += f" [{fmt.format(ci['low'])}, {fmt.format(ci['high'])}]"
    return text + (" inconclusive" if ci.get("inconclusive") else "")


def _search_rows_by_evidence(result: Mapping[str, Any]) -> Table:
    rows = []
    for method, ev in result["evidence"].items():
        band, last = ev["expected_best"], -1
        default = " (default)" if method == result.get("default_method") else ""
        rows.append(
            [
                result["mode"],
                method + default,
                str(ev["seeds"]),
                f"{statistics.median(ev['trial_epochs']):.0f}",
                _interval(ev["best_val"]),
                f"{band['curve'][last]:.2f} [{band['low'][last]:.2f}, {band['high'][last]:.2f}]",
                _interval(ev["fresh_test_ci"]),
                _interval(ev["vs_default_test"], sign=True) if "vs_default_test" in ev else "",
            ]
        )
    return rows


def search_efficiency(doc: Mapping[str, Any]) -> str:
    """Two generations of the file: per search seed summaries (`summaries`), or the evidence
    with intervals and fresh-seed re-trainings (`evidence`)."""
    results = doc["results"]
    if all("evidence" in r for r in results):
        header = ["mode", "method", "search seeds", "trial-epochs (median)"]
        header += ["best val (%) [95% CI]", "expected best val at the budget [band]"]
        header += ["fresh-seed test (%) [95% CI]", "vs default: test (pp) [95% CI]"]
        rows = [row for r in results for row in _search_rows_by_evidence(r)]
        return markdown_table(header, rows)
    header = ["mode", "method", "search seeds", "trial-epochs", "best val (%)", "its test (%)"]
    header += ["trial-epochs to the grid's best, per seed", "median seed (fraction of the grid)"]
    rows = [row for r in results for row in _search_rows_by_seed(r)]
    grids = "; ".join(
        f"{r['mode']}: {', '.join(f'{k} {v}' for k, v in r['grid'].items())}" for r in results
    )
    note = (
        f"{doc['dataset']}, {doc['model']}, {doc['epochs']} epochs at batch {doc['batch_size']}, "
        f"{doc['concurrency']} trials at a time; best val and its test: median (range) over the "
        f"search seeds; the grid's best is reached within {doc['tolerance']} pp. Hand grids: "
        f"{grids}."
    )
    return markdown_table(header, rows) + "\n\n" + note


SCALE_COLUMNS = (  # sweep_scale.json row key, column title, decimals (None: as it is)
    ("size", "trials", None),
    ("sampler", "sampler", None),
    ("store", "store", None),
    ("wall_s", "wall (s)", 0),
    ("vs_bare", "x bare", 2),
    ("to_first_trial_s", "to the first trial (s)", 1),
    ("trials_s", "trials (s)", 0),
    ("own_core_s", "own core-s / trial", 2),
    ("driver_cpu_s", "driver CPU s / trial", 2),
    ("startup_first_s", "start-up, first (s)", 1),
    ("startup_median_s", "start-up, median (s)", 2),
    ("proposal_max_s", "longest proposal (s)", 3),
    ("redraw_max_ms", "status redraw (ms)", 2),
    ("end_s", "end of sweep (s)", 1),
    ("peak_rss_mb", "driver memory (MB)", 0),
    ("lines", "lines printed", None),
    ("max_running", "most at once", None),
    ("lost", "lost", None),
)


def _cell(value: Any, digits: int | None) -> str:
    if value is None:
        return NEVER
    return str(value) if digits is None else number(value, digits)


def columns_table(columns: Sequence[tuple[str, str, int | None]], rows: Sequence[Mapping]) -> str:
    """A table of `rows` (mappings) by (key, title, decimals) columns."""
    cells = [[_cell(row.get(k), d) for k, _, d in columns] for row in rows]
    return markdown_table([title for _, title, _ in columns], cells)


def sweep_scale(doc: Mapping[str, Any]) -> str:
    """Every sweep of the benchmark, then each target with its worst measured value."""
    verdict = {True: "met", False: "not met", None: "not measured"}
    targets = [
        [t["target"], _cell(t["worst"], 2), amount(t["limit"]), verdict[t["met"]]]
        for t in doc["targets"]
    ]
    return (
        columns_table(SCALE_COLUMNS, doc["rows"])
        + "\n\n"
        + markdown_table(["target", "worst measured", "limit", ""], targets)
    )


GP_COLUMNS = (  # gp_proposals.json row key, column title, decimals
    ("searcher", "searcher", None),
    ("p50_s", "median (s)", 3),
    ("max_s", "longest (s)", 3),
    ("last_half_p50_s", "last half: median (s)", 3),
    ("last_half_max_s", "longest (s)", 3),
    ("total_s", "all proposals (s)", 1),
    ("cpu_total_s", "their CPU (core-s)", 1),
)


def gp_proposals(doc: Mapping[str, Any]) -> str:
    note = f"{doc['trials']} proposals, {doc['running']} trials running at a time."
    return columns_table(GP_COLUMNS, doc["rows"]) + "\n\n" + note


@dataclass(frozen=True)
class Benchmark:
    script: str  # benchmarks/<script>, whose docstring's usage line produces the file
    render: Callable[[Mapping[str, Any]], str]


BENCHMARKS: dict[str, Benchmark] = {
    "search_efficiency.json": Benchmark("search_efficiency.py", search_efficiency),
    "rung_fidelity.json": Benchmark("rung_fidelity.py", rung_fidelity),
    "first_wave_cpu.json": Benchmark("first_wave.py", first_wave),
    "gpu_trials_h100.json": Benchmark("gpu_trials.py", gpu_trials),
    "gpu_trials_compile_h100.json": Benchmark("gpu_trials.py", gpu_trials),
    "image_pipeline_cpu.json": Benchmark("image_pipeline.py", image_pipeline),
    "disk_traffic.json": Benchmark("disk_traffic.py", disk_traffic),
    "sweep_scale.json": Benchmark("sweep_scale.py", sweep_scale),
    "sweep_scale_256.json": Benchmark("sweep_scale.py", sweep_scale),
    "gp_proposals.json": Benchmark("gp_proposals.py", gp_proposals),
}


# ---------------------------------------------------------------- command and machine


def usage_line(script: str) -> str:
    """The first command of the benchmark's docstring (with its more indented continuation
    lines), without a trailing comment."""
    source = (REPO / "benchmarks" / script).read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(("python benchmarks/", "bash benchmarks/")):
            indent = len(line) - len(line.lstrip())
            parts = [line.strip()]
            for more in lines[i + 1 :]:
                if not more.strip() or len(more) - len(more.lstrip()) <= indent:
                    break
                parts.append(more.strip())
            command = " ".join(p.rstrip("\\").strip() for p in parts)
            return re.split(r"\s{2,}#", command)[0].strip()
    raise BenchmarkError(f"benchmarks/{script}: its docstring shows no command")


def machine(doc: Mapping[str, Any]) -> str:
    """What the file records of the machine it was measured on."""
    found = doc.get("machine")
    if isinstance(found, Mapping):
        return ", ".join(f"{k} {v}" for k, v in found.items())
    if "device" in doc:
        return f"{doc['device']}, torch {doc.get('torch', '?')}"
    if "machine_note" in doc:
        return str(doc["machine_note"])
    return "not recorded in the file"


def render(name: str) -> str:
    if name not in BENCHMARKS:
        raise BenchmarkError(
            f"no table for benchmark result {name!r} (known: {sorted(BENCHMARKS)})"
        )
    path, shown = RESULTS / name, f"benchmarks/results/{name}"
    if not path.is_file():
        raise BenchmarkError(f"{shown} does not exist")
    doc = json.loads(path.read_text())
    benchmark = BENCHMARKS[name]
    try:
        table = benchmark.render(doc)
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise BenchmarkError(
            f"{shown} lacks what its table needs ({type(error).__name__}: {error})"
        ) from None
    lines = [table, "", f"* Produced by `{usage_line(benchmark.script)}`"]
    if "command" in doc:
        at = f" at commit `{doc['commit']}`" if "commit" in doc else ""
        lines.append(f"* This file's command: `{doc['command']}`{at}")
    lines.append(f"* Machine (from `{shown}`): {machine(doc)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- MkDocs events


def search_spaces_table() -> str:
    """Per search-space file: its mode, what it searches (distribution and range), the values
    it fixes, and its preset rows (how many are the original's)."""
    import yaml

    rows = []
    for path in sorted(SPACES.glob("*.yaml")):
        space = yaml.safe_load(path.read_text())
        searched = "<br>".join(
            f"`{name}` {_distribution(spec)}" for name, spec in space["params"].items()
        )
        fixed = ", ".join(
            f"`{k}` {_value(v)}"
            for k, v in (space.get("defaults") or {}).items()
            if k not in space["params"]
        )
        presets = space.get("presets") or []
        original = sum(row.get("provenance") == "original" for row in presets)
        rows.append(
            [
                f"`{path.name}`",
                space["mode"],
                searched,
                fixed or NEVER,
                f"{len(presets)} ({original})",
            ]
        )
    header = ["file", "mode", "searched", "fixed", "preset rows (the original's)"]
    return markdown_table(header, rows)


def _value(value: Any) -> str:
    """A YAML value as the file spells it (booleans lower-case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _distribution(spec: Mapping[str, Any]) -> str:
    kind = spec["distribution"]
    if kind == "choice":
        return "one of " + ", ".join(str(v) for v in spec["values"])
    step = f" step {spec['q']}" if "q" in spec else ""
    return f"{kind} {spec['low']}–{spec['high']}{step}"


#: marker kind -> what replaces it, given the marker's argument
GENERATED: dict[str, Callable[[str], str]] = {
    "benchmark": render,
    "search-spaces": lambda _: search_spaces_table(),
}


def fill(markdown: str) -> str:
    """Every marker of a page replaced by its table."""
    return MARKER.sub(lambda m: GENERATED[m.group(1)](m.group(2) or ""), markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    from mkdocs.exceptions import PluginError

    try:
        return fill(markdown)
    except BenchmarkError as error:
        raise PluginError(f"{page.file.src_uri}: {error}") from None


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for site_path, source in PICTURES.items():
        files.append(File.generated(config, site_path, abs_src_path=str(REPO / source)))
    return files
