"""The documentation: README stays short and keeps CI's test command, every relative link of README
and the docs resolves, the site builds with warnings as errors, and the tables generated at build
time say what benchmarks/results/*.json and search_spaces/*.yaml say (read here on their own)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from conftest import REPO

DOCS = REPO / "docs"
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest'
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
NEVER = "—"


def load_hook():
    """docs/hooks/tables.py, the MkDocs hook, as a module (it is not a package of the checkout)."""
    spec = importlib.util.spec_from_file_location("docs_tables_hook", DOCS / "hooks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations there
    spec.loader.exec_module(module)
    return module


def result(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


# ---------------------------------------------------------------- README and links


def test_readme_takes_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_and_ci_run_the_same_test_command():
    assert TEST_COMMAND in README.read_text().splitlines()
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text().splitlines()


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative_links(path: Path) -> list[str]:
    """The link and image targets of a Markdown file that are paths (code blocks left out)."""
    text = FENCE.sub("", path.read_text())
    targets = LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_every_relative_link_in_readme_and_docs_resolves():
    added_by_the_build = set(load_hook().PICTURES)  # site paths of pictures kept beside the code
    broken = []
    for path in markdown_files():
        for target in relative_links(path):
            file = (path.parent / target.split("#")[0]).resolve()
            in_site = path.is_relative_to(DOCS) and file.is_relative_to(DOCS.resolve())
            built = in_site and file.relative_to(DOCS.resolve()).as_posix() in added_by_the_build
            if file.exists() or built:
                continue
            broken.append(f"{path.relative_to(REPO)}: {target}")
    assert broken == []


def test_the_link_reader_finds_links_and_images_and_skips_addresses_and_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[a](nowhere.md#part) ![b](img/nothing.png) [c](https://example.org) [d](#here)\n"
        "```bash\n[e](in-code.md)\n```\n"
    )
    assert relative_links(page) == ["nowhere.md#part", "img/nothing.png"]


# ---------------------------------------------------------------- the site


class Tables(HTMLParser):
    """Every table row of a page as its cells' text, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def page(site: Path, name: str) -> Tables:
    parsed = Tables()
    parsed.feed((site / name / "index.html").read_text())
    parsed.page_text = " ".join("".join(parsed.text).split())
    return parsed


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as CI builds it: `mkdocs build --strict` (a warning fails), outside the checkout."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml")]
        + ["--site-dir", str(out)],
        cwd=out,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def has_row(tables: Tables, *cells: str) -> bool:
    return any(row[: len(cells)] == list(cells) for row in tables.rows)


def test_the_site_builds_every_page_and_keeps_its_pictures(site):
    for name in ("sweeps", "clusters", "tracking", "teachers", "analysis", "losses", "faults"):
        assert (site / name / "index.html").is_file(), name
    for name in ("performance", "architecture", "paper"):
        assert (site / name / "index.html").is_file(), name
    assert (site / "mlflow_runs.png").stat().st_size > 10_000
    assert (site / "img" / "search_efficiency.png").is_file()
    assert not list(site.rglob("*.py")), "the hooks and scripts of docs/ are not published"


def test_performance_page_states_the_benchmark_results(site):
    perf = page(site, "performance")
    assert "benchmark:" not in (site / "performance" / "index.html").read_text()

    for run in result("first_wave_cpu.json")["runs"]:
        row = [str(run["trials"]), str(run["limit"]), str(run["proposed_before_any_result"])]
        assert has_row(perf, *row, str(run["most_running"]), f"{run['wall_s']:.1f}"), run

    gpu = result("gpu_trials_h100.json")
    for run in gpu["runs"]:
        total = f"{run['summary']['img_per_s']:,.0f}"
        assert any(r[0] == run["name"] and total in r for r in perf.rows), run["name"]
    assert gpu["machine"]["device"] in perf.page_text
    for name, target in gpu["targets"].items():
        verdict = "met" if target["met"] else "not met"
        assert any(r[0] == name and r[-1] == verdict for r in perf.rows), name

    for row in result("image_pipeline_cpu.json")["rows"]:
        value = f"{row['images_per_s_per_process']:.1f}"
        assert has_row(perf, row["pipeline"], row["transforms"], value), row

    entries = [v for v in result("disk_traffic.json").values() if isinstance(v, dict)]
    assert f"{entries[-1]['trial_mb_per_trial_epoch']:.1f} MB" in perf.page_text

    fidelity = result("rung_fidelity.json")
    for mode, points in fidelity["fidelity"].items():
        row = next(r for r in perf.rows if r[0] == mode and ", kept " in r[-1])
        for cell, point in zip(row[1:], points.values(), strict=True):
            assert cell.startswith(f"{point['rho']:+.2f}, kept {int(point['survives'])}/1"), cell

    efficiency = result("search_efficiency.json")
    for mode_result in efficiency["results"]:
        mode = mode_result["mode"]
        (grid,) = [s for s in mode_result["summaries"] if s["method"] == "grid"]
        assert has_row(perf, mode, "grid", "", str(grid["trial_epochs"]), f"{grid['best_val']:.2f}")
        for method in {s["method"] for s in mode_result["summaries"]} - {"grid"}:
            seeds = [s for s in mode_result["summaries"] if s["method"] == method]
            reached = "/".join(str(s["to_target"] or NEVER) for s in seeds)
            assert any(r[:3] == [mode, method, str(len(seeds))] and reached in r for r in perf.rows)

    for name in ("sweep_scale.json", "sweep_scale_256.json"):
        scale = result(name)
        for row in scale["rows"]:
            cells = [str(row["size"]), row["sampler"], row["store"], f"{row['wall_s']:,.0f}"]
            assert has_row(perf, *cells), cells
        for target in scale["targets"]:
            verdict = {True: "met", False: "not met", None: "not measured"}[target["met"]]
            worst = "—" if target["worst"] is None else f"{target['worst']:,.2f}"
            assert has_row(perf, target["target"], worst), target
            assert any(r[:2] == [target["target"], worst] and r[-1] == verdict for r in perf.rows)

    for row in result("gp_proposals.json")["rows"]:
        assert has_row(perf, row["searcher"], f"{row['p50_s']:,.3f}", f"{row['max_s']:,.3f}"), row

    for name in (
        "gp_proposals",
        "search_efficiency",
        "rung_fidelity",
        "first_wave",
        "gpu_trials",
        "disk_traffic",
        "sweep_scale",
    ):
        assert f"python benchmarks/{name}.py" in perf.page_text, name


