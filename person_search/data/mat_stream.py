"""A streaming reader for the struct arrays of MATLAB level-5 MAT-files (the CUHK-SYSU TestG<k>.mat files).

``scipy.io.loadmat`` turns every field of every struct element into its own numpy array; the TestG4000 file
holds 2,900 x 4,000 gallery entries of three fields each, which takes minutes and more than 10 GB. This module
reads one top-level struct variable element by element (uncompressed, or zlib-compressed per variable as MATLAB
saves by default), without holding the file in memory:

- :func:`open_struct` yields, per struct element, one complete ``miMATRIX`` element (bytes) per field;
- :func:`decode` turns such an element into what ``loadmat`` (default options) would give for it, for small
  values (structs, cells, chars, numeric matrices);
- :func:`struct_field_offsets` + :func:`leaf_headers` locate the field values of a large struct array element
  with numpy instead of one Python call per value, and :class:`StringTable` turns its char values into integer
  ids of distinct strings (one Python string per distinct name, not per entry).

Only what the CUHK-SYSU files use is supported (little-endian level-5 files; struct, cell, char and real numeric
classes). Anything else raises :class:`MatStreamError`, so callers can fall back to ``loadmat``.
Format reference: MathWorks, "MAT-File Format" (level 5: 128-byte header, then tagged data elements; a tag whose
upper 16 bits are non-zero is a 'small data element' holding 1..4 bytes in its second word).
"""
import struct
import zlib

import numpy as np

__all__ = ["MatStreamError", "open_struct", "decode", "struct_field_offsets", "leaf_headers", "leaf_numeric",
           "StringTable"]

MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
MX_CELL, MX_STRUCT, MX_CHAR = 1, 2, 4
_MI_DTYPES = {1: "i1", 2: "u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8", 12: "<i8", 13: "<u8"}
_MX_DTYPES = {6: np.float64, 7: np.float32, 8: np.int8, 9: np.uint8, 10: np.int16, 11: np.uint16, 12: np.int32,
              13: np.uint32, 14: np.int64, 15: np.uint64}
# Char data types: miINT8/miUINT8 (one byte a char), miUINT16 (UTF-16 code units, MATLAB's default), miUTF8/16.
_CHAR_CODECS = {1: "latin-1", 2: "latin-1", 4: "utf-16-le", 16: "utf-8", 17: "utf-16-le"}
_COMPLEX_FLAG = 0x800
_READ_CHUNK = 1 << 20
_INFLATE_CHUNK = 1 << 24


class MatStreamError(ValueError):
    """The file uses a MAT-file feature this reader does not support, or is malformed."""


def _pad8(n):
    return n + (-n % 8)


def _element(buf, offset, end=None):
    """(type, data memoryview, offset after the padded element) of the data element at ``offset`` of ``buf``."""
    end = len(buf) if end is None else end
    if offset + 8 > end:
        raise MatStreamError(f"truncated data element at byte {offset}")
    word, size = struct.unpack_from("<II", buf, offset)
    if word >> 16:  # small data element: type and size in the first word, data in the second
        mi_type, size = word & 0xFFFF, word >> 16
        if size > 4:
            raise MatStreamError(f"small data element of {size} bytes at byte {offset}")
        return mi_type, memoryview(buf)[offset + 4:offset + 4 + size], offset + 8
    if offset + 8 + size > end:
        raise MatStreamError(f"data element at byte {offset} runs past its parent ({size} bytes)")
    return word, memoryview(buf)[offset + 8:offset + 8 + size], offset + 8 + _pad8(size)


def _numbers(mi_type, data):
    if mi_type not in _MI_DTYPES:
        raise MatStreamError(f"unsupported data type {mi_type}")
    item = np.dtype(_MI_DTYPES[mi_type]).itemsize
    if len(data) % item:
        raise MatStreamError(f"{len(data)} bytes of data type {mi_type} do not divide into {item}-byte values")
    return np.frombuffer(data, dtype=_MI_DTYPES[mi_type])


