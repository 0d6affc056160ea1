"""Sweep orchestration on Ray Tune: the only package that imports Ray.

Search spaces, the sweep's spec, the tuner (searcher, scheduler, resources, fit, summary), the thin
trainable around `tfkd.core.train.run_trial`, driver callbacks, the cluster connection and the
status table. Modules that need no Ray (search_space, storage, status) import without it.
"""
