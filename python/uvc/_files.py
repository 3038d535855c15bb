"""Reading the JSON files uvc writes (plans, latency tables, exported models' arch.json)."""
from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["read_json"]


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON value in the file at ``path``. Raises FileNotFoundError when there is none, and
    ValueError starting with ``what`` when the file is truncated or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} is truncated or not JSON: {e}") from None
