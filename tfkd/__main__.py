"""`python -m tfkd ...`: tune_main.py's command line, from any folder (tfkd.cli.tune)."""

import sys

from tfkd.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
