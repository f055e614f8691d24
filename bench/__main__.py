"""`python -m bench` runs the command line, like the `bench` script."""

import sys

from bench.cli import main

sys.exit(main())
