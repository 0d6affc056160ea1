"""The training core: config, registries, losses and modes, models, data, one trial's training.

torch only: nothing here imports Ray, MLflow or the command line (tests/test_layers.py checks it),
so `tfkd.core.train.run_trial(config, report)` runs anywhere torch does.
"""
