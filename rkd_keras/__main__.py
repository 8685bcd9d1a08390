import sys

from rkd_keras.cli import main

sys.exit(main())
