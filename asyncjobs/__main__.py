"""``python -m asyncjobs`` is ``asyncjobs-worker``."""

import sys

from asyncjobs.cli.worker import main

sys.exit(main())
