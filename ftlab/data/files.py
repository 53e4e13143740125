"""Reading rows from local files (JSON, JSON lines, CSV, TSV, Parquet; optionally gzipped) or the hub,
through `datasets`, with one-sentence errors that name the file."""

from __future__ import annotations

import codecs
import gzip
from pathlib import Path

from datasets import Dataset, load_dataset

from ftlab.errors import FTLabError

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def _builder(path: Path) -> tuple[str, dict[str, str]]:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind not in _BUILDERS:
        raise FTLabError(f"data file {path} has an unknown type; use .json, .jsonl, .csv, .tsv or .parquet")
    return _BUILDERS[kind], ({"delimiter": "\t", "quoting": 3} if kind == ".tsv" else {})


def check_utf8(path: Path) -> None:
    """Text files must be UTF-8 (a byte-order mark is fine): name the line and the bytes where one is not."""
    opener = gzip.open if path.suffix == ".gz" else open
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                at = err.start
                bad = chunk[at : at + 4]
                line += chunk.count(b"\n", 0, at)
                raise FTLabError(
                    f"data file {path} is not UTF-8 text: line {line} (byte {offset + at}) holds {bad!r}; "
                    "convert it, e.g. iconv -f latin1 -t utf-8"
                ) from None
            line += chunk.count(b"\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise FTLabError(f"data file {path} is not UTF-8 text: it ends inside a multi-byte character") from None


def load_rows(spec: str) -> Dataset:
    """Rows from a local file, or from a hub dataset written `name` or `name:split` (default split train)."""
    path = Path(spec).expanduser()
    if path.is_file():
        builder, options = _builder(path)
        if path.stat().st_size == 0:
            raise FTLabError(f"data file {spec} has no rows")
        if builder != "parquet":
            check_utf8(path)
        try:
            rows = load_dataset(builder, data_files=str(path), split="train", **options)
        except Exception as err:  # datasets raises many types for unreadable files
            cause = err.__cause__ or err
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise FTLabError(f"could not read data file {path}: {reason}") from err
    elif any(s in _BUILDERS or s == ".gz" for s in path.suffixes) or spec.startswith(("/", ".", "~")):
        raise FTLabError(f"data file {spec} not found")
    else:
        name, _, split = spec.partition(":")
        try:
            rows = load_dataset(name, split=split or "train")
        except Exception as err:
            raise FTLabError(f"could not load dataset {spec} from the hub: {str(err).splitlines()[0]}") from err
    if len(rows) == 0:
        raise FTLabError(f"data file {spec} has no rows")
    return rows


def require_columns(rows: Dataset, source: str, keys: list[str]) -> None:
    """Refuse, naming the file and its columns, a data file that lacks one of `keys`."""
    for key in keys:
        if key not in rows.column_names:
            raise FTLabError(
                f"data file {source} has no '{key}' column (columns: {', '.join(rows.column_names)}); "
                "set the datamodule's *_field options to map them"
            )
