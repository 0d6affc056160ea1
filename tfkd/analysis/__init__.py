"""Analysis of tfkd sweeps: best configs, seeded reproductions, the results report, the paper suite.

Reads what tune_main.py wrote (MLflow runs, else the Ray results folder) and runs trials only
through `tfkd.sweep.tuner.run_configs`. An experiment (mode-dataset-model) holds several sweeps; the
commands read its newest finished one unless --sweep names another, and say which. Entry points:

    python -m analysis.best_configs --experiment NAME [--sweep SWEEP] [--top K]
    python -m analysis.reproduce --experiment NAME [--sweep SWEEP] [--seeds N] [--top K]
    python -m analysis.report [--experiment NAME ...] [--out DIR]
    python -m analysis.paper_suite --dataset cifar100 [--dry-run]
"""
