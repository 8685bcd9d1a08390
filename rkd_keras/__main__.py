"""`python -m rkd_keras`: the `rkd-keras` command line."""

import sys

from rkd_keras.cli import main

sys.exit(main())
