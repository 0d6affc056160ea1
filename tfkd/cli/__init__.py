"""The command line: tune_main's parse -> plan -> run -> report, flag groups, teacher options."""
