"""A Parquet column of float lists straight into numpy: the pages' floats as they lie.

Arrow and DuckDB read a `FLOAT[]` column at 150-250 MB/s: they expand a repetition and a
definition level for every float and build the list offsets from them. Where every float is
present (the definition levels are all at their maximum) and stored PLAIN (or
BYTE_STREAM_SPLIT), a page's floats are one contiguous block after its levels, so this module
walks the column chunk's pages itself: it parses each page header (Thrift compact protocol),
decompresses with Arrow's own codecs, checks the definition levels, finds where each list
starts from the repetition levels (repeated byte patterns are skipped in one numpy compare,
so a chunk of equal-width lists costs a few segment parses, not one per row), and views the
floats without copying them. Anything else (a dictionary page, a null, a nested list, an
unknown codec) gives None, and the caller reads the column with Arrow instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Parquet's enums (parquet.thrift)
_DATA_PAGE, _INDEX_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 1, 2, 3
_PLAIN, _RLE, _BYTE_STREAM_SPLIT = 0, 3, 9
_CODECS = {
    "UNCOMPRESSED": None,
    "SNAPPY": "snappy",
    "GZIP": "gzip",
    "BROTLI": "brotli",
    "ZSTD": "zstd",
    "LZ4_RAW": "lz4_raw",
}


@dataclass(frozen=True)
class FloatLists:
    """A column chunk's lists: list i is the floats `offsets[i]` to `offsets[i + 1]` of the
    chunk, which lie in its pages (page p holds floats `page_starts[p]` onwards)."""

    pages: list[np.ndarray]  # float32, flat: views of the file or its decompressed pages
    page_starts: np.ndarray  # int64, one more than the pages: the last is the total
    offsets: np.ndarray  # int64, one more than the lists
    # Where each page's first float lies in the file, when every page is the file's own bytes
    # (stored PLAIN, uncompressed): a list is then read where it lies, in one copy.
    page_bytes: np.ndarray | None = None

    def file_offsets(self, rows: np.ndarray, dim: int) -> np.ndarray | None:
        """The file offsets of lists `rows`' first floats (each `dim` wide), or None where a
        page is not the file's own bytes or a list is split across pages."""
        if self.page_bytes is None:
            return None
        begins = self.offsets[rows]
        pages = np.searchsorted(self.page_starts, begins, side="right") - 1
        if not (begins + dim <= self.page_starts[pages + 1]).all():
            return None
        return self.page_bytes[pages] + 4 * (begins - self.page_starts[pages])

    def widths(self, rows: np.ndarray) -> np.ndarray:
        return self.offsets[rows + 1] - self.offsets[rows]

    def gather(self, rows: np.ndarray, out: np.ndarray, dest: np.ndarray) -> None:
        """Copy lists `rows` (each as wide as `out`) into `out[dest]`: one copy, page by
        page, each page's rows taken as rows of a 2-D view of it."""
        dim = out.shape[1]
        begins = self.offsets[rows]
        pages = np.searchsorted(self.page_starts, begins, side="right") - 1
        inside = begins + dim <= self.page_starts[pages + 1]
        for page in np.unique(pages[inside]):
            mine = np.flatnonzero((pages == page) & inside)
            local = begins[mine] - self.page_starts[page]
            phase = int(local[0] % dim) if dim else 0
            if dim and (local % dim == phase).all():
                floats = self.pages[page]
                usable = (len(floats) - phase) // dim * dim
                view = floats[phase : phase + usable].reshape(-1, dim)
                out[dest[mine]] = view[(local - phase) // dim]
            else:
                out[dest[mine]] = self.pages[page][local[:, None] + np.arange(dim)]
        for row in np.flatnonzero(~inside):  # a list split across pages
            begin = int(begins[row])
            out[dest[row]] = self._floats(begin, begin + dim)

    def _floats(self, begin: int, end: int) -> np.ndarray:
        first = int(np.searchsorted(self.page_starts, begin, side="right")) - 1
        parts = []
        for page in range(first, len(self.pages)):
            base = int(self.page_starts[page])
            if base >= end:
                break
            parts.append(self.pages[page][max(begin - base, 0) : end - base])
        return np.concatenate(parts)


class _Unsupported(Exception):
    """A layout this reader does not take; the caller falls back to Arrow."""


def read_float_lists(
    file: pa.NativeFile | pa.Buffer, column: pq.ColumnChunkMetaData, schema: pq.ColumnSchema
) -> FloatLists | None:
    """The float lists of one column chunk (`column`, described by `schema`) of a Parquet
    file (open, or all its bytes), or None where the chunk is laid out in a way this reader
    does not take."""
    try:
        return _read(file, column, schema)
    except (_Unsupported, IndexError, ValueError):
        return None


def _read(
    file: pa.NativeFile | pa.Buffer, column: pq.ColumnChunkMetaData, schema: pq.ColumnSchema
) -> FloatLists:
    if schema.physical_type != "FLOAT" or schema.max_repetition_level != 1:
        raise _Unsupported("not a list of float32")
    if column.compression not in _CODECS:
        raise _Unsupported(column.compression)
    codec = _CODECS[column.compression]
    max_def = schema.max_definition_level
    start = column.data_page_offset
    if column.dictionary_page_offset is not None and column.has_dictionary_page:
        raise _Unsupported("dictionary-encoded")
    if isinstance(file, pa.Buffer):
        chunk = file.slice(start, column.total_compressed_size)
    else:
        file.seek(start)
        chunk = file.read_buffer(column.total_compressed_size)  # a view where it is mapped
    view = memoryview(chunk)
    values: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    total = 0
    position = 0
    while position < len(view) and total < column.num_values:
        header, position = _struct(view, position)
        kind, size = header.get(1), header.get(3)
        if size is None or position + size > len(view):
            raise _Unsupported("truncated page")
        body = chunk.slice(position, size)
        position += size
        if kind == _INDEX_PAGE:
            continue
        if kind == _DATA_PAGE:
            page_values, page_starts, count = _page_v1(body, header, codec, max_def)
        elif kind == _DATA_PAGE_V2:
            page_values, page_starts, count = _page_v2(body, header, codec, max_def)
        else:
            raise _Unsupported(f"page type {kind}")
        values.append(page_values)
        starts.append(page_starts + total)
        total += count
    if total != column.num_values or not starts or len(starts[0]) == 0 or starts[0][0] != 0:
        raise _Unsupported("the chunk does not start a list or misses values")
    offsets = np.concatenate([*starts, np.array([total], dtype=np.int64)])
    page_starts = np.cumsum([0] + [len(page) for page in values], dtype=np.int64)
    return FloatLists(values, page_starts, offsets, _file_bytes(values, chunk, start))


def _file_bytes(pages: list[np.ndarray], chunk: pa.Buffer, start: int) -> np.ndarray | None:
    """Each page's file offset, where every page's floats are a view of the chunk's bytes."""
    found = []
    for page in pages:
        address = page.__array_interface__["data"][0]
        if not chunk.address <= address < chunk.address + chunk.size:
            return None  # decompressed, or rearranged (BYTE_STREAM_SPLIT)
        found.append(start + address - chunk.address)
    return np.array(found, dtype=np.int64)


def _page_v1(
    body: pa.Buffer, header: dict, codec: str | None, max_def: int
) -> tuple[np.ndarray, np.ndarray, int]:
    info = header.get(5) or {}
    count, encoding = info.get(1), info.get(2)
    if info.get(3, _RLE) != _RLE or info.get(4, _RLE) != _RLE:
        raise _Unsupported("levels not RLE")
    data = _decompressed(body, header.get(2), codec)
    raw = memoryview(data)
    rep_length = int.from_bytes(raw[0:4], "little")
    rep = raw[4 : 4 + rep_length]
    at = 4 + rep_length
    def_length = int.from_bytes(raw[at : at + 4], "little")
    definitions = raw[at + 4 : at + 4 + def_length]
    at += 4 + def_length
    return _page(data, at, rep, definitions, count, encoding, max_def)


def _page_v2(
    body: pa.Buffer, header: dict, codec: str | None, max_def: int
) -> tuple[np.ndarray, np.ndarray, int]:
    info = header.get(8) or {}
    count, nulls, encoding = info.get(1), info.get(2), info.get(4)
    def_length, rep_length = info.get(5), info.get(6)
    if nulls or def_length is None or rep_length is None:
        raise _Unsupported("nulls in a v2 page")
    raw = memoryview(body)
    rep = raw[:rep_length]
    definitions = raw[rep_length : rep_length + def_length]
    levels = rep_length + def_length
    data = body.slice(levels)
    if info.get(7, True) and codec is not None:
        data = _decompressed(data, header.get(2) - levels, codec)
    return _page(data, 0, rep, definitions, count, encoding, max_def, v2=True)


def _page(
    data: pa.Buffer,
    at: int,
    rep: memoryview,
    definitions: memoryview,
    count: int | None,
    encoding: int | None,
    max_def: int,
    v2: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    if count is None or count <= 0:
        raise _Unsupported("empty page")
    if not _all_equal(definitions, count, _width(max_def), max_def):
        raise _Unsupported("a null or an empty list")
    starts = _zeros(rep, count)
    if encoding == _PLAIN:
        floats = np.frombuffer(data, dtype="<f4", count=count, offset=at)
    elif encoding == _BYTE_STREAM_SPLIT:
        streams = np.frombuffer(data, dtype=np.uint8, count=4 * count, offset=at)
        floats = np.ascontiguousarray(streams.reshape(4, count).T).view("<f4").reshape(-1)
    else:
        raise _Unsupported(f"value encoding {encoding}")
    return floats, starts, count


def _decompressed(body: pa.Buffer, size: int | None, codec: str | None) -> pa.Buffer:
    if codec is None:
        return body
    if size is None:
        raise _Unsupported("no uncompressed size")
    return pa.decompress(body, decompressed_size=size, codec=codec)


def _width(max_level: int) -> int:
    return int(max_level).bit_length()


# -- the RLE / bit-packed hybrid encoding of levels ----------------------------------------------


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, at
        shift += 7


def _unpacked(data: memoryview, at: int, groups: int, width: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8, count=groups * width, offset=at)
    bits = np.unpackbits(raw, bitorder="little")
    if width == 1:
        return bits
    return bits.reshape(-1, width) @ (1 << np.arange(width, dtype=np.uint8))


def _all_equal(data: memoryview, count: int, width: int, value: int) -> bool:
    """Whether all `count` levels of the stream equal `value` (in practice one RLE run)."""
    at = seen = 0
    size = (width + 7) // 8
    while seen < count:
        header, at = _varint(data, at)
        if header & 1:
            groups = header >> 1
            take = min(groups * 8, count - seen)
            if not (_unpacked(data, at, groups, width)[:take] == value).all():
                return False
            at += groups * width
        else:
            take = min(header >> 1, count - seen)
            if take <= 0 or int.from_bytes(data[at : at + size], "little") != value:
                return False
            at += size
        seen += take
    return True


def _zeros(data: memoryview, count: int) -> np.ndarray:
    """The positions of the zero levels among `count` repetition levels of bit width 1: where
    each list starts. A byte block that repeats (equal-width lists encode to the same bytes
    row after row) is found once and taken in one vectorised compare."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    found: list[np.ndarray] = []
    at = seen = 0
    # A segment boundary where a list started: (byte, level, how many arrays `found` held)
    anchor: tuple[int, int, int] | None = None
    while seen < count:
        segment = at
        header, at = _varint(data, at)
        bitpacked = header & 1
        first = (data[at] & 1) if bitpacked else data[at]
        if first == 0:  # this segment starts a list: try repeating the block since the last one
            if anchor is not None:
                skipped = _repeat(buffer, found, anchor, segment, seen, count)
                if skipped is not None:
                    at, seen = skipped
                    anchor = None
                    continue
            anchor = (segment, seen, len(found))
        if bitpacked:
            groups = header >> 1
            take = min(groups * 8, count - seen)
            levels = _unpacked(data, at, groups, 1)[:take]
            found.append(np.flatnonzero(levels == 0) + seen)
            at += groups
        else:
            take = min(header >> 1, count - seen)
            value = data[at]
            at += 1
            if take <= 0 or value > 1:
                raise _Unsupported("bad repetition level")
            if value == 0:
                found.append(np.arange(seen, seen + take, dtype=np.int64))
        seen += take
    return np.concatenate(found).astype(np.int64, copy=False) if found else np.zeros(0, np.int64)


def _repeat(
    buffer: np.ndarray,
    found: list[np.ndarray],
    anchor: tuple[int, int, int],
    segment: int,
    seen: int,
    count: int,
) -> tuple[int, int] | None:
    """Where the bytes from the last list start (`anchor`) to this one (`segment`) repeat
    whole from here, take every repetition at once: their list starts are the block's,
    shifted. Returns the byte and level after them, or None where the block does not repeat."""
    byte, level, index = anchor
    length, levels = segment - byte, seen - level
    if length <= 0 or levels <= 0:
        return None
    block = buffer[byte:segment]
    times = min((len(buffer) - segment) // length, (count - seen) // levels)
    if times < 1 or not np.array_equal(buffer[segment : segment + length], block):
        return None
    following = buffer[segment : segment + times * length].reshape(times, length)
    same = (following == block).all(axis=1)
    times = int(same.argmin()) if not same.all() else times
    starts = np.concatenate(found[index:]) - level if len(found) > index else np.zeros(0, np.int64)
    shifts = seen + levels * np.arange(times, dtype=np.int64)
    found.append((shifts[:, None] + starts[None, :]).reshape(-1))
    return segment + times * length, seen + times * levels


# -- Thrift's compact protocol, as much as a page header needs ----------------------------------


def _zigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def _struct(data: memoryview, at: int) -> tuple[dict, int]:
    fields: dict[int, object] = {}
    field = 0
    while True:
        byte = data[at]
        at += 1
        if byte == 0:
            return fields, at
        kind, delta = byte & 0x0F, byte >> 4
        if delta:
            field += delta
        else:
            raw, at = _varint(data, at)
            field = _zigzag(raw)
        fields[field], at = _value(data, at, kind)


def _value(data: memoryview, at: int, kind: int, in_collection: bool = False) -> tuple[object, int]:
    if kind in (1, 2):  # booleans: in the field header, or a byte inside a collection
        if in_collection:
            return data[at] == 1, at + 1
        return kind == 1, at
    if kind == 3:
        return data[at], at + 1
    if kind in (4, 5, 6):
        raw, at = _varint(data, at)
        return _zigzag(raw), at
    if kind == 7:
        return bytes(data[at : at + 8]), at + 8
    if kind == 8:
        size, at = _varint(data, at)
        return bytes(data[at : at + size]), at + size
    if kind in (9, 10):
        byte = data[at]
        at += 1
        size, element = byte >> 4, byte & 0x0F
        if size == 15:
            size, at = _varint(data, at)
        items = []
        for _ in range(size):
            item, at = _value(data, at, element, in_collection=True)
            items.append(item)
        return items, at
    if kind == 11:
        size, at = _varint(data, at)
        if size == 0:
            return {}, at
        types = data[at]
        at += 1
        pairs = {}
        for _ in range(size):
            key, at = _value(data, at, types >> 4, in_collection=True)
            pairs[key], at = _value(data, at, types & 0x0F, in_collection=True)
        return pairs, at
    if kind == 12:
        return _struct(data, at)
    raise _Unsupported(f"thrift type {kind}")
