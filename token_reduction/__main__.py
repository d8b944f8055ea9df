"""``python -m token_reduction`` is the same as the ``token-reduction`` command."""

import sys

from token_reduction.cli import main

sys.exit(main())
