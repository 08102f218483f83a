"""The known architectures moved to `search.spaces.known` (the spaces package's catalogue of
stage skeletons, beside the baseline space that derives from them); this name stays for
existing imports."""
from __future__ import annotations

from search.spaces.known import *  # noqa: F401,F403
from search.spaces.known import __all__  # noqa: F401
