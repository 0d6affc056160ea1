"""`python -m tfkd ...`: the `tfkd` command (tfkd.cli.main), from any folder."""

import sys

from tfkd.cli.main import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m tfkd"))
