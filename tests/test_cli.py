"""tune_main.py's bad input: one clear line on stderr, exit status 2, nothing started."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tfkd.cli import tune as cli
from tfkd.cli.flags import EXIT_USAGE
from tfkd.cli.parser import build_parser
from tfkd.core import modes
from tfkd.sweep import storage
from tfkd.sweep.plan import Plan, make_plan

from conftest import REPO, assert_one_line, clean_env, cli_args, free_port, tune_main

SPACE_ERRORS = [
    ("params: {alpha: {distribution: uniform, low: 0.9, high: 0.1}}", "low (0.9) > high (0.1)"),
    ("params: {temperature: {distribution: loguniform, low: 0, high: 10}}", "positive bound"),
    ("params: {alpha: {distribution: beta, low: 0, high: 1}}", "unknown distribution"),
    (
        "params: {alpha: {distribution: uniform, low: 0, high: 1, step: 2}}",
        "unknown key params.alpha.step",
    ),
    ("parms: {}", "unknown key parms"),
    ("params: {temprature: {distribution: uniform, low: 1, high: 2}}", "temprature"),
    ("params: {alpha: {distribution: uniform, low: 0.1}}", "missing 'high'"),
    ("params: {alpha: {distribution: choice, values: []}}", "non-empty list"),
    (
        "params: {alpha: {distribution: uniform, low: 0.1, high: 0.5}}\n"
        "presets: [{model: resnet8, alpha: 0.9}]",
        "presets[0].alpha",
    ),
    # a YAML syntax error: the file, line and column, and what PyYAML found there
    ("params: [oops", ":1:14: not valid YAML (expected ',' or ']', but got '<stream end>')"),
    ("params:\n  alpha:\n\tlow: 1\n", ":3:1: not valid YAML (found character '\\t' that"),
]


def run_cli(capsys, workdir: Path, *words: str, **options) -> tuple[int, str]:
    (workdir / "data").mkdir(exist_ok=True)
    store = dict(storage=workdir / "ray_results", mlflow_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    code = cli.main(cli_args(*words, **options, **store, data_dir=workdir / "data"))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("yaml_text", "needle"), SPACE_ERRORS)
def test_search_space_schema_errors(capsys, workdir, yaml_text, needle):
    path = workdir / "space.yaml"
    path.write_text(yaml_text)
    code, err = run_cli(
        capsys, workdir, "--mode tfkd_reg --dataset digits --model resnet8", search_space=path
    )
    assert code == EXIT_USAGE
    assert_one_line(err, str(path), needle)
    assert not (workdir / "ray_results").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ("--mode tfkd_reg --dataset digits --set alpha=2", ["alpha", "between 0 and 1"]),
        ("--mode tfkd_reg --dataset digits --set epochs=x", ["epochs", "must be an integer"]),
        ("--mode tfkd_reg --dataset digits --teacher resnet18", ["--teacher", "has no teacher"]),
        ("--mode lsr --dataset digits --teacher-checkpoint t.pt", ["--teacher-checkpoint"]),
        ("--mode baseline --dataset digits --train-teacher", ["--train-teacher", "no teacher"]),
        (
            "--mode kd --dataset digits --teacher resnet99",
            ["unknown model 'resnet99'", "known models", "resnet18"],
        ),
        ("--mode lsr --dataset digits --resume", ["--resume needs --name"]),
        ("--mode tfkd_reg --dataset digits --set alpah=0.5", ["alpah", "unknown config key"]),
        ("--mode tfkd_reg --dataset digits --set alpha", ["KEY=VALUE"]),
        ("--mode lsr --dataset cifar100", ["cifar-100", "--download"]),
        (
            "--mode kd --dataset digits --model resnet8",
            ["needs a teacher", "--teacher MODEL", "--train-teacher", "--teacher-checkpoint"],
        ),
        (
            "--mode tfkd_self --dataset digits --model resnet8",
            [
                "tfkd-digits-resnet8@best",
                "tfkd tune --mode baseline --dataset digits --model resnet8 --fixed",
            ],
        ),
        (
            "--mode dekd --dataset digits --model resnet8 --teacher resnet20@epoch-1",
            ["tfkd-digits-resnet20@epoch-1", "--snapshot-epochs 1"],
        ),
        ("--mode kd --dataset digits --teacher-checkpoint /nope/t.pt", ["/nope/t.pt"]),
        ("--mode lsr --dataset digits --resume --name never-ran", ["--resume", "never-ran"]),
        (
            f"--mode lsr --dataset digits --address 127.0.0.1:{free_port()}",
            ["no Ray cluster reachable"],
        ),
        # the paper's protocol has no validation split: a search ranks on the test set only
        # when asked for exactly that; holdout never ranks on the test set
        (
            "--mode lsr --dataset digits --protocol paper",
            ["--protocol paper", "--metric paper_test_accuracy", "--fixed"],
        ),
        (
            "--mode lsr --dataset digits --metric paper_test_accuracy",
            ["--metric paper_test_accuracy", "'holdout'", "val_accuracy"],
        ),
        (
            "--mode lsr --dataset digits --protocol paper --fixed --set val_fraction=0.1",
            ["val_fraction", "protocol 'paper'", "val_fraction=0"],
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, workdir, args, needles):
    code, err = run_cli(capsys, workdir, args)
    assert code == EXIT_USAGE
    assert_one_line(err, *needles)
    assert not (workdir / "ray_results").exists()


def test_unreachable_tracking_server(capsys, workdir):
    uri = f"http://127.0.0.1:{free_port()}"
    code = cli.main(
        cli_args("--mode lsr --dataset digits", mlflow_uri=uri, storage=workdir / "ray_results")
    )
    assert code == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, uri, "unreachable")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ("--mode nope --dataset digits", "--mode"),
        ("--mode lsr --dataset mnist", "--dataset"),
        ("--mode lsr --dataset digits --num-samples 0", "--num-samples"),
        ("--mode lsr --dataset digits --gpus-per-trial -1", "--gpus-per-trial"),
        ("--mode lsr --dataset digits --tracking-grace -5", "--tracking-grace"),
        ("--mode lsr --dataset digits --snapshot-epochs x", "--snapshot-epochs"),
        ("--mode baseline --dataset digits --snapshot-epochs 1,0", "positive epochs"),
        ("--mode lsr --dataset digits --snapshot-epochs 1", "only --mode baseline trains"),
        (
            "--mode baseline --dataset digits --epochs 3 --snapshot-epochs 1,5",
            "epoch 5 lies beyond",
        ),
        ("--mode baseline --dataset digits --epochs 1", "'warmup_epochs' = 1 is not below epochs"),
        # never abbreviated: --epoch is not taken for --epochs
        ("--mode lsr --dataset digits --epoch 3", "unknown flag --epoch; did you mean --epochs?"),
        ("--mode lsr --dataset digits --epoch=3", "unknown flag --epoch; did you mean --epochs?"),
        ("--mode lsr --num --dataset digits", "unknown flag --num"),
        # named before a required flag is missed
        ("--mode lsr --datset digits", "unknown flag --datset; did you mean --dataset?"),
        ("--mode lsr --dataset digits --seed -1 --nope", "unknown flag --nope"),
        # --smoke-test replaces no flag the user gave
        (
            "--mode lsr --dataset cifar100 --smoke-test",
            "--smoke-test trains with --dataset fake, not cifar100: give --dataset fake, or drop "
            "--smoke-test to train with --dataset cifar100",
        ),
        (
            "--mode lsr --dataset fake --model resnet18 --smoke-test",
            "--model resnet8, not resnet18",
        ),
        ("--mode lsr --dataset fake --smoke-test --epochs 5", "--epochs 2, not 5"),
        ("--mode lsr --dataset fake --smoke-test --num-samples 4", "--num-samples 2, not 4"),
        ("--mode lsr --dataset digits --set lr=[", "--set lr=[: not a valid YAML value"),
    ],
)
def test_bad_flags_exit_2_from_the_real_command(workdir, args, needle):
    done = tune_main(args, cwd=workdir, timeout=120, env=clean_env())
    assert done.returncode == EXIT_USAGE
    assert_one_line(done.stderr, needle)


PARSE_ERRORS = [
    "--mode lsr",  # --dataset missing
    "--mode lsr --dataset digits --num-samples 0",
    "--mode lsr --dataset digits --gpus-per-trial -1",
    "--mode lsr --dataset digits --snapshot-epochs x",
    "--mode lsr --dataset digits --no-such-flag",
    "--mode lsr --datset digits",
    "--mode lsr --dataset digits --epoch 3",
    "--mode lsr --dataset fake --smoke-test --model resnet20",
    # the choices of the registries that import torch
    "--mode nope --dataset digits",
    "--mode lsr --dataset mnist",
    "--mode lsr --dataset digits --model resnet99",
    # --set: an unknown key, a core key's type and range, YAML
    "--mode lsr --dataset digits --set alpah=0.5",
    "--mode lsr --dataset digits --set lr=abc",
    "--mode lsr --dataset digits --set alpha=2",
    "--mode lsr --dataset digits --set model=resnet99",
    "--mode lsr --dataset digits --set loader=nope",
    "--mode lsr --dataset digits --set lr=[",
]
# Runs each mistake through tune_main's main() in one fresh interpreter; prints, per mistake,
# the exit status and which of torch, Ray and MLflow had been imported by then.
IMPORTS_AT_ERROR = """
import json, sys
from tfkd.cli import tune
seen = []
for words in json.loads(sys.argv[1]):
    try:
        code = tune.main(words.split())
    except SystemExit as exit:
        code = exit.code
    seen.append([code, sorted({m.split(".")[0] for m in sys.modules} & {"torch", "ray", "mlflow"})])
