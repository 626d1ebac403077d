"""``python -m warden`` is the same program as the ``warden`` command."""

from __future__ import annotations

import sys

from warden.cli import main

sys.exit(main())
