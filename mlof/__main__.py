"""`python -m mlof` runs the `mlof` command line."""
import sys

from mlof.cli import main

sys.exit(main())
