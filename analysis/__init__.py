"""Analysis of tfkd sweeps: best configs, seeded reproductions, the results report, the paper suite.

Reads what tune_main.py wrote (MLflow runs, else the Ray results folder) and runs trials only
through `tfkd.search.run_configs`. The command-line entry points:

    python -m analysis.best_configs --experiment NAME [--top K]
    python -m analysis.reproduce --experiment NAME --seeds 3 [--epochs 200] [--top K]
    python -m analysis.report [--experiment NAME ...] [--out DIR]
    python -m analysis.paper_suite --dataset cifar100 [--dry-run]
"""
