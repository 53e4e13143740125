"""Reading a row's text fields by type: a string where text is expected, never the Python text of a dict.

Numbers are written as text only where a datamodule documents it (e.g. an SFT answer that is a bare number);
lists, dicts and booleans in a text field are refused with the file, row and key, since training on
`str({...})` would teach the model Python's repr of the data, silently.
"""

from __future__ import annotations

from typing import Any

from ftlab.errors import FTLabError


def text_value(value: Any, where: str, key: str, numbers: bool = False) -> str:
    """`value` of field `key` as text: a string as it is, an int or float as `str(value)` when `numbers`."""
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    kind = type(value).__name__
    allowed = "text or a number" if numbers else "text"
    raise FTLabError(f"{where} field '{key}' holds a {kind} ({_short(value)}), not {allowed}")


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
