import sys

from tune_dialsum.cli import main

sys.exit(main())
