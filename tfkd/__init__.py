"""tfkd: Teacher-free Knowledge Distillation as hyper-parameter searches.

Layers, each a package that imports only those below it: `tfkd.core` (torch only: config,
registries, losses, modes, models, data, `tfkd.core.train.run_trial`), `tfkd.tracking` (the only
package importing MLflow), `tfkd.sweep` (the only package importing Ray: a sweep's request, plan,
teacher and run), `tfkd.analysis` (best configs, reproductions, the report, the paper suite),
`tfkd.cli` (the `tfkd` command and its subcommands). See docs/architecture.md, "Layers".
"""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)
