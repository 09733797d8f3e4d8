"""Write-then-rename: an artifact dir appears complete or not at all, never half-written."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yields an empty staging dir beside `out` (`out.partial`); when the block ends without an error, the staging
    dir replaces `out` by a rename. A failed or killed run leaves `out` as it was and the staging dir behind, which
    the next run clears."""
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
