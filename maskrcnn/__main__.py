"""`python -m maskrcnn ...` (what torchrun launches: torchrun -m maskrcnn train ...)."""
import sys

from .cli import main

sys.exit(main())
