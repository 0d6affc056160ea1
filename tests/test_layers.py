"""The layers of docs/architecture.md hold: tfkd.core trains without Ray or MLflow, and no package
imports one above it (core < tracking < sweep < analysis < cli); Ray lives only in tfkd.sweep,
MLflow only in tfkd.tracking; the benchmarks, like tfkd.analysis, use the library, never the
command line's internals (tfkd.cli).

The imports are read from the source with `ast`, independently of how the modules behave.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "tfkd"
# A package may import the ones listed for it, and nothing else of tfkd's but itself.
ALLOWED = {
    "core": set(),
    "tracking": {"core"},
    "sweep": {"core", "tracking"},
    "analysis": {"core", "tracking", "sweep"},
    "cli": {"core", "tracking", "sweep", "analysis"},
}
THIRD_PARTY_HOME = {"ray": "sweep", "mlflow": "tracking"}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (lazy imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:  # relative: inside its package
            found.add("tfkd." + path.relative_to(PACKAGE).parts[0])
    return found


def layer_of(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def modules_of(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def test_every_module_of_tfkd_is_in_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "__main__.py"}]
    assert loose == [], f"modules outside tfkd/core, sweep, tracking, cli: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        ALLOWED
    )


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_layer_imports_one_above_it(layer):
    wrong = []
    for path in modules_of(layer):
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "tfkd" and len(parts) > 1 and parts[1] in ALLOWED:
                if parts[1] != layer and parts[1] not in ALLOWED[layer]:
                    wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert wrong == []


@pytest.mark.parametrize("library", sorted(THIRD_PARTY_HOME))
def test_ray_and_mlflow_are_imported_in_their_own_package_only(library):
    home = THIRD_PARTY_HOME[library]
    outside = [
        str(path.relative_to(REPO))
        for path in sorted(PACKAGE.rglob("*.py"))
        if layer_of(path) != home
        and any(m == library or m.startswith(library + ".") for m in imported_modules(path))
    ]
    assert outside == []


def importers_of(package: str, paths: list[Path]) -> list[str]:
    """'path imports module' for each import of `package` or a module in it among `paths`."""
    return [
        f"{path} imports {module}"
        for path in paths
        for module in sorted(imported_modules(path))
        if module == package or module.startswith(package + ".")
    ]


# The benchmarks that measure a command itself (its driver, in-process) and the one module of
# tfkd.cli each may import for it.
MEASURES_A_COMMAND = {"sweep_scale.py": "tfkd.cli.tune"}


def test_benchmarks_and_analysis_import_nothing_of_the_command_line():
    """Both use library APIs (tfkd.sweep.plan, tfkd.core.protocol, ...), never tfkd.cli; a
    benchmark of a command's own cost imports that command and nothing else of tfkd.cli."""
    scripts = sorted((REPO / "benchmarks").rglob("*.py")) + modules_of("analysis")
    assert len(scripts) > 10  # the folders are where this test looks
    allowed = {
        f"{REPO / 'benchmarks' / name} imports {module}"
        for name, module in MEASURES_A_COMMAND.items()
    }
    assert [line for line in importers_of("tfkd.cli", scripts) if line not in allowed] == []


def test_the_import_reader_sees_lazy_and_nested_imports(tmp_path):
    """The checks above are only as good as the reader: a lazy import inside a function counts."""
    source = tmp_path / "sample.py"
    source.write_text(
        "def f():\n    from ray import tune\n    import mlflow.client\n"
        "    from tfkd.cli import flags\n"
    )
    assert {"ray", "ray.tune", "mlflow.client"} <= imported_modules(source)
    assert importers_of("tfkd.cli", [source]) == [
        f"{source} imports tfkd.cli",
        f"{source} imports tfkd.cli.flags",
    ]


BLOCKED_RUN = """
import importlib.abc, json, sys

class Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ray", "mlflow", "optuna"}:
            raise ImportError(f"{name} is made unimportable for this test")
        return None

sys.meta_path.insert(0, Unimportable())
from tfkd.core.train import run_trial

epochs = []
final = run_trial(
    {"mode": "tfkd_reg", "model": "resnet8", "dataset": "digits", "epochs": 2,
     "batch_size": 64, "device": "cpu"},
    report=lambda metrics, checkpoint_dir: epochs.append(metrics["epoch"]),
)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"ray", "mlflow", "optuna"})
print(json.dumps({"epochs": epochs, "final": final, "loaded": loaded}))
"""


def test_a_trial_trains_through_tfkd_core_with_ray_and_mlflow_unimportable():
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["epochs"] == [1, 2]
    assert result["loaded"] == []
    assert result["final"]["epoch"] == 2
    assert result["final"]["val_accuracy"] > 10.0 + 5.0  # above chance (10 classes) after 2 epochs


DRIVER_DATA = """
import json, sys
from tfkd.core.config import TrialConfig
from tfkd.core.train import load_dataset
from tfkd.sweep import tuner

load_dataset(TrialConfig.from_dict({"mode": "lsr", "dataset": "digits", "epochs": 2}))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "torchvision")))
"""


def test_the_sweeps_driver_loads_a_tensor_dataset_without_importing_torchvision():
    """torchvision brings torch._dynamo with it (seconds of CPU in every process that imports
    it); a sweep's driver reading digits (or CIFAR's arrays once unpacked) has no use for it:
    only the jpeg loader and the downloads import it."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER_DATA], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