def _matrix_head(read_element):
    """Array class, dims and name of a miMATRIX, from its first three sub-elements (``read_element()`` gives the
    next one as (type, data))."""
    mi_type, flags = read_element()
    if mi_type != MI_UINT32 or len(flags) != 8:
        raise MatStreamError("miMATRIX without array flags")
    flags = struct.unpack("<II", flags)[0]
    if flags & _COMPLEX_FLAG:
        raise MatStreamError("complex arrays are not supported")
    mi_type, dims = read_element()
    if mi_type != MI_INT32 or len(dims) < 8 or len(dims) % 4:
        raise MatStreamError("miMATRIX without dimensions")
    dims = tuple(int(d) for d in np.frombuffer(dims, "<i4"))
    if min(dims) < 0:
        raise MatStreamError(f"negative dimension in {dims}")
    mi_type, name = read_element()
    if mi_type != MI_INT8:
        raise MatStreamError("miMATRIX without a name element")
    return flags & 0xFF, dims, bytes(name).decode("latin-1")


def _field_names(read_element):
    mi_type, width = read_element()
    if mi_type != MI_INT32 or len(width) != 4:
        raise MatStreamError("struct without a field name length")
    width = struct.unpack("<i", width)[0]
    mi_type, names = read_element()
    if mi_type != MI_INT8 or width <= 0 or len(names) % width:
        raise MatStreamError("struct with malformed field names")
    names = bytes(names)
    return tuple(names[i:i + width].split(b"\0", 1)[0].decode("latin-1") for i in range(0, len(names), width))


def _size(dims):
    return int(np.prod(dims, dtype=np.int64))


# ---------------------------------------------------------------------------------------------------------------
# Whole small values, as loadmat (default options) returns them
# ---------------------------------------------------------------------------------------------------------------
def decode(blob, offset=0):
    """The value of the miMATRIX element at ``offset`` of ``blob`` as loadmat returns it with its default options
    (2-D arrays; a char row becomes ``array(['text'])``; structs are structured arrays of object fields)."""
    return _decode(blob, offset)[0]


def _decode(buf, offset):
    mi_type, size = struct.unpack_from("<II", buf, offset)
    if mi_type != MI_MATRIX:
        raise MatStreamError(f"expected a miMATRIX element at byte {offset}, found type {mi_type}")
    end = offset + 8 + size
    if end > len(buf):
        raise MatStreamError(f"miMATRIX at byte {offset} runs past the end of its parent")
    if size == 0:  # MATLAB writes [] in a struct field or cell as an empty miMATRIX
        return np.empty((0, 0)), end
    pos = offset + 8

    def read_element():
        nonlocal pos
        mi_type, data, pos = _element(buf, pos, end)
        return mi_type, data

    mx_class, dims, _ = _matrix_head(read_element)
    count = _size(dims)
    if mx_class in _MX_DTYPES:
        values = _numbers(*read_element()).astype(_MX_DTYPES[mx_class])
        if values.size != count:
            raise MatStreamError(f"numeric array of {values.size} values for dimensions {dims}")
        return values.reshape(dims, order="F"), _pad8(end)
    if mx_class == MX_CHAR:
        mi_type, data = read_element() if count else (16, b"")
        if mi_type not in _CHAR_CODECS:
            raise MatStreamError(f"char data of type {mi_type}")
        text = bytes(data).decode(_CHAR_CODECS[mi_type])
        if len(text) != count:
            raise MatStreamError(f"char array of {len(text)} characters for dimensions {dims}")
        if count == 0:
            return np.array([], dtype="<U1"), _pad8(end)
        chars = np.array(list(text)).reshape(dims, order="F").reshape(dims[0], -1)
        return np.array(["".join(row) for row in chars]), _pad8(end)
    if mx_class == MX_CELL:
        items = np.empty(count, dtype=object)
        for i in range(count):
            items[i], pos = _decode(buf, pos)
        return items.reshape(dims, order="F"), _pad8(end)
    if mx_class == MX_STRUCT:
        fields = _field_names(read_element)
        records = np.empty(count, dtype=[(f, object) for f in fields])
        for i in range(count):
            for f in fields:
                records[i][f], pos = _decode(buf, pos)
        return records.reshape(dims, order="F"), _pad8(end)
    raise MatStreamError(f"unsupported MATLAB array class {mx_class}")


