"""Analysis of tfkd sweeps: best configs, seeded reproductions, the results report, the paper suite.

Reads what `tfkd tune` wrote (MLflow runs, else the Ray results folder) and runs trials only
through `tfkd.sweep.tuner.run_configs`. An experiment (mode-dataset-model) holds several sweeps; the
commands read its newest finished one unless --sweep names another, and say which. The commands
(their flags: tfkd.cli.commands):

    tfkd best-configs --experiment NAME [--sweep SWEEP] [--top K]
    tfkd reproduce --experiment NAME [--sweep SWEEP] [--seeds N] [--top K]
    tfkd report [--experiment NAME ...] [--out DIR]
    tfkd paper-suite --dataset cifar100 [--dry-run]
"""
