"""Write-then-rename: an artifact dir appears complete or not at all, never half-written.

`staged_dir` for a block that writes the whole dir; `new_staging_dir` + `publish_dir` where the writing spans
functions (data/prepare.py builds the staging dir during a long run and publishes it at the end).
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def new_staging_dir(out: str | Path) -> Path:
    """`out.partial`, empty: a leftover of a failed or killed run is cleared. Not created (writers make it)."""
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def publish_dir(staging: Path, out: str | Path) -> Path:
    """Replaces `out` with the complete `staging` dir by a rename."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yields an empty staging dir beside `out`; when the block ends without an error, it replaces `out`. A failed
    or killed run leaves `out` as it was and the staging dir behind, which the next run clears."""
    staging = new_staging_dir(out)
    staging.mkdir(parents=True)
    yield staging
    publish_dir(staging, out)
