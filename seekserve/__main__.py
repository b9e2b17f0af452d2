import sys

from seekserve.cli import main

sys.exit(main())
