"""``python -m asyncjobs`` is ``asyncjobs-worker``."""

import sys

from asyncjobs.cli.entry import main

if __name__ == "__main__":  # not when multiprocessing's spawn re-imports it (--key-prefix children)
    sys.exit(main())
