"""`python -m hubd.hubctl` is the same as the `hubctl` console script."""

import sys

from hubd.hubctl import main

sys.exit(main())
