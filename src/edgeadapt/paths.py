"""Where edgeadapt caches things it builds (tokenizers, trained tiny models). Never at import time."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$EDGEADAPT_CACHE`` (default ``~/.cache/edgeadapt``) joined with ``parts``, created."""
    root = Path(os.environ.get("EDGEADAPT_CACHE", Path.home() / ".cache" / "edgeadapt"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
