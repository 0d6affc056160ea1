"""The `tfkd` command: its dispatcher (main), `tfkd tune` (tune, parser, outcome, saved_flags),
the other commands' front ends (commands/), and the flags and exit codes they share (flags)."""
