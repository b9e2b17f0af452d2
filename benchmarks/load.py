#!/usr/bin/env python3
"""The load generator, `seekserve bench load` (code: seekserve/bench/load.py)."""

import sys

from seekserve.bench.load import main

if __name__ == "__main__":
    sys.exit(main())
