"""``python -m vqa_cli.testing tiny-checkpoint DIR``: see ``checkpoints.main``."""

import sys

from vqa_cli.testing.checkpoints import main

sys.exit(main())
