"""`python -m hubd` is the same as the `hubd` console script."""

import sys

from hubd.cli import main

sys.exit(main())
