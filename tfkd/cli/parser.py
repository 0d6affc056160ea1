"""The tune command's flags: the parser, and parsing before torch, Ray or MLflow is imported.

Its defaults are tfkd.sweep.request.SweepRequest's; `parse_args` returns one (a `TuneArgs`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tfkd.cli import flags
from tfkd.cli.commands import describe
from tfkd.cli.flags import (
    Parser,
    positive_int,
)
from tfkd.core import catalog, protocol
from tfkd.core.lazy import modes
from tfkd.sweep import rungs, spec
from tfkd.sweep.plan import SMOKE_TEST
from tfkd.sweep.request import SweepRequest

PROG = "tune_main.py"  # what the tune command's messages start with when run as tune_main.py


@dataclass
class TuneArgs(SweepRequest):
    """A sweep's request as the command line gave it, and how the user ran the command: its
    messages start with `prog` ("tune_main.py", "tfkd tune"), and the command that continues the
    sweep is `command` followed by `argv`, the words the user typed after it."""

    prog: str = PROG
    argv: tuple[str, ...] = ()
    # --train-teacher's teacher run: the student's arguments and sweep, whose command continues it
    continues: tuple[TuneArgs, str] | None = None

    @property
    def command(self) -> str:
        """What runs the command again: `python tune_main.py`, `tfkd tune`, ..."""
        return f"python {self.prog}" if self.prog.endswith(".py") else self.prog


def _epochs_list(text: str) -> tuple[int, ...]:
    try:
        epochs = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like 1,50, got {text!r}") from None
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"expected positive epochs like 1,50, got {text!r}")
    return epochs


def _modes_epilog() -> str:
    """Every registered mode with its description, for --help."""
    width = max(len(name) for name in modes.names())
    lines = [f"  {name:<{width}}  {modes.get(name).description}" for name in modes.names()]
    return "teacher modes (--mode):\n" + "\n".join(lines)


def build_parser(registries: bool = True, prog: str = PROG) -> Parser:
    """The tune command's parser; `registries`: with the modes' descriptions in --help (which
    imports torch). --mode, --dataset and --model take the names tfkd.core.catalog reads without
    importing torch."""
    names = catalog.names
    parser = Parser(
        prog=prog,
        description=describe("tune"),
        epilog=_modes_epilog() if registries else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to train")
    what.add_argument(
        "--mode", required=True, choices=names("mode"), help="teacher mode (listed below)"
    )
    what.add_argument("--dataset", required=True, choices=names("dataset"), help="dataset")
    what.add_argument(
        "--model",
        default=SweepRequest.model,
        choices=names("model"),
        help="student model (default resnet18)",
    )
    what.add_argument(
        "--teacher",
        default=None,
        metavar="MODEL[@ALIAS][:RUN]",
        help="teacher for kd/rekd/dekd: a model, found in the MLflow registry as "
        "tfkd-<dataset>-<model>@best (the final weights with the best validation accuracy); "
        "MODEL@epoch-N takes the epoch-N snapshot of the newest teacher run that registered "
        "one; :RUN picks the version of a named teacher run (its sweep name or run id, e.g. "
        "resnet18@epoch-1:baseline-cifar100-resnet18-20261201-120000); tfkd_self uses the "
        "student's own architecture",
    )
    what.add_argument(
        "--teacher-checkpoint",
        default=None,
        metavar="PATH",
        help="teacher weights file (overrides the registry)",
    )
    what.add_argument(
        "--teacher-run",
        default=None,
        metavar="RUN_ID",
        help="take the teacher weights of this MLflow run",
    )
    what.add_argument(
        "--train-teacher",
        action="store_true",
        help="train the teacher first (a baseline run) if it is not registered",
    )
    what.add_argument(
        "--snapshot-epochs",
        type=_epochs_list,
        default=(),
        metavar="N[,N...]",
        help="make this baseline run a teacher run: one configuration, the original's values "
        "(implies --fixed), registering its weights at these epochs (aliases epoch-N, e.g. 1,50: "
        "Defective-KD teachers) with its final weights, all tagged with the run's name",
    )
    what.add_argument(
        "--data-dir",
        default=SweepRequest.data_dir,
        help=f"dataset root (default {SweepRequest.data_dir})",
    )
    what.add_argument("--download", action="store_true", help="download CIFAR if missing")

    flags.add_protocol_arg(what)

    how = parser.add_argument_group("search")
    how.add_argument(
        "--search-space",
        default=None,
        metavar="PATH",
        help="search-space YAML (default search_spaces/<mode>.yaml)",
    )
    how.add_argument(
        "--num-samples",
        type=positive_int,
        default=SweepRequest.num_samples,
        help="trials (default %(default)s). optuna and gp run a third of them at once (at least 2; "
        "--max-concurrent overrides), so at most a third is proposed before any result (on a Ray "
        "head declaring one GPU, 8 trials at 4 at once proposed 4 before any result, at 2 at "
        "once 2; --num-samples 12 runs 4 at once); those are the preset and scrambled Sobol "
        "points, the others TPE's or GP's once num_samples/8 of them (at least 1) have ended. "
        f"From {rungs.LARGE_SWEEP_TRIALS} trials on, ASHA keeps the top quarter at the default "
        "rung (see --rungs)",
    )
    how.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="the full schedule and ASHA's max_t (default 200)",
    )
    how.add_argument(
        "--grace-period",
        type=positive_int,
        default=None,
        help="ASHA with geometric rungs at N, 2N, 4N, ... epochs instead of --rungs",
    )
    how.add_argument(
        "--rungs",
        default=SweepRequest.rungs,
        help="ASHA judges at these points of the lr schedule: warmup, beforeK (the last epoch "
        "before drop K), afterK (the first after it); default %(default)s. The top half of the "
        "trials continues at each, the top quarter at the default rung alone in a sweep of "
        f"{rungs.LARGE_SWEEP_TRIALS} trials or more",
    )
    how.add_argument(
        "--search-alg",
        choices=spec.SEARCH_ALGS,
        default=SweepRequest.search_alg,
        help="optuna (multivariate TPE seeded by --search-seed, its good set at least 2 trials "
        "once 4 have ended; default), gp (Optuna's Gaussian-process sampler, seeded alike; "
        f"past {spec.GP_HISTORY} finished trials it models the best {spec.GP_HISTORY // 2} and "
        f"the most recent {spec.GP_HISTORY // 2}: its refit grows with the cube of them), both "
        "after a first wave of scrambled Sobol points; random or grid",
    )
    how.add_argument(
        "--metric",
        choices=(protocol.DEFAULT_SWEEP_METRIC, protocol.PAPER_SWEEP_METRIC),
        default=None,
        help="what the search and ASHA rank trials on: val_accuracy (holdout, the default); "
        f"under --protocol paper a search needs {protocol.PAPER_SWEEP_METRIC}, the test "
        "split's maximum over epochs (it selects on the test set)",
    )
    how.add_argument(
        "--fixed",
        action="store_true",
        help="no search: one trial with the original implementation's values "
        "for this model (the mode's defaults when it has none)",
    )
    how.add_argument(
        "--seed",
        type=int,
        default=SweepRequest.seed,
        help="the trials' seed: initial weights, order (default %(default)s)",
    )
    how.add_argument(
        "--search-seed",
        type=int,
        default=SweepRequest.search_seed,
        help="the sampler's seed (default %(default)s)",
    )
    how.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a trial config key (repeatable); fixes a searched key",
    )
    how.add_argument(
        "--name",
        default=None,
        help="the sweep's name: its results folder and MLflow run (default "
        "mode-dataset-model-YYYYMMDD-HHMMSS; an existing name needs --resume)",
    )
    how.add_argument(
        "--resume", action="store_true", help="continue the sweep --name after an interruption"
    )
    how.add_argument(
        "--verbose",
        action="store_true",
        help="also show every trial's own output (its per-epoch lines) besides the status table",
    )
    how.add_argument(
        "--smoke-test",
        action="store_true",
        help="tiny everything: --dataset fake (512 images), --model resnet8, --epochs 2, "
        "--num-samples 2 (those flags with other values are refused)",
    )
    flags.add_resource_args(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str = PROG) -> TuneArgs:
    """The command line, parsed and its names (--mode, --dataset, --model) checked before torch,
    Ray or MLflow is imported."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(registries=bool({"-h", "--help"} & set(argv)), prog=prog)
    namespace = parser.parse_args(argv)
    _refuse_replaced_flags(parser, namespace, argv)
    args = TuneArgs(**vars(namespace), prog=prog, argv=tuple(argv))
    return args


def _refuse_replaced_flags(parser: Parser, args: argparse.Namespace, argv: list[str]) -> None:
    """--smoke-test sets --dataset, --model, --epochs and --num-samples: one of them given with
    another value is refused, not silently replaced."""
    if not args.smoke_test:
        return
    for dest in sorted(parser.given(argv) & SMOKE_TEST.keys()):
        value, flag = getattr(args, dest), "--" + dest.replace("_", "-")
        if value != SMOKE_TEST[dest]:
            parser.error(
                f"--smoke-test trains with {flag} {SMOKE_TEST[dest]}, not {value}: give "
                f"{flag} {SMOKE_TEST[dest]}, or drop --smoke-test to train with {flag} {value}"
            )
