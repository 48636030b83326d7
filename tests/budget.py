"""How many examples the hypothesis fuzz tests draw.

``BIOX_FUZZ_SCALE`` scales them (``make mutation`` sets 0.1): under mutation testing every
mutant runs its covering tests again, and a mutant that breaks decoding or a handler's
checks fails within the first few examples. The full counts run in ``make test``.
"""

from __future__ import annotations

import os


def examples(full: int) -> int:
    return max(10, round(full * float(os.environ.get("BIOX_FUZZ_SCALE", "1"))))
