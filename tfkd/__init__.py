"""tfkd: Teacher-free Knowledge Distillation as hyper-parameter searches.

Library entry points: `tfkd.train.run_trial`, `tfkd.losses`, `tfkd.models.build`,
`tfkd.data.load` / `tfkd.data.DeviceLoader`, `tfkd.modes`. Ray lives only in `tfkd.search`,
MLflow only in `tfkd.tracking`.
"""

__version__ = "0.1.0"
