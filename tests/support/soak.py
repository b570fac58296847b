"""How many times the chaos tests repeat their rounds: ``SHOAL_SOAK`` (default 1).

CI runs every chaos test once; ``SHOAL_SOAK=20 make test`` (or the same on one file)
runs each one's rounds twenty times over, for a longer soak of the same properties.
"""

from __future__ import annotations

import os

SOAK = max(1, int(os.environ.get("SHOAL_SOAK", "1") or "1"))
