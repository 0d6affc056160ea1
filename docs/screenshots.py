"""Regenerate the documentation's MLflow pictures from a real sweep.

    python docs/screenshots.py [--workdir DIR] [--epochs 2] [--num-samples 4]

Writes docs/mlflow_trials.png (the sweep's trials.html, opened by the link tune_main prints) and
docs/mlflow_runs.png (the experiment's runs table, the sweep's row opened on its trials, with
metric and parameter columns). What it runs, in a scratch folder (--workdir, else a temporary
one, removed at the end):

1. an MLflow server on 127.0.0.1 at a free port, over a SQLite store and an artifact folder there;
2. a small sweep logging to it: `tune_main.py --mode tfkd_reg --dataset digits --model resnet8`
   (scikit-learn's digits, nothing to download), --num-samples trials of --epochs epochs, two at
   a time; tune_main starts its own local Ray and stops it when the sweep ends;
3. headless Chromium through selenium (pip install -e ".[test]"; Debian's chromium and
   chromium-driver). The runs table shows the columns named in RUN_COLUMNS through the UI's own
   shared-view state: an experiment tag `mlflow.sharedViewState.<key>` holding the view as JSON,
   opened with `?viewStateShareKey=<key>` (what the UI's Share button writes and reads).

The server is stopped by its process id at the end, whatever happens. About 5 minutes on a 2-core
CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from browser import (  # noqa: E402  (the MLflow UI tests' headless Chromium)
    chrome,
    click_text,
    expand_until_shown,
    tidy_for_screenshot,
    wait_for,
)

DOCS = REPO / "docs"
RUNS_PICTURE = DOCS / "mlflow_runs.png"
TRIALS_PICTURE = DOCS / "mlflow_trials.png"
EXPERIMENT = "tfkd_reg-digits-resnet8"
SWEEP = ("--mode", "tfkd_reg", "--dataset", "digits", "--model", "resnet8", "--max-concurrent", "2")
VIEW_KEY = "tfkd-docs"
# the runs table's columns, as the UI names them: `<attributes|metrics|params>.`<key>``
RUN_COLUMNS = (
    "metrics.`val_accuracy`",
    "metrics.`test_accuracy`",
    "metrics.`best_val_accuracy`",
    "params.`smoothing`",
    "params.`lr_factor`",
    "attributes.`Duration`",
)
WINDOW = "--window-size=1600,900"
OVERRIDDEN = "saved view was overridden"  # the UI's notice, which closes by itself


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(condition: Callable[[], object], timeout: float, what: str) -> None:
    if not wait_for(None, condition, timeout):
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over root/mlflow.db and root/artifacts; stopped by its pid
    (its own process group, so its workers go with it)."""
    port = free_port()
    log = (root / "mlflow_server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
        + ["--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        require(lambda: answers(f"{uri}/health") or server.poll() is not None, 120, "MLflow")
        if server.poll() is not None:
            raise RuntimeError((root / "mlflow_server.log").read_text()[-2000:])
        yield uri
    finally:
        stop(server)
        log.close()


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group the process leads, SIGKILL after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_sweep(root: Path, uri: str, epochs: int, trials: int) -> str:
    """tune_main's sweep in `root`, logging to `uri`; returns the comparison link it printed."""
    command = [sys.executable, str(REPO / "tune_main.py"), *SWEEP]
    command += ["--epochs", str(epochs), "--num-samples", str(trials), "--mlflow-uri", uri]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    print("[screenshots]", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    print(done.stdout[-3000:], flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"the sweep exited {done.returncode}: {done.stderr[-2000:]}")
    found = re.search(r"^\[tfkd\] compare the trials in MLflow: (\S+)$", done.stdout, re.M)
    if not found:
        raise RuntimeError("the sweep printed no comparison link")
    return found.group(1)


def share_view(uri: str) -> tuple[str, list[str]]:
    """Store the runs table's view (RUN_COLUMNS shown; which rows are open is not shared) as
    the UI's shared view of the experiment; returns the runs table's address that opens it and
    the names of the runs it shows."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    view = {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": list(RUN_COLUMNS),
    }
    client.set_experiment_tag(
        experiment.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(view)
    )
    names = [r.info.run_name for r in runs]
    address = f"{uri}/#/experiments/{experiment.experiment_id}/runs"
    return f"{address}?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning", names


def picture_trials(driver, link: str, names: list[str]) -> None:  # noqa: ANN001 - WebDriver
    """The link tune_main printed: the sweep's trials.html in the artifact viewer."""
    driver.get(link)
    require(lambda: driver.find_elements("css selector", "iframe"), 90, "the artifact viewer")
    driver.switch_to.frame(driver.find_elements("css selector", "iframe")[0])
    require(lambda: all(n in driver.page_source for n in names), 90, "the trials table")
    driver.switch_to.default_content()
    tidy_for_screenshot(driver)
    driver.save_screenshot(str(TRIALS_PICTURE))


def picture_runs(driver, address: str, names: list[str]) -> None:  # noqa: ANN001 - WebDriver
    """The runs table in the shared view, kept as the browser's own view (so that no banner
    shows), with the sweep's row opened on its trials."""
    driver.get(address)
    require(lambda: "val_accuracy" in driver.page_source, 90, "the shared view's columns")
    click_text(driver, "Override saved view")
    require(lambda: OVERRIDDEN not in driver.page_source, 60, "the notice to close")
    driver.get(address.split("?")[0] + "?workflowType=machine_learning")
    require(lambda: "val_accuracy" in driver.page_source, 90, "the saved view's columns")
    missing = expand_until_shown(driver, names)
    if missing:
        raise RuntimeError(f"the runs table never showed {missing}")
    tidy_for_screenshot(driver)
    driver.save_screenshot(str(RUNS_PICTURE))


def trial_names(uri: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    return [r.info.run_name for r in runs if r.data.tags.get("tfkd.kind") == "trial"]


LINK_FILE = "trials_link.txt"  # the address tune_main printed, less the server's


def sweep_link(root: Path, uri: str, epochs: int, trials: int) -> str:
    """The comparison link of the sweep in `root`: a new sweep's, or (a --workdir that holds a
    sweep already) the one it printed, on this server."""
    saved = root / LINK_FILE
    if saved.is_file():
        print(f"[screenshots] {root} holds a sweep already: taking its pictures again")
        return uri + saved.read_text().strip()
    link = run_sweep(root, uri, epochs, trials)
    saved.write_text(link.removeprefix(uri))
    return link


def make_pictures(root: Path, epochs: int, trials: int) -> None:
    with mlflow_server(root) as uri:
        link = sweep_link(root, uri, epochs, trials)
        runs_address, names = share_view(uri)
        driver, profile = chrome(WINDOW)
        try:
            picture_trials(driver, link, trial_names(uri))
            picture_runs(driver, runs_address, names)
        except RuntimeError:
            driver.save_screenshot(str(root / "failed.png"))
            print(f"[screenshots] what the browser showed: {root / 'failed.png'}")
            raise
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    print(f"[screenshots] wrote {TRIALS_PICTURE} and {RUNS_PICTURE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        help="scratch folder, kept; one that holds a sweep already gives its pictures again "
        "(default: a temporary folder)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    parser.add_argument("--num-samples", type=int, default=4, help="trials (default 4)")
    args = parser.parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        make_pictures(args.workdir.resolve(), args.epochs, args.num_samples)
        return 0
    with tempfile.TemporaryDirectory(prefix="tfkd-screenshots-") as scratch:
        make_pictures(Path(scratch), args.epochs, args.num_samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
