"""`python -m conductor_worker` is the `conductor-worker` command."""

import sys

from conductor_worker.cli import main

sys.exit(main())
