"""`tfkd`: one command with the subcommands tune, best-configs, reproduce, report, paper-suite
and replay, each with its own --help; a mistake is one line with exit status 2; a command line
that starts with a flag is tune's (as `python -m tfkd --mode ...` always was); what a command
prints names the command as the user ran it; tfkd.sweep.request.SweepRequest is tune's flags."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys

import pytest

import tfkd
from tfkd.cli import outcome
from tfkd.cli.commands import COMMANDS
from tfkd.cli.main import main
from tfkd.cli.parser import build_parser, parse_args
from tfkd.sweep.request import SweepRequest

from conftest import REPO, assert_one_line, clean_env

# what README and the docs promise, and the flag each command's --help must show
PROMISED = {
    "tune": "--mode",
    "best-configs": "--top",
    "reproduce": "--first-seed",
    "report": "--out",
    "paper-suite": "--dry-run",
    "replay": "--timeout",
}


def python_m_tfkd(*words: str) -> subprocess.CompletedProcess:
    """`python -m tfkd WORDS...` as a user runs it, from the checkout."""
    return subprocess.run(
        [sys.executable, "-m", "tfkd", *words],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_every_command_with_its_line_and_imports_none_of_them():
    script = (
        "import sys\nfrom tfkd.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    code = exit.code\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('tfkd.cli.commands.') "
        "or m in ('tfkd.cli.tune', 'torch', 'ray', 'mlflow'))\n"
        "print('LOADED', code, loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=clean_env(), capture_output=True, text=True
    )
    *shown, loaded = done.stdout.strip().splitlines()
    assert loaded == "LOADED 0 []", done.stderr[-2000:]
    listed = {line.split()[0]: line.split(None, 1)[1] for line in shown if line.startswith("  ")}
    assert set(PROMISED) <= set(listed), shown
    for name in PROMISED:
        assert listed[name] == COMMANDS[name].summary


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_every_command_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: tfkd {name} ")
    assert PROMISED[name] in shown and COMMANDS[name].summary in " ".join(shown.split())


def test_version_is_the_packages():
    done = python_m_tfkd("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"tfkd {tfkd.__version__}"


@pytest.mark.parametrize(
    ("words", "needles"),
    [
        ([], ["python -m tfkd: error:", "COMMAND", "tune", "replay"]),
        (["tunee", "--mode", "lsr"], ["invalid choice: 'tunee'", "best-configs"]),
        (["best-configs"], ["python -m tfkd best-configs: error:", "--experiment"]),
        (["replay"], ["python -m tfkd replay: error:", "FOLDER"]),
    ],
)
def test_a_mistake_is_one_line_naming_the_command_as_run(words, needles):
    done = python_m_tfkd(*words)
    assert done.returncode == 2, done.stdout + done.stderr
    assert_one_line(done.stderr, *needles)


def test_a_command_line_that_starts_with_a_flag_is_tunes(capsys):
    """The form `python -m tfkd` took before it had subcommands, and `tfkd tune`, say the same."""
    words = ["--mode", "lsr", "--dataset", "digits", "--rungs", "after9", "--epochs", "5"]
    assert main(words) == 2
    legacy = capsys.readouterr().err
    assert main(["tune", *words]) == 2
    assert capsys.readouterr().err == legacy
    assert_one_line(legacy, "tfkd tune: error: --rungs after9")


def test_the_command_that_continues_a_sweep_repeats_how_the_user_ran_it(tmp_path, capsys):
    words = ["--mode", "lsr", "--dataset", "digits", "--storage", str(tmp_path / "results")]
    for prog, command in (
        ("tfkd tune", "tfkd tune"),
        ("python -m tfkd tune", "python -m tfkd tune"),
        ("tune_main.py", "python tune_main.py"),
    ):
        assert outcome.interrupted(parse_args(words, prog), "lsr-x") == 130
        said = capsys.readouterr().err.strip()
        assert said.startswith(f"{prog}: interrupted; continue with: ")
        continued = said.split("continue with: ", 1)[1]
        assert continued == f"{command} {shlex.join(words)} --name lsr-x"


def test_a_sweep_request_is_tunes_flags_with_its_defaults():
    """Code that plans sweeps without the command line (benchmarks) gets what tune would."""
    parsed = build_parser(registries=False).parse_args(["--mode", "lsr", "--dataset", "digits"])
    request = SweepRequest(mode="lsr", dataset="digits")
    assert vars(parsed) == dataclasses.asdict(request)
    flags = {a.dest for a in build_parser(registries=False)._actions if a.dest != argparse.SUPPRESS}
    assert flags - {"help"} == {f.name for f in dataclasses.fields(SweepRequest)}
