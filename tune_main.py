#!/usr/bin/env python
"""Hyper-parameter sweeps for Tf-KD and its comparison modes: `tfkd tune`, from a checkout.

    python tune_main.py --mode tfkd_reg --dataset cifar100 --model resnet18

See `python tune_main.py --help`, and `tfkd --help` for the other commands.
"""

import sys

from tfkd.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
