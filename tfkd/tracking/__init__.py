"""Tracking on MLflow: the only package that imports MLflow (lazily: a sweep without tracking
never pays for it). Every write goes through a durable on-disk outbox, so training never waits on
the tracking server."""

from tfkd.tracking.runs import *  # noqa: F403  (split into store, outbox, ops, runs, teachers)
from tfkd.tracking.runs import main  # noqa: F401
