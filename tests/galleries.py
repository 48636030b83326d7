"""Synthetic galleries for the unit tests, built once and copied after.

Building three 1 500-identity galleries takes seconds; copying them, milliseconds. Under
mutation testing every mutant runs the workflow tests again, so the copies are kept in
the temporary directory, keyed by the code that builds them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from biox.settings import Settings
from biox.sim import galleries

SRC = Path(galleries.__file__).resolve().parents[1]
BUILDERS = [*sorted((SRC / "sim").glob("*.py")), *sorted((SRC / "gallery").glob("*.py"))]


def build(settings: Settings, codes: Iterable[str], size: int, seed: int) -> None:
    """``codes``' galleries of ``size`` identities, where ``settings`` looks for them."""
    codes = list(codes)
    if settings.database_url:  # a server database: nothing to copy, build in place
        for code in codes:
            galleries.build_gallery(settings, code, size, seed)
        return
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in BUILDERS)).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "biox-test-galleries" / f"{seed}-{size}-{digest}"
    if not cache.exists():
        work = Path(tempfile.mkdtemp(prefix="building-", dir=cache.parent.parent))
        staged = settings.model_copy(update={"data_dir": work})
        for code in ("us", "mx", "sv"):
            galleries.build_gallery(staged, code, size, seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(work, cache)  # atomic: a concurrent builder's copy is as good
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
    for code in codes:
        shutil.copytree(cache / code, settings.participant_dir(code), dirs_exist_ok=True)
