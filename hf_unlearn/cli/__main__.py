"""``python -m hf_unlearn.cli``: the ``hf-unlearn`` command without the installed console script."""

import sys

from . import main

sys.exit(main())
