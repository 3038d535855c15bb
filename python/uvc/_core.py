"""The Swift core as the numpy layer sees it: the extension `uvc._native` and the layouts it
lists (the names and order of every flat encoding it reads or writes), read once at import."""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from . import _native

__all__ = ["LAYOUTS", "native", "encode_state", "decode_state", "check_format", "seed_bits"]

native = _native
LAYOUTS: dict = json.loads(_native.layouts())


def seed_bits(seed: int) -> int:
    """A seed in [0, 2**64) as the int64 with its bit pattern (how the core takes a uint64)."""
    return seed - 2**64 if seed >= 2**63 else seed


def encode_state(data: bytes) -> str:
    """A core state string as JSON-serialisable text (base64)."""
    return base64.b64encode(data).decode("ascii")


def decode_state(fn: str, text: Any) -> bytes:
    """The bytes of the base64 ``state`` entry of a state dict; ``fn`` names the caller."""
    if not isinstance(text, str):
        raise TypeError(f"{fn}: state must be a base64 str, got {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{fn}: state is not valid base64 text") from None


def check_format(fn: str, d: Any, expected: str, old: dict[str, str]) -> None:
    """Raises ValueError unless ``d`` is a dict with format ``expected``; ``old`` maps formats
    this version no longer reads to what saved them."""
    if isinstance(d, dict) and d.get("format") == expected:
        return
    got = f"format {d.get('format')!r}" if isinstance(d, dict) else f"a {type(d).__name__}"
    saved_by = old.get(d.get("format")) if isinstance(d, dict) and isinstance(d.get("format"), str) else None
    hint = f" (saved by {saved_by}: resume it with that version, or start again)" if saved_by else ""
    raise ValueError(f"{fn}: expected a dict with format {expected!r}, got {got}{hint}")