# ---------------------------------------------------------------------------------------------------------------
# Reading one top-level struct variable element by element
# ---------------------------------------------------------------------------------------------------------------
class _FileRange:
    """Sequential reads of the bytes [start, end) of an open file."""

    def __init__(self, f, start, end):
        self._f, self._left = f, end - start
        f.seek(start)

    def read(self, n):
        if n > self._left:
            raise MatStreamError("truncated MAT-file: a variable runs past the end of the file")
        data = self._f.read(n)
        if len(data) != n:
            raise MatStreamError("truncated MAT-file")
        self._left -= n
        return data


class _Inflated:
    """Sequential reads of the decompressed bytes of a miCOMPRESSED element at [start, end) of an open file,
    inflating about ``_INFLATE_CHUNK`` bytes at a time."""

    def __init__(self, f, start, end):
        self._f, self._left = f, end - start
        f.seek(start)
        self._zlib = zlib.decompressobj()
        self._buf, self._pos = bytearray(), 0

    def _fill(self):
        if self._zlib.unconsumed_tail:
            data = self._zlib.unconsumed_tail
        elif self._left > 0:
            data = self._f.read(min(self._left, _READ_CHUNK))
            if not data:
                raise MatStreamError("truncated MAT-file: a compressed variable runs past the end of the file")
            self._left -= len(data)
        else:
            raise MatStreamError("a compressed variable ends before its data")
        try:
            self._buf += self._zlib.decompress(data, _INFLATE_CHUNK)
        except zlib.error as e:
            raise MatStreamError(f"corrupt compressed variable ({e})") from e

    def read(self, n):
        while len(self._buf) - self._pos < n:
            self._fill()
        with memoryview(self._buf) as view:
            data = view[self._pos:self._pos + n].tobytes()
        self._pos += n
        if self._pos >= _INFLATE_CHUNK:
            del self._buf[:self._pos]
            self._pos = 0
        return data


def _read_element(source):
    tag = source.read(8)
    word, size = struct.unpack("<II", tag)
    if word >> 16:
        return word & 0xFFFF, tag[4:4 + (word >> 16)]
    return word, source.read(_pad8(size))[:size]


class StructStream:
    """The elements of one top-level struct variable, read in file (column-major) order.

    ``dims`` and ``fields`` describe the struct array; iterating yields, per element, a tuple with one complete
    miMATRIX element (bytes, starting with its tag) per field, in ``fields`` order.
    """

    def __init__(self, f, source, dims, fields):
        self._f, self._source, self.dims, self.fields = f, source, dims, fields

    def __len__(self):
        return _size(self.dims)

    def __iter__(self):
        for _ in range(len(self)):
            values = []
            for _ in self.fields:
                tag = self._source.read(8)
                mi_type, size = struct.unpack("<II", tag)
                if mi_type != MI_MATRIX:
                    raise MatStreamError(f"struct field value of type {mi_type}, expected a miMATRIX")
                values.append(tag + self._source.read(_pad8(size)))
            yield tuple(values)

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_struct(path, key):
    """A :class:`StructStream` over the struct variable ``key`` of the MAT-file ``path`` (close it, or use it in a
    ``with`` block). Raises :class:`MatStreamError` if the file is not a little-endian level-5 MAT-file, has no
    variable ``key``, or ``key`` is not a struct array."""
    f = open(path, "rb")
    try:
        stream = _open_struct(f, path, key)
    except BaseException:
        f.close()
        raise
    return stream


def _open_struct(f, path, key):
    header = f.read(128)
    if len(header) != 128 or header[126:128] != b"IM" or struct.unpack_from("<H", header, 124)[0] != 0x0100:
        raise MatStreamError(f"{path} is not a little-endian level-5 MAT-file")
    file_size = f.seek(0, 2)
    offset = 128
    while offset + 8 <= file_size:
        f.seek(offset)
        mi_type, size = struct.unpack("<II", f.read(8))
        end = offset + 8 + size
        if mi_type == MI_COMPRESSED:
            source = _Inflated(f, offset + 8, end)
            inner_type, _ = struct.unpack("<II", source.read(8))
        elif mi_type == MI_MATRIX:
            source, inner_type = _FileRange(f, offset + 8, end), MI_MATRIX
            end = offset + 8 + _pad8(size)
        else:
            raise MatStreamError(f"{path}: top-level data element of type {mi_type} at byte {offset}")
        if inner_type != MI_MATRIX:
            raise MatStreamError(f"{path}: compressed element at byte {offset} does not hold a miMATRIX")
        mx_class, dims, name = _matrix_head(lambda: _read_element(source))
        if name == key:
            if mx_class != MX_STRUCT:
                raise MatStreamError(f"{path}: variable {key!r} is not a struct array (class {mx_class})")
            return StructStream(f, source, dims, _field_names(lambda: _read_element(source)))
        offset = end
    raise MatStreamError(f"{path}: no variable {key!r}")


