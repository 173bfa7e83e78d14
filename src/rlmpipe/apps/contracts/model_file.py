"""The clause finder's model file, read as untrusted input and written the same bytes every time.

A model is a zip of ``.npy`` arrays (``np.savez``'s layout), never a pickle. ``--finder-model`` takes
any file, so reading one must not trust it: before anything is allocated, the zip's directory (entry
names, packed and unpacked sizes), each ``.npy`` header (dtype, shape, order: parsed with a bounded
header size) and the model's ``info`` JSON (size and nesting depth) are checked, and every array's
shape is checked against the others (the vocabulary's size fixes the weights' rows, the 41
categories their columns), so nothing larger than a valid model of the same vocabulary is ever
read. Then values: finite weights, thresholds in [0, 1], positive idf, a vocabulary of distinct
terms, configuration values in their ranges (an n-gram range of a million would take minutes a
passage). Every problem is a :class:`ModelFileError` (a ``ValueError``) whose message names the
file and says what is wrong in one line.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

#: the largest model file read (the shipped one is a few MB)
MAX_FILE_BYTES = 512 << 20
#: the most entries a model's zip may hold
MAX_ENTRIES = 64
#: the largest vocabulary (bytes, terms) and term (characters)
MAX_VOCABULARY_BYTES = 64 << 20
MAX_TERMS = 2_000_000
MAX_TERM_CHARS = 200
MAX_INFO_BYTES = 1 << 20
MAX_JSON_DEPTH = 16
MAX_HEADER_BYTES = 4096
#: the smallest and largest threshold stored ("never" is stored a hair above 1)
THRESHOLD_RANGE = (0.0, 1.0 + 1e-6)


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ArraySpec:
    """What one array of the model must be: allowed dtypes and its shape, as names of sizes
    (``"terms"``, ``"categories"``, ...) or fixed numbers; ``bytes`` arrays are text (uint8)."""

    dtypes: tuple[str, ...]
    shape: tuple[str | int, ...]
    required: bool = True
    finite: bool = True


def write_model(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """An ``.npz`` (zip of ``.npy``) whose bytes depend only on the arrays: fixed timestamps, the
    given order, deflate at a fixed level (``np.savez`` stamps the current time). Written to a
    temporary name and renamed, so a crash never leaves half a model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            data = io.BytesIO()
            np.lib.format.write_array(data, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(entry, data.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(buffer.getvalue())
    temp.replace(path)
    return path


def text_array(text: str) -> np.ndarray:
    """A string as the uint8 array a model stores it in."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


class ModelReader:
    """One model file opened for checked reads: :meth:`headers` first (sizes and shapes, nothing
    read), then :meth:`array` for each array once its shape is known to be right."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise self.error(f"cannot read it ({exc.strerror or exc})") from None
        if not self.path.is_file():
            raise self.error("not a regular file")
        if size == 0:
            raise self.error("the file is empty")
        if size > MAX_FILE_BYTES:
            raise self.error(f"{size:,} bytes, more than a model can be ({MAX_FILE_BYTES:,})")
        try:
            self.archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            raise self.error("not a model file (not a zip of numpy arrays)") from None
        infos = self.archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise self.error(f"{len(infos)} entries in the zip, at most {MAX_ENTRIES} expected")
        self.entries: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or "/" in name or name[:-4] in self.entries:
                raise self.error(f"unexpected zip entry {name[:80]!r}")
            if info.flag_bits & 0x1:
                raise self.error(f"{name} is encrypted")
            self.entries[name[:-4]] = info
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self._data_offset: dict[str, int] = {}

    def close(self) -> None:
        self.archive.close()

    def __enter__(self) -> "ModelReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def error(self, problem: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {problem}")

    def has(self, name: str) -> bool:
        return name in self.entries

    def header(self, name: str, spec: ArraySpec) -> tuple[int, ...]:
        """The array's shape and dtype from its ``.npy`` header (a few bytes read), checked against
        ``spec``'s dtypes and against the entry's unpacked size."""
        info = self.entries[name]
        try:
            with self.archive.open(info) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=MAX_HEADER_BYTES)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=MAX_HEADER_BYTES)
                else:
                    raise ValueError(f"unknown .npy version {version}")
                offset = stream.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError) as exc:
            raise self.error(f"{name}: not a numpy array ({_short(exc)})") from None
        if dtype.hasobject or dtype.str.lstrip("<>|=") not in spec.dtypes:
            raise self.error(f"{name}: dtype {dtype.str}, expected {' or '.join(spec.dtypes)}")
        if fortran:
            raise self.error(f"{name}: Fortran order is not expected")
        if len(shape) != len(spec.shape) or any(not isinstance(n, int) or n < 0 for n in shape):
            raise self.error(f"{name}: shape {shape}, expected {len(spec.shape)} dimension(s)")
        expected = offset + math.prod(shape) * dtype.itemsize
        if info.file_size != expected:
            raise self.error(f"{name}: the zip says {info.file_size:,} bytes unpacked, its header {expected:,}")
        self.shapes[name], self.dtypes[name], self._data_offset[name] = tuple(shape), dtype, offset
        return tuple(shape)

    def array(self, name: str, spec: ArraySpec) -> np.ndarray:
        """The array's values (its header was checked by :meth:`header`), read in bounded pieces;
        non-finite values refused where ``spec.finite``."""
        info, shape, dtype = self.entries[name], self.shapes[name], self.dtypes[name]
        size = math.prod(shape) * dtype.itemsize
        try:
            with self.archive.open(info) as stream:
                stream.read(self._data_offset[name])
                data = bytearray()
                while len(data) < size:
                    piece = stream.read(min(1 << 20, size - len(data)))
                    if not piece:
                        break
                    data += piece
                if len(data) != size or stream.read(1):
                    raise ValueError("its size differs from its header's")
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise self.error(f"{name}: cannot be read ({_short(exc)})") from None
        array = np.frombuffer(bytes(data), dtype=dtype).reshape(shape)
        if spec.finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise self.error(f"{name}: holds NaN or infinite values")
        return array


