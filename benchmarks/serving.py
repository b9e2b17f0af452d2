#!/usr/bin/env python3
"""SeekServe beside llama-server, `seekserve bench compare` (code: seekserve/bench/serving.py)."""

import sys

from seekserve.bench.serving import main

if __name__ == "__main__":
    sys.exit(main())