print(json.dumps(seen))
"""


def imports_at_error(mistakes: list[str]) -> list:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_AT_ERROR, json.dumps(mistakes)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_argument_errors_come_before_torch_ray_and_mlflow_are_imported():
    assert imports_at_error(PARSE_ERRORS) == [[EXIT_USAGE, []]] * len(PARSE_ERRORS)


TUNE_FLAGS = (
    "--mode --dataset --model --teacher --teacher-checkpoint --teacher-run --train-teacher "
    "--snapshot-epochs --data-dir --download --protocol --search-space --num-samples --epochs "
    "--grace-period --rungs --search-alg --metric --fixed --seed --search-seed --set --name "
    "--resume --verbose --smoke-test --gpus-per-trial --cpus-per-trial --workers-per-trial "
    "--max-concurrent --address --mlflow-uri --storage --experiment --no-tracking "
    "--system-metrics --tracking-grace --max-failures"
).split()


def test_help_documents_every_flag_and_mode():
    parser = build_parser()
    text = parser.format_help()
    documented = {
        option: action.help
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert sorted(documented) == sorted(TUNE_FLAGS)  # none lost, none added unlisted
    for option, said in documented.items():
        assert said and said != argparse.SUPPRESS, option
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option
    for name in modes.names():
        line = rf"^  {re.escape(name)} +{re.escape(modes.get(name).description)}$"
        assert re.search(line, text, re.MULTILINE), name


def plan_of(*words: str, **options) -> Plan:
    return make_plan(build_parser().parse_args(cli_args(*words, **options)))


def test_fixed_uses_the_original_preset():
    plan = plan_of("--mode tfkd_reg --dataset cifar100 --model googlenet --fixed")
    config = plan.first_trial()
    assert (config["temperature"], config["alpha"], config["multiplier"]) == (40, 0.1, 50.0)
    assert config["batch_size"] == 64  # an unsearched preset value is applied as well
    assert plan.fixed


def test_the_paper_protocol_trains_on_the_full_training_set_and_ranks_as_asked():
    plan = plan_of("--mode lsr --dataset digits --protocol paper --metric paper_test_accuracy")
    assert plan.first_trial()["protocol"] == "paper" and plan.first_trial()["val_fraction"] == 0
    assert plan.metric == "paper_test_accuracy"
    assert len(plan.warnings) == 1 and "selects configurations on the test set" in plan.warnings[0]
    fixed = plan_of("--mode lsr --dataset digits --protocol paper --fixed")
    assert (fixed.metric, fixed.warnings) == ("paper_test_accuracy", ())  # one trial: no choice
    holdout = plan_of("--mode lsr --dataset digits")
    assert holdout.first_trial()["protocol"] == "holdout" and holdout.metric == "val_accuracy"
    assert holdout.first_trial()["val_fraction"] == 0.1 and holdout.warnings == ()


def announced(plan: Plan, capsys, tmp_path) -> list[str]:
    """What tune_main prints as a sweep starts (untracked, no teacher)."""
    from types import SimpleNamespace

    from tfkd.cli.tune import announce

    announce(plan, SimpleNamespace(mlflow_uri=None, args=SimpleNamespace(storage=str(tmp_path)),
                                   teacher=None))  # fmt: skip
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    ("words", "says"),
    [
        ("--mode tfkd_self --model resnet50", "filled in, not the original's: experiments/"
         "kd_experiments/resnet50_distill/resnet50_self_teacher/params.json has no multiplier"),
        ("--mode tfkd_reg --model resnext29", "filled in, not the original's: experiments/"
         "base_experiments/base_resnext29/params.json has no multiplier"),
        ("--mode kd --model resnet18 --teacher densenet121", "filled in, not the original's: "
         "the original's config for this pair is broken"),
        ("--mode kd --model shufflenet_v2 --teacher mobilenet_v2", "the original has no kd values "
         "for shufflenet_v2 with teacher mobilenet_v2; its values with teacher resnet18"),
        ("--mode lsr --model resnet8", "the original has no lsr values for resnet8"),
    ],
)  # fmt: skip
def test_fixed_on_a_preset_that_is_not_the_originals_says_so_in_one_line(
    words, says, capsys, tmp_path
):
    plan = plan_of(f"{words} --dataset cifar100 --fixed")
    (line,) = [line for line in announced(plan, capsys, tmp_path) if "--fixed" in line]
    assert line.startswith(f"[tfkd] --fixed: {says}")
    assert plan.preset_provenance == line.removeprefix("[tfkd] --fixed: ")
    searched = plan_of(f"{words} --dataset cifar100")  # a search starts there, says nothing
    assert not [line for line in announced(searched, capsys, tmp_path) if "--fixed" in line]


def test_fixed_on_an_original_row_says_nothing_more(capsys, tmp_path):
    plan = plan_of(
        "--mode dekd --dataset cifar100 --model resnet18 --teacher resnet50@epoch-50 --fixed"
    )
    assert plan.preset_provenance == "original"
    assert plan.first_trial()["alpha"] == 0.6 and plan.first_trial()["batch_size"] == 64
    assert len(announced(plan, capsys, tmp_path)) == 1  # the sweep's own line


def test_set_fixes_a_searched_key():
    plan = plan_of("--mode tfkd_reg --dataset digits", set=["alpha=0.3", "semantics=paper"])
    assert "alpha" not in plan.space.params and "semantics" not in plan.space.params
    assert plan.config["alpha"] == 0.3 and plan.config["semantics"] == "paper"
    assert list(plan.space.params) == ["lr_factor"]  # alpha fixed: smoothing, which sets it, goes


def test_an_unknown_teacher_suggests_no_training_command(capsys, workdir):
    code, err = run_cli(capsys, workdir, "--mode kd --dataset digits --teacher resnet99")
    assert code == EXIT_USAGE and "python tune_main.py" not in err


# ---------------------------------------------------------------- sweeps never mix


def test_a_new_sweep_gets_a_unique_name_in_the_shared_experiment(workdir):
    storage = workdir / "ray_results"
    first = plan_of("--mode lsr --dataset digits --model resnet8", storage=storage)
    assert re.fullmatch(r"lsr-digits-resnet8-\d{8}-\d{6}", first.name), first.name
    assert first.experiment == "lsr-digits-resnet8"
    (storage / first.name).mkdir(parents=True)
    second = plan_of("--mode lsr --dataset digits --model resnet8", storage=storage)
    assert second.name != first.name and second.experiment == first.experiment
    named = plan_of("--mode lsr --dataset digits --name mine --experiment shared")
    assert (named.name, named.experiment) == ("mine", "shared")


def test_timestamped_names_skip_taken_ones(monkeypatch):
    monkeypatch.setattr(storage.time, "strftime", lambda fmt: "20261126-120000")
    assert storage.timestamped("m", lambda name: False) == "m-20261126-120000"
    taken = {"m-20261126-120000", "m-20261126-120000-2"}
    assert storage.timestamped("m", taken.__contains__) == "m-20261126-120000-3"


def test_an_existing_name_without_resume_is_refused(capsys, workdir):
    started = workdir / "ray_results" / "taken"
    started.mkdir(parents=True)
    (started / "experiment_state-2026-12-07_10-00-00.json").write_text("{}")  # Tune's state
    code, err = run_cli(capsys, workdir, "--mode lsr --dataset digits --name taken")
    assert code == EXIT_USAGE
    assert_one_line(err, "--name taken", "--resume", "another --name")
    assert [p.name for p in (workdir / "ray_results").iterdir()] == ["taken"]


def test_a_name_mlflow_already_has_is_refused(capsys, workdir):
    from tfkd import tracking

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    context = tracking.start_sweep(
        uri, "lsr-digits-resnet18", "earlier", {}, False, "digits", "resnet18"
    )
    tracking.finish_sweep(context, None, None)
    capsys.readouterr()
    code, err = run_cli(capsys, workdir, "--mode lsr --dataset digits --name earlier")
    assert code == EXIT_USAGE
    assert_one_line(err, "--name earlier", "lsr-digits-resnet18", "--resume")
    assert not (workdir / "ray_results").exists()


# ---------------------------------------------------------------- leftovers


def test_a_failed_download_leaves_no_data_folder_behind(capsys, workdir, monkeypatch):
    import torchvision.datasets.utils

    def broken_download(url, download_root, **kwargs):
        (Path(download_root) / "cifar-10-python.tar.gz.part").write_bytes(b"half")
        raise OSError("connection reset")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", broken_download)
    fresh = workdir / "fresh"
    code = cli.main(
        cli_args("--mode lsr --dataset cifar10 --download", data_dir=fresh, no_tracking=True)
    )
    assert code == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "downloading", "connection reset")
    assert not fresh.exists()
    kept = workdir / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("not ours to delete")
    assert cli.main(cli_args("--mode lsr --dataset cifar10 --download", data_dir=kept)) == 2
    assert [p.name for p in kept.iterdir()] == ["mine.txt"]


def test_gitignore_covers_what_runs_write():
    patterns = (REPO / ".gitignore").read_text().split()
    for output in ("mlflow.db", "/mlartifacts/", "/ray_results/", "/data/", "/reports/"):
        assert output in patterns
    assert "/test-artifacts/" in patterns


def test_system_metrics_without_psutil_is_one_line(capsys, workdir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psutil" else real(name, *a)
    )
    code, err = run_cli(capsys, workdir, "--mode lsr --dataset digits --system-metrics")
    assert code == EXIT_USAGE
    assert_one_line(err, "--system-metrics", "pip install psutil")
    assert not (workdir / "ray_results").exists()