def read_arrays(path: str | Path, specs: dict[str, ArraySpec], first: dict[str, int],
                dimensions: Callable[[dict[str, np.ndarray]], dict[str, int]]) -> dict[str, np.ndarray]:
    """Every array named in ``specs`` that the file has. All headers are checked first (dtype,
    dimensions, the zip's unpacked size), nothing read: a missing required array or one the specs
    do not name is an error. Then the arrays named in ``first`` are read, each refused beyond that
    many elements (the info, the vocabulary); ``dimensions(those arrays)`` gives the size of every
    named dimension (the vocabulary's terms), and every other array's shape must be exactly that
    before it is read: nothing larger than a valid model of that vocabulary is ever allocated."""
    with ModelReader(path) as reader:
        unknown = sorted(set(reader.entries) - set(specs))
        if unknown:
            raise reader.error(f"unexpected array {unknown[0][:80]!r}")
        present = {}
        for name, spec in specs.items():
            if reader.has(name):
                reader.header(name, spec)
                present[name] = spec
            elif spec.required:
                raise reader.error(f"no {name} array")
        arrays = {}
        for name, limit in first.items():
            if name in present:
                if math.prod(reader.shapes[name]) > limit:
                    raise reader.error(f"{name}: {math.prod(reader.shapes[name]):,} elements, at most {limit:,} expected")
                arrays[name] = reader.array(name, present[name])
        sizes = dimensions(arrays)
        for name, spec in present.items():
            if name in arrays:
                continue
            shape = reader.shapes[name]
            expected = tuple(want if isinstance(want, int) else sizes[want] for want in spec.shape)
            if shape != expected:
                raise reader.error(f"{name}: shape {shape} does not fit the model (expected {expected})")
        for name, spec in present.items():
            if name not in arrays:
                arrays[name] = reader.array(name, spec)
        return arrays


def decode_json(reader_path: Path, data: np.ndarray) -> dict:
    """The model's ``info``: UTF-8 JSON of at most ``MAX_INFO_BYTES``, nested at most
    ``MAX_JSON_DEPTH`` deep (checked before parsing: a deeply nested document would exhaust the
    parser's recursion), an object."""
    raw = data.tobytes()
    if len(raw) > MAX_INFO_BYTES:
        raise ModelFileError(f"{reader_path}: info is {len(raw):,} bytes, at most {MAX_INFO_BYTES:,} expected")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(f"{reader_path}: info is not UTF-8") from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ModelFileError(f"{reader_path}: info is nested more than {MAX_JSON_DEPTH} deep")
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise ModelFileError(f"{reader_path}: info is not JSON ({_short(exc)})") from None
    if not isinstance(info, dict):
        raise ModelFileError(f"{reader_path}: info is not a JSON object")
    return info


def json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest (strings skipped), in one linear pass."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def decode_terms(path: Path, data: np.ndarray, count: int | None = None) -> list[str]:
    """A vocabulary stored as newline-separated UTF-8: distinct terms of bounded length (counted
    before it is split, so a file of newlines cannot make millions of strings)."""
    raw = data.tobytes()
    if raw.count(b"\n") >= MAX_TERMS:
        raise ModelFileError(f"{path}: more than {MAX_TERMS:,} vocabulary terms")
    try:
        terms = raw.decode("utf-8").split("\n") if len(raw) else []
    except UnicodeDecodeError:
        raise ModelFileError(f"{path}: the vocabulary is not UTF-8") from None
    if count is not None and len(terms) != count:
        raise ModelFileError(f"{path}: {len(terms):,} vocabulary terms for {count:,} weights")
    if len(terms) > MAX_TERMS:
        raise ModelFileError(f"{path}: {len(terms):,} vocabulary terms, at most {MAX_TERMS:,} expected")
    if any(len(term) > MAX_TERM_CHARS for term in terms):
        raise ModelFileError(f"{path}: a vocabulary term is longer than {MAX_TERM_CHARS} characters")
    if len(set(terms)) != len(terms):
        raise ModelFileError(f"{path}: the vocabulary repeats a term")
    return terms


def check_range(path: Path, name: str, value, low, high, kind=int):
    """A configuration value of the right type within ``[low, high]``."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and low <= value <= high
    if not ok:
        shown = json.dumps(value)[:40] if not isinstance(value, float) else repr(value)
        bounds = "true or false" if kind is bool else f"{low} .. {high}"
        raise ModelFileError(f"{path}: config {name} is {shown}, expected {bounds}")
    return value


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__
