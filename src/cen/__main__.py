"""``python -m cen`` (also what ``torchrun -m cen`` runs)."""

import sys

from cen.cli.main import main

sys.exit(main())
