"""Sweep orchestration on Ray Tune: the only package that imports Ray.

Search spaces, the sweep's spec, the tuner (searcher, scheduler, resources, fit), the thin trainable
around `tfkd.core.train.run_trial`, driver callbacks, the summary, the cluster connection, the
status table and the sweep run's comparison files. Modules that need no Ray at import (search_space,
spec, storage, status, sweep_files, record, cluster, processes, watchdog) import without it.
"""
