"""Frames as PostgreSQL's binary COPY format, built a column at a time by Arrow (no Python per row).

The server stores binary values as they come: no text to parse for each timestamp and float, which
is most of what a CSV COPY costs it. Each field is a 4-byte big-endian length (-1 for NULL) and the
value's bytes: text as UTF-8, float8 and int as big-endian numbers, timestamptz as microseconds
since 2000-01-01 UTC. The wire type of each column follows the table's SQLAlchemy type, so a column
the tables do not use is refused by name rather than sent in a shape the server would misread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, SmallInteger, String, Table

from pipelines.core.errors import BadDataError, ConfigError

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # signature, flags, no extension
TRAILER = b"\xff\xff"
NULL_FIELD = b"\xff\xff\xff\xff"
PG_EPOCH = np.datetime64("2000-01-01T00:00:00", "us")
INTEGER_WIDTH = {SmallInteger: ">i2", BigInteger: ">i8", Integer: ">i4"}  # subclasses before Integer


def _fixed_width(values: np.ndarray) -> pa.Array:
    """Each value's bytes as one binary value (a fixed-width record viewed by Arrow, then cast)."""
    width = values.dtype.itemsize
    records = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(values), [None, pa.py_buffer(np.ascontiguousarray(values).tobytes())]
    )
    return records.cast(pa.binary())


def _number_fields(values: np.ndarray, missing: np.ndarray) -> pa.Array:
    """Fixed-width numbers (already big-endian) as fields: length, value; NULL where missing."""
    records = np.empty(len(values), dtype=[("length", ">i4"), ("value", values.dtype)])
    records["length"] = values.dtype.itemsize
    records["value"] = values
    fields = _fixed_width(records)
    if missing.any():
        fields = pc.if_else(pa.array(missing), pa.scalar(NULL_FIELD, pa.binary()), fields)
    return fields


def _text_fields(series: pd.Series) -> pa.Array:
    # Arrow's own text of each value, as the CSV COPY this replaced wrote it.
    texts = pa.Array.from_pandas(series).cast(pa.string()).cast(pa.binary())
    missing = texts.is_null().to_numpy(zero_copy_only=False)
    lengths = pc.binary_length(texts).fill_null(0).to_numpy(zero_copy_only=False)
    prefixes = _fixed_width(np.where(missing, -1, lengths).astype(">i4"))
    return pc.binary_join_element_wise(prefixes, texts.fill_null(b""), b"")


def _integer_values(series: pd.Series, dtype: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    numbers = pd.to_numeric(series, errors="coerce")
    missing = numbers.isna().to_numpy()
    bad = series.notna().to_numpy() & missing
    values = numbers.fillna(0).to_numpy(dtype="float64")
    info = np.iinfo(np.dtype(dtype))
    bad |= (values != np.round(values)) | (values < info.min) | (values > info.max)
    if bad.any():
        raise BadDataError(
            f"{where}: values that are not {info.bits}-bit integers, e.g. {series[bad].head(3).tolist()}"
        )
    return values.astype(dtype), missing


def _fields(series: pd.Series, column_type: Any, where: str) -> pa.Array:
    if isinstance(column_type, String):  # Text and VARCHAR too
        return _text_fields(series)
    if isinstance(column_type, DateTime):
        times = pd.to_datetime(series, utc=True)
        missing = times.isna().to_numpy()
        micros = times.dt.tz_localize(None).to_numpy(dtype="datetime64[us]") - PG_EPOCH
        return _number_fields(np.where(missing, 0, micros.astype("int64")).astype(">i8"), missing)
    if isinstance(column_type, Float):
        numbers = pd.to_numeric(series, errors="coerce").astype("float64")
        missing = numbers.isna().to_numpy()
        bad = series.notna().to_numpy() & missing
        if bad.any():
            raise BadDataError(f"{where}: values that are not numbers, e.g. {series[bad].head(3).tolist()}")
        return _number_fields(numbers.fillna(0).to_numpy().astype(">f8"), missing)
    if isinstance(column_type, Boolean):
        flags = pd.array(series, dtype="boolean")
        return _number_fields(flags.to_numpy(dtype="bool", na_value=False).astype(">u1"), flags.isna())
    if isinstance(column_type, Integer):
        width = next(dtype for kind, dtype in INTEGER_WIDTH.items() if isinstance(column_type, kind))
        return _number_fields(*_integer_values(series, width, where))
    raise ConfigError(f"{where}: no binary COPY for the column type {column_type!r}")


def copy_rows(frame: pd.DataFrame, table: Table) -> bytes:
    """The frame's rows in binary COPY format (without HEADER and TRAILER), its columns in order."""
    count = np.full(len(frame), len(frame.columns), dtype=">i2")
    fields = [_fixed_width(count)]
    for name in frame.columns:
        where = f"{table.name}.{name}"
        try:
            fields.append(_fields(frame[name], table.c[name].type, where))
        except (pa.ArrowException, ValueError, TypeError) as exc:  # e.g. a text column holding numbers and text
            raise BadDataError(f"{where}: values its column type cannot take: {exc}") from exc
    rows = pc.binary_join_element_wise(*fields, b"")
    _, offsets, data = rows.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32, count=len(rows) + 1, offset=rows.offset * 4)
    return bytes(data.slice(int(bounds[0]), int(bounds[-1] - bounds[0])).to_pybytes())