def test_losses_page_states_every_search_space(site):
    losses = page(site, "losses")
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        space = yaml.safe_load(path.read_text())
        row = next(r for r in losses.rows if r[0] == path.name)
        assert row[1] == space["mode"]
        for name, spec in space["params"].items():
            if spec["distribution"] != "choice":
                assert f"{name} {spec['distribution']} {spec['low']}–{spec['high']}" in row[2]


# ---------------------------------------------------------------- the hook on its own


def test_a_result_file_without_what_its_table_needs_stops_the_build(tmp_path, monkeypatch):
    from mkdocs.exceptions import PluginError

    hook = load_hook()
    monkeypatch.setattr(hook, "RESULTS", tmp_path)
    (tmp_path / "first_wave_cpu.json").write_text(json.dumps({"runs": [{"trials": 8}]}))
    with pytest.raises(hook.BenchmarkError, match="first_wave_cpu.json lacks"):
        hook.render("first_wave_cpu.json")
    with pytest.raises(hook.BenchmarkError, match="does not exist"):
        hook.render("disk_traffic.json")
    with pytest.raises(hook.BenchmarkError, match="no table for benchmark result 'x.json'"):
        hook.render("x.json")

    class Page:
        class file:
            src_uri = "performance.md"

    with pytest.raises(PluginError, match="performance.md: .*first_wave_cpu.json"):
        hook.on_page_markdown("<!-- benchmark: first_wave_cpu.json -->", Page, None, None)


def test_search_efficiency_files_with_fresh_seed_evidence_render_too():
    """The benchmark's newer result files (per method: intervals, fresh-seed re-trainings),
    built here with the benchmark's own functions."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import search_efficiency as bench
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def runs(best: list[float]) -> list[dict]:
        return [
            {"seed": s, "best_val": v, "trials": 8, "trial_epochs": 70 + s, "scores": [v - 1, v]}
            | {"best_config": {"lr_factor": 1.0 + s}}
            for s, v in enumerate(best)
        ]

    def trained(tests: list[float]) -> list[dict]:
        return [{"config": {"seed": 1000 + i}, "test": t, "val": t} for i, t in enumerate(tests)]

    budgets, reps = [1, 2], 50
    evidence = {
        "tpe": bench.method_evidence(runs([90.0, 91, 92]), trained([88, 89, 90]), budgets, reps),
        "random": bench.method_evidence(runs([85.0, 86, 87]), trained([80, 82, 81]), budgets, reps),
    }
    bench.compare_to_default(evidence, "tpe")
    document = {"results": [{"mode": "lsr", "default_method": "tpe", "evidence": evidence}]}
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in load_hook().search_efficiency(document).splitlines()[2:]
    ]
    tpe, random = rows
    assert tpe[:4] == ["lsr", "tpe (default)", "3", "71"]
    assert tpe[4].startswith(f"{evidence['tpe']['best_val']['mean']:.2f} [")
    assert tpe[6].startswith("89.00 [")  # the fresh seeds' mean test accuracy
    assert random[:4] == ["lsr", "random", "3", "71"]
    assert random[7].startswith(f"{evidence['random']['vs_default_test']['mean']:+.2f} [")
