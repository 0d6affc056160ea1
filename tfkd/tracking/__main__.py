"""`python -m tfkd.tracking replay FOLDER...`: send what a sweep's outboxes still hold."""

import sys

from tfkd.tracking.replay import main

if __name__ == "__main__":
    sys.exit(main())