# ---------------------------------------------------------------------------------------------------------------
# Large struct array elements, vectorised
# ---------------------------------------------------------------------------------------------------------------
def struct_field_offsets(blob):
    """Layout of a struct array's miMATRIX element ``blob`` (bytes starting with its tag).

    Returns ``(dims, fields, offsets)``: ``offsets[i, j]`` is the byte offset in ``blob`` of element i's (column-
    major order) value of field j, itself a miMATRIX element. The chain of value tags is followed with numpy:
    every 8-byte slot tagged miMATRIX is taken as a value start and the result is accepted only if each one
    ends exactly where the next begins; otherwise (a data word that happens to look like a tag, or nested
    values) the values are walked one by one.
    """
    mi_type, size = struct.unpack_from("<II", blob, 0)
    if mi_type != MI_MATRIX or 8 + size > len(blob) or size == 0:
        raise MatStreamError("expected a non-empty miMATRIX element")
    pos, end = 8, 8 + size

    def read_element():
        nonlocal pos
        mi_type, data, pos = _element(blob, pos, end)
        return mi_type, data

    mx_class, dims, _ = _matrix_head(read_element)
    if mx_class != MX_STRUCT:
        raise MatStreamError(f"expected a struct array, found class {mx_class}")
    fields = _field_names(read_element)
    n = _size(dims) * len(fields)
    if n == 0:
        return dims, fields, np.zeros((0, len(fields)), dtype=np.int64)
    if pos % 8 or end % 8:
        raise MatStreamError("struct values are not 8-byte aligned")
    slots = np.frombuffer(blob, dtype="<u4", count=(end - pos) // 4, offset=pos).reshape(-1, 2)
    types, sizes = slots[:, 0], slots[:, 1].astype(np.int64)
    starts = np.flatnonzero(types == MI_MATRIX)
    nexts = starts + 1 + (sizes[starts] + 7) // 8
    if not (starts.size == n and starts[0] == 0 and nexts[-1] == len(slots) and np.array_equal(nexts[:-1], starts[1:])):
        starts, slot = [], 0
        for _ in range(n):
            if slot >= len(slots) or types[slot] != MI_MATRIX:
                raise MatStreamError("struct values are not consecutive miMATRIX elements")
            starts.append(slot)
            slot += 1 + (int(sizes[slot]) + 7) // 8
        if slot != len(slots):
            raise MatStreamError("struct element holds data after its last value")
        starts = np.asarray(starts, dtype=np.int64)
    return dims, fields, (pos + 8 * starts).reshape(-1, len(fields))


def leaf_headers(blob, offsets):
    """Headers of the 2-D numeric or char miMATRIX elements at byte ``offsets`` (8-byte aligned) of ``blob``.

    Returns a dict of int64 arrays: ``mx_class`` (0 for an empty element written without a header), ``rows``,
    ``cols``, ``data_type`` (mi type of the data), ``data_offset`` and ``data_bytes``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.size and (offsets.min() < 0 or (offsets % 8).any() or offsets.max() + 8 > len(blob)):
        raise MatStreamError("miMATRIX offsets must be 8-byte aligned and inside the blob")
    words = np.frombuffer(blob, dtype="<u4", count=len(blob) // 4)
    if len(words) < 14:
        words = np.concatenate([words, np.zeros(14, dtype=words.dtype)])
    i = offsets // 4
    size = words[i + 1].astype(np.int64)
    full = size > 0
    ends = offsets + 8 + size
    if (words[i] != MI_MATRIX).any() or (ends > len(blob)).any() or (full & (size < 48)).any():
        raise MatStreamError("expected miMATRIX elements inside the blob")
    # Words 0..13 of each element: tag, flags (tag + 2 words), dims (tag + 2 words), name tag and, when the
    # name is empty (always, for values inside a struct or cell), the data tag. An element without a header
    # (size 0) may sit at the very end: clip its start, its words are not used.
    words64 = np.frombuffer(words, dtype="<u8", count=len(words) // 2)
    head64 = words64[np.minimum(offsets // 8, len(words64) - 7)[:, None] + np.arange(7)]
    head = head64.view("<u4")
    flags = head[:, 4]
    name = head[:, 10]
    # flags tag (miUINT32, 8 bytes) and dims tag (miINT32, 8 bytes: 2-D), compared as one 64-bit word each
    ok = ((head64[:, 1] == (8 << 32 | MI_UINT32)) & (head64[:, 3] == (8 << 32 | MI_INT32))
          & ((flags & _COMPLEX_FLAG) == 0) & ((name & 0xFFFF) == MI_INT8))
    name_bytes = np.where((name >> 16) > 0, 8, 8 + (head[:, 11].astype(np.int64) + 7) // 8 * 8)
    data, data_size = head[:, 12].astype(np.int64), head[:, 13].astype(np.int64)
    named = np.flatnonzero(full & (name_bytes != 8))
    if named.size:  # the data tag comes after a non-empty name
        j = np.minimum(i[named] + 2 + name_bytes[named] // 4 + 8, len(words) - 2)
        data[named], data_size[named] = words[j], words[j + 1]
    small = (data >> 16) > 0
    data_type = np.where(small, data & 0xFFFF, data)
    data_bytes = np.where(small, data >> 16, data_size)
    data_offset = offsets + 40 + name_bytes + np.where(small, 4, 8)
    rows, cols = head[:, 8].astype(np.int64), head[:, 9].astype(np.int64)
    ok &= (rows < 2 ** 31) & (cols < 2 ** 31) & (data_offset + data_bytes <= ends)
    if not ok[full].all():
        raise MatStreamError("struct value is not a real 2-D numeric or char array")
    return {"mx_class": np.where(full, (flags & 0xFF).astype(np.int64), 0), "rows": np.where(full, rows, 0),
            "cols": np.where(full, cols, 0), "data_type": np.where(full, data_type, 0),
            "data_offset": np.where(full, data_offset, 0), "data_bytes": np.where(full, data_bytes, 0)}


def leaf_numeric(blob, headers, index):
    """The numeric value ``index`` of :func:`leaf_headers` as loadmat returns it (array of the class's dtype)."""
    mx_class = int(headers["mx_class"][index])
    shape = (int(headers["rows"][index]), int(headers["cols"][index]))
    if mx_class == 0:
        return np.empty((0, 0))
    if mx_class not in _MX_DTYPES:
        raise MatStreamError(f"expected a numeric array, found class {mx_class}")
    offset, nbytes = int(headers["data_offset"][index]), int(headers["data_bytes"][index])
    values = _numbers(int(headers["data_type"][index]), memoryview(blob)[offset:offset + nbytes])
    if values.size != shape[0] * shape[1]:
        raise MatStreamError(f"numeric array of {values.size} values for dimensions {shape}")
    return values.astype(_MX_DTYPES[mx_class]).reshape(shape, order="F")


class StringTable:
    """Distinct strings of many char-row values, without a Python object per value.

    :meth:`add` hashes each value's (data type, bytes) with numpy, looks the hashes up in a sorted table and
    decodes only values not seen before; every value is then compared with the first value seen with its hash,
    so a hash collision raises :class:`MatStreamError` instead of merging two names.
    """

    def __init__(self):
        self.strings = []  # id -> str
        self._hashes = np.zeros(0, dtype=np.uint64)  # sorted
        self._ids = np.zeros(0, dtype=np.int64)  # id of each sorted hash
        self._keys = np.zeros((0, 1), dtype=np.uint64)  # id -> bytes of its first value, as zero-padded words
        self._lengths = np.zeros(0, dtype=np.int64)
        self._types = np.zeros(0, dtype=np.int64)
        # Direct-address table on the top hash bits: one gather finds almost every id; the rest (slot taken by
        # another hash) go through a binary search of the sorted hashes.
        self._direct_hash = np.zeros(1 << self._DIRECT_BITS, dtype=np.uint64)
        self._direct_id = np.full(1 << self._DIRECT_BITS, -1, dtype=np.int64)

    _DIRECT_BITS = 16

    def _lookup(self, hashes):
        """Id of each hash, -1 for hashes not in the table."""
        slots = hashes >> np.uint64(64 - self._DIRECT_BITS)
        ids = np.where(self._direct_hash[slots] == hashes, self._direct_id[slots], -1)
        miss = np.flatnonzero(ids < 0)
        if miss.size and len(self._hashes):
            where = np.minimum(np.searchsorted(self._hashes, hashes[miss]), len(self._hashes) - 1)
            found = self._hashes[where] == hashes[miss]
            ids[miss[found]] = self._ids[where[found]]
        return ids

    @staticmethod
    def _keys_of(blob, headers):
        """(n, w) uint64: each value's data bytes, zero-padded to 8 * w bytes."""
        offsets, nbytes = headers["data_offset"], headers["data_bytes"]
        width = max(1, (int(nbytes.max()) + 7) // 8)
        if (offsets % 8).any():  # some value is a 'small data element' (<= 4 bytes): go byte by byte
            data = np.frombuffer(blob, dtype=np.uint8)
            columns = np.arange(8 * width)
            index = np.minimum(offsets[:, None] + columns, len(data) - 1)
            return np.where(columns < nbytes[:, None], data[index], 0).astype(np.uint8).view("<u8")
        words = np.frombuffer(blob, dtype="<u8", count=len(blob) // 8)
        if not len(words):
            words = np.zeros(1, dtype=np.uint64)
        columns = np.arange(width)
        keys = words[np.minimum(offsets[:, None] // 8 + columns, len(words) - 1)]
        left = nbytes[:, None] - 8 * columns  # bytes of each word that belong to the value
        mask = np.where(left >= 8, np.uint64(2 ** 64 - 1),
                        (np.uint64(1) << (8 * np.clip(left, 0, 7)).astype(np.uint64)) - np.uint64(1))
        return keys & mask

    def add(self, blob, headers):
        """Ids (int64) of the char values described by ``headers`` (from :func:`leaf_headers`); each value must
        be a single non-empty row of characters."""
        n = len(headers["mx_class"])
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        types, nbytes, cols = headers["data_type"], headers["data_bytes"], headers["cols"]
        if ((headers["mx_class"] != MX_CHAR) | (headers["rows"] != 1) | (cols < 1)).any():
            raise MatStreamError("expected char rows")
        if not np.isin(types, list(_CHAR_CODECS)).all():
            raise MatStreamError("char data of an unsupported type")
        keys = self._keys_of(blob, headers)
        hashes = (types.astype(np.uint64) << np.uint64(32)) ^ nbytes.astype(np.uint64)
        for word in keys.T:
            hashes = (hashes ^ word) * np.uint64(0x9E3779B97F4A7C15)
            hashes ^= hashes >> np.uint64(29)
        ids = self._lookup(hashes)
        known = ids >= 0
        if not known.all():
            unique, first = np.unique(hashes[~known], return_index=True)
            first = np.flatnonzero(~known)[first]
            new_ids = len(self.strings) + np.arange(len(unique))
            for k in first.tolist():
                codec = _CHAR_CODECS[int(types[k])]
                self.strings.append(keys[k].tobytes()[:int(nbytes[k])].decode(codec))
            width = max(keys.shape[1], self._keys.shape[1])
            self._keys = np.concatenate([np.pad(self._keys, ((0, 0), (0, width - self._keys.shape[1]))),
                                         np.pad(keys[first], ((0, 0), (0, width - keys.shape[1])))])
            self._lengths = np.concatenate([self._lengths, nbytes[first]])
            self._types = np.concatenate([self._types, types[first]])
            hashes_all = np.concatenate([self._hashes, unique])
            order = np.argsort(hashes_all, kind="stable")
            self._hashes, self._ids = hashes_all[order], np.concatenate([self._ids, new_ids])[order]
            slots = unique >> np.uint64(64 - self._DIRECT_BITS)
            free = self._direct_id[slots] < 0
            self._direct_hash[slots[free]], self._direct_id[slots[free]] = unique[free], new_ids[free]
            ids = self._lookup(hashes)
        stored = self._keys[ids]
        width = keys.shape[1]
        same = ((self._lengths[ids] == nbytes) & (self._types[ids] == types)
                & (stored[:, :width] == keys).all(axis=1) & ~stored[:, width:].any(axis=1))
        if not same.all():
            raise MatStreamError("string hash collision")
        return ids
