"""Where the CUAD development data is: $RLMPIPE_CUAD_DIR, else ../shared/data/cuad next to the checkout
(or any parent of it), else /work/shared/data/cuad. None when it is not on this machine."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cuad_dir() -> Path | None:
    candidates = []
    if os.environ.get("RLMPIPE_CUAD_DIR"):
        candidates.append(Path(os.environ["RLMPIPE_CUAD_DIR"]))
    candidates += [parent / "shared" / "data" / "cuad" for parent in ROOT.parents]
    candidates.append(Path("/work/shared/data/cuad"))
    return next((path for path in candidates if (path / "contracts").is_dir()), None)
