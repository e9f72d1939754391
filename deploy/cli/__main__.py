"""`python -m deploy.cli ...` runs the `farm` command line (what `farm serve --detach` spawns)."""

import sys

from deploy.cli import main

sys.exit(main())
