"""Errors a user can fix: tune_main prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input or environment (flag, file, server, cluster); the message says how to fix it."""
