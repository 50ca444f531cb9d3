"""Raw review/metadata dumps: detect each file's format by content and parse it into DuckDB.

Pure helpers (DuckDB + Python, no Dagster). The ingest assets call them with one DuckDB connection:

1. ``list_raw_files(raw_dir)`` lists the files to read (``images/`` and hidden files are skipped).
2. ``sniff(path)`` tells reviews from metadata by the keys of the first valid lines (not by the file
   name), gzip or plain, strict JSON or Python literals, and the Amazon vintage (2014 / 2018 / 2023),
   or the processed benchmark formats (SASRec ``user item`` pairs, S3-Rec ``user item1 item2 ...``
   lines, S3-Rec ``*_item2attributes.json``).
3. ``create_staging(conn)`` makes temporary tables; ``load_reviews`` / ``load_meta`` /
   ``load_item_attributes`` append one file's usable records to them and its unusable lines,
   verbatim with a reason, to ``_stage_quarantine``. Every record keeps its 1-based line number.

Strict JSON goes through DuckDB's own reader and JSON functions (``read_csv`` of whole lines with
ordinality, then ``json_extract_string``): fast, and exact when every line is valid JSON. When a file
has a blank, malformed or non-UTF-8 line, or DuckDB cannot read it, the file is re-read by Python line
by line (exact line numbers, verbatim raw text, precise errors) and then parsed by the same SQL.
Python-literal lines (2014 metadata) are parsed with ``ast.literal_eval`` -- never ``eval`` -- and
handed to the same SQL as JSON.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

IMAGE_DIRNAME = "images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
BENCHMARK_FORMATS = {"sasrec_pairs", "s3rec_sequences"}
SNIFF_LINES = 30
SNIFF_BYTES = 8 << 20
BATCH_LINES = 200_000
# The Python line reader hands over batches of at most this many bytes of line text, so its memory
# stays bounded whatever the lines hold (with max_line_bytes, one line adds at most that much).
BATCH_BYTES = 16 << 20
DEFAULT_MAX_LINE_BYTES = 1 << 20  # longer lines are quarantined as line_too_long, never parsed
LONG_LINE_KEEP = 1024  # bytes of a too-long line kept in the quarantine table
# DuckDB's reader holds a line whole before it finds the line too long, so the fast read runs under
# at most this memory_limit: a longer line then fails the fast read, and the Python reader takes over.
FAST_READ_MEMORY_CAP = 1 << 30
# A file holding one JSON document (S3-Rec *_item2attributes.json, a few MB) is parsed whole; larger
# ones are skipped rather than loaded.
MAX_DOCUMENT_BYTES = 64 << 20
_BOM = b"\xef\xbb\xbf"
# Whole lines through DuckDB's CSV reader: a delimiter that never occurs in valid JSON (raw control
# characters must be escaped there), no quoting, no escaping, only "\n" ends a line.
_LINE_DELIM = "\x1f\x1e\x1d\x1c"
_READ_LINES = (
    "read_csv({path}, columns={{'raw': 'VARCHAR'}}, delim='" + _LINE_DELIM + "', quote='', "
    "escape='', header=false, auto_detect=false, new_line='\\n', strict_mode=false, "
    "max_line_size={max_line_size}, compression='{compression}')"
)
# ids in benchmark files: word characters with at least one digit (so prose is not taken for ids)
_ID_TOKEN = r"[\w\-]*\d[\w\-]*"
_TOKEN_LINE = re.compile(rf"^{_ID_TOKEN}(?:[ \t]+{_ID_TOKEN})+$")


class RawDataError(Exception):
    """A raw file that cannot be read: names the file, what is wrong and what to do."""

    def __init__(self, path: Path | str, problem: str, fix: str):
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{path}: {problem}. What to do: {fix}")


@dataclass
class FileFormat:
    """What ``sniff`` found out about one file."""

    path: Path
    kind: str  # reviews | meta | item_attributes | unknown | empty
    format: str  # e.g. amazon2014_reviews, amazon2018_meta, amazon2023_reviews, sasrec_pairs
    syntax: str = ""  # json | literal | tokens | json_object
    compression: str = "none"  # gzip | none
    note: str = ""  # why a file is unknown, or what is special about it
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES  # longer lines: quarantined as line_too_long

    @property
    def has_timestamps(self) -> bool:
        return self.kind == "reviews" and self.format not in BENCHMARK_FORMATS


@dataclass
class FileStats:
    """Counts for one parsed file (they go into asset metadata)."""

    file: str
    kind: str
    format: str
    compression: str
    lines: int = 0  # non-blank lines (records) read
    blank_lines: int = 0
    kept: int = 0  # rows produced (an S3-Rec line yields one row per item)
    quarantined: Counter = field(default_factory=Counter)  # reason -> lines
    parser: str = ""  # duckdb | python
    seconds: float = 0.0
    max_line_no: int = 0

    @property
    def n_quarantined(self) -> int:
        return sum(self.quarantined.values())

    @property
    def quarantine_share(self) -> float:
        return self.n_quarantined / self.lines if self.lines else 0.0

    def as_dict(self) -> dict:
        return {
            "file": self.file,
            "kind": self.kind,
            "format": self.format,
            "compression": self.compression,
            "lines": self.lines,
            "blank_lines": self.blank_lines,
            "kept": self.kept,
            "quarantined": self.n_quarantined,
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
            "parser": self.parser,
            "seconds": round(self.seconds, 3),
        }


# ---------------------------------------------------------------------------------------------
# Files and sniffing


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_binary(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def list_raw_files(raw_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to read (sorted by name) and skipped entries as (name, why)."""
    files, skipped = [], []
    for entry in sorted(Path(raw_dir).iterdir()):
        if entry.name.startswith("."):
            continue  # markers, locks, editor files
        if entry.is_dir():
            if entry.name != IMAGE_DIRNAME:
                skipped.append((entry.name, "a sub-folder (only files directly in the raw folder are read)"))
            continue
        if entry.is_file():
            files.append(entry)
        else:
            skipped.append((entry.name, "not a regular file"))
    return files, skipped


def local_images(raw_dir: Path) -> dict[str, Path]:
    """``images/<item_id>.<ext>`` files of a dump, by item id."""
    folder = Path(raw_dir) / IMAGE_DIRNAME
    if not folder.is_dir():
        return {}
    return {
        p.stem: p.resolve()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


class LongLine(bytes):
    """The first LONG_LINE_KEEP bytes of a line longer than ``max_line_bytes``; the rest of the
    line was read in small chunks and dropped, never held whole or parsed."""

    length: int = 0


def bounded_lines(fh, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of a binary file without their line ends; a line longer than ``max_line_bytes``
    comes as a ``LongLine``. Memory: at most ``max_line_bytes`` + 1 MB per line. A byte-order
    mark at the start of line 1 is dropped."""
    first = True
    while True:
        line = fh.readline(max_line_bytes + 2)  # + "\r\n"
        if not line:
            return
        if first:
            first = False
            if line.startswith(_BOM):
                line = line[len(_BOM) :]
        body = line.rstrip(b"\r\n")
        if len(body) <= max_line_bytes and (line.endswith(b"\n") or len(line) <= max_line_bytes):
            yield body
            continue
        long_line = LongLine(body[:LONG_LINE_KEEP])
        long_line.length = len(line)
        while not line.endswith(b"\n"):  # skip the rest of the line, 1 MB at a time
            line = fh.readline(1 << 20)
            if not line:
                break
            long_line.length += len(line)
        long_line.length -= 1 if line.endswith(b"\n") else 0
        yield long_line


def _head_lines(
    path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> tuple[list[bytes], bool, list[LongLine]]:
    """Up to SNIFF_LINES non-blank lines, whether the file is (decompressed) empty, and the lines
    that were too long to look at."""
    lines: list[bytes] = []
    read = 0
    any_bytes = False
    longs: list[LongLine] = []
    try:
        with open_binary(path) as fh:
            for line in bounded_lines(fh, max_line_bytes):
                any_bytes = True
                if isinstance(line, LongLine):
                    longs.append(line)
                    read += line.length
                elif line.strip():
                    read += len(line)
                    lines.append(line)
                if len(lines) >= SNIFF_LINES or read >= SNIFF_BYTES:
                    break
    except (EOFError, OSError, zlib.error) as exc:
        if not lines:
            raise RawDataError(
                path,
                f"cannot be read ({type(exc).__name__}: {exc})",
                "check that the file is complete (`gzip -t FILE` for .gz files); "
                "re-download it or remove it from the raw folder",
            ) from exc
    return lines, not any_bytes, longs


def _parse_record(text: str) -> tuple[object, str]:
    """(value, syntax) of one line: strict JSON first, then a Python literal; (None, '') if neither."""
    try:
        return json.loads(text), "json"
    except (ValueError, RecursionError):  # RecursionError: ~1,000 nested brackets
        pass
    try:
        return ast.literal_eval(text), "literal"
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None, ""


REVIEW_2018_KEYS = {"verified", "vote", "style"}
META_2018_KEYS = {
    "category",
    "main_cat",
    "also_buy",
    "also_view",
    "imageURL",
    "imageURLHighRes",
    "image",
    "rank",
    "feature",
    "tech1",
    "date",
}
REVIEW_HINT_KEYS = {"overall", "unixReviewTime", "reviewText", "reviewTime"}


def _classify_keys(keys: set[str], syntax: str) -> tuple[str, str]:
    if "user_id" in keys and keys & {"parent_asin", "asin"}:
        return "reviews", "amazon2023_reviews"
    if "reviewerID" in keys or ("asin" in keys and keys & REVIEW_HINT_KEYS):
        if keys & REVIEW_2018_KEYS:
            return "reviews", "amazon2018_reviews"
        return "reviews", "amazon2014_reviews"
    if "parent_asin" in keys:
        return "meta", "amazon2023_meta"
    if "asin" in keys:
        if syntax == "literal":
            return "meta", "amazon2014_meta"
        return "meta", "amazon2018_meta" if keys & META_2018_KEYS else "amazon2014_meta"
    return "unknown", "unknown"


def _is_item_attributes(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(
            isinstance(v, list) and all(isinstance(a, (int, str)) for a in v)
            for v in list(obj.values())[:1000]
        )
    )


def _sniff_document(path: Path, compression: str, size: int) -> FileFormat:
    """A file that holds one JSON document, read whole (up to MAX_DOCUMENT_BYTES)."""
    if size > MAX_DOCUMENT_BYTES:
        return FileFormat(
            path,
            "unknown",
            "unknown",
            "json_object",
            compression,
            f"a JSON document of {size / 1e6:,.0f} MB, over the {MAX_DOCUMENT_BYTES >> 20} MB that "
            "are read whole; an S3-Rec *_item2attributes.json is far smaller",
        )
    try:
        with open_binary(path) as fh:
            doc = json.load(fh)  # bytes: json skips a BOM itself
    except (ValueError, OSError, EOFError, RecursionError, zlib.error) as exc:
        return FileFormat(
            path,
            "unknown",
            "unknown",
            "",
            compression,
            f"starts like a JSON document but does not parse ({type(exc).__name__}: {str(exc)[:200]})",
        )
    if _is_item_attributes(doc):
        return FileFormat(path, "item_attributes", "s3rec_item2attributes", "json_object", compression)
    return FileFormat(
        path,
        "unknown",
        "unknown",
        "json_object",
        compression,
        "a JSON document that is not an {item: [attributes]} map",
    )


def sniff(path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> FileFormat:
    """Detect a file's kind and format from its content (the name is not trusted); lines longer
    than ``max_line_bytes`` are not looked at (and will be quarantined as ``line_too_long``)."""
    ff = _sniff(Path(path), max_line_bytes)
    ff.max_line_bytes = max_line_bytes
    return ff


def _sniff(path: Path, max_line_bytes: int) -> FileFormat:
    compression = "gzip" if is_gzip(path) else "none"
    lines, empty, longs = _head_lines(path, max_line_bytes)
    if not lines and len(longs) == 1 and longs[0].lstrip()[:1] == b"{":
        # the whole file is one long line holding a JSON document: an S3-Rec *_item2attributes.json
        return _sniff_document(path, compression, longs[0].length)
    if not lines and longs:
        return FileFormat(
            path,
            "unknown",
            "unknown",
            "",
            compression,
            f"its first lines are all longer than max_line_bytes={max_line_bytes:,} bytes; raise "
            "max_line_bytes in the reviews/items asset config if such lines are expected",
        )
    if empty or not lines:
        return FileFormat(
            path,
            "empty",
            "empty",
            "",
            compression,
            "the file is empty" if empty else "the file holds only blank lines",
        )
    if any(b"\x00" in line for line in lines[:3]):
        return FileFormat(path, "unknown", "unknown", "", compression, "binary content (NUL bytes)")
    texts = [line.decode("utf-8", errors="replace").strip() for line in lines]

    if texts[0] in ("{", "["):  # a pretty-printed JSON document, e.g. an item2attributes file
        return _sniff_document(path, compression, path.stat().st_size)

    parsed = [_parse_record(t) if t[:1] == "{" else (None, "") for t in texts]
    dicts = [(v, s) for v, s in parsed if isinstance(v, dict)]
    if dicts:
        if (
            len(dicts) == 1
            and len(texts) == 1
            and _is_item_attributes(dicts[0][0])
            and _classify_keys(set(dicts[0][0]), dicts[0][1])[0] not in ("reviews", "meta")
        ):
            return FileFormat(path, "item_attributes", "s3rec_item2attributes", "json_object", compression)
        syntax = "literal" if any(s == "literal" for _, s in dicts) else "json"
        keys: set[str] = set()
        for v, _ in dicts:
            keys.update(str(k) for k in v)
        kind, fmt = _classify_keys(keys, syntax)
        if kind == "unknown":
            return FileFormat(
                path,
                "unknown",
                "unknown",
                syntax,
                compression,
                f"JSON lines whose keys ({', '.join(sorted(keys)[:12])}) are neither "
                "Amazon reviews nor Amazon metadata",
            )
        return FileFormat(path, kind, fmt, syntax, compression)

    if all(_TOKEN_LINE.match(t) for t in texts):
        n_tokens = [len(t.split()) for t in texts]
        if all(n == 2 for n in n_tokens):
            return FileFormat(
                path,
                "reviews",
                "sasrec_pairs",
                "tokens",
                compression,
                "no timestamps: file order is the time order",
            )
        return FileFormat(
            path,
            "reviews",
            "s3rec_sequences",
            "tokens",
            compression,
            "no timestamps: file order is the time order",
        )
    return FileFormat(
        path,
        "unknown",
        "unknown",
        "",
        compression,
        "neither JSON/Python-literal records nor whitespace-separated id lines",
    )


# ---------------------------------------------------------------------------------------------
# Staging tables


# the columns of `reviews` (and of ``_stage_reviews``)
REVIEW_SCHEMA = (
    "user_id VARCHAR, item_id VARCHAR, rating DOUBLE, ts BIGINT, seq_no BIGINT, source_file VARCHAR, "
    "line_no BIGINT, source_format VARCHAR"
)
REVIEW_COLUMNS = "user_id, item_id, rating, ts, seq_no, source_file, line_no, source_format"


def create_staging(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE _stage_reviews({REVIEW_SCHEMA});
        CREATE OR REPLACE TEMP TABLE _stage_items(
            item_id VARCHAR, title VARCHAR, brand VARCHAR, categories VARCHAR[], price DOUBLE,
            image_ref VARCHAR, source_file VARCHAR, line_no BIGINT, file_no INTEGER);
        CREATE OR REPLACE TEMP TABLE _stage_item_attributes(
            item_id VARCHAR, attribute VARCHAR, source_file VARCHAR);
        CREATE OR REPLACE TEMP TABLE _stage_quarantine(
            source_file VARCHAR, line_no BIGINT, reason VARCHAR, raw VARCHAR);
    """)
    # where each review file's rows are, in file order (see ``staged_reviews_sql``)
    for (table,) in conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE temporary AND table_name LIKE '\\_stage\\_reviews\\_p%' ESCAPE '\\'"
    ).fetchall():
        conn.execute(f"DROP TABLE {table}")
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE _stage_review_parts(
            part INTEGER, table_name VARCHAR, seq_offset BIGINT, source_file VARCHAR, source_format VARCHAR)
    """)


def _next_review_part(conn) -> int:
    return conn.execute("SELECT count(*) FROM _stage_review_parts").fetchall()[0][0]


def _add_review_part(conn, table: str, seq_offset: int, name: str, fmt: str, part: int | None = None) -> None:
    part = _next_review_part(conn) if part is None else part
    conn.execute(
        "INSERT INTO _stage_review_parts VALUES (?, ?, ?, ?, ?)", [part, table, seq_offset, name, fmt]
    )


def staged_reviews_sql(conn: duckdb.DuckDBPyConnection) -> tuple[list[str], list[str]]:
    """(SELECTs of every staged review file's rows in file order, each in line order; the temp
    tables they read). A file the DuckDB reader parsed keeps its ``_parsed`` table (renamed), so
    its rows are copied once, into `reviews`; a file the Python reader parsed is in
    ``_stage_reviews``."""
    selects, tables = [], []
    for table, offset, name, fmt in conn.execute(
        "SELECT table_name, seq_offset, source_file, source_format FROM _stage_review_parts ORDER BY part"
    ).fetchall():
        if table == "_stage_reviews":
            selects.append(
                f"SELECT {REVIEW_COLUMNS} FROM _stage_reviews WHERE source_file = {_sql_str(name)}"
            )
            continue
        selects.append(
            f"SELECT trim(user_id) AS user_id, trim(item_id) AS item_id, rating, ts, "
            f"CAST({int(offset)} + line_no AS BIGINT) AS seq_no, {_sql_str(name)} AS source_file, line_no, "
            f"{_sql_str(fmt)} AS source_format FROM {table} WHERE NOT blank AND reason IS NULL"
        )
        tables.append(table)
    return selects, tables


# ---------------------------------------------------------------------------------------------
# Reading lines exactly (Python), for files the fast path cannot take


def iter_lines(
    path: Path,
    batch: int = BATCH_LINES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[list[tuple[int, bytes]]]:
    """Batches of (1-based line number, line bytes without the newline), blank lines included;
    a line longer than ``max_line_bytes`` comes as a ``LongLine`` (its first KB). A batch ends
    after ``batch`` lines or ``batch_bytes`` bytes, so memory stays bounded.

    Raises RawDataError for a truncated or corrupt gzip stream and for read errors.
    """
    out: list[tuple[int, bytes]] = []
    size = 0
    line_no = 0
    try:
        with open_binary(path) as fh:
            for line_no, line in enumerate(bounded_lines(fh, max_line_bytes), start=1):
                out.append((line_no, line))
                size += len(line)
                if len(out) >= batch or size >= batch_bytes:
                    yield out
                    out, size = [], 0
    except EOFError as exc:
        raise RawDataError(
            path,
            f"the gzip stream ends early after line {line_no} (truncated file)",
            "re-download the file (`gzip -t FILE` shows the damage) or remove it "
            "from the raw folder; nothing from it was loaded",
        ) from exc
    except (OSError, zlib.error) as exc:
        raise RawDataError(
            path,
            f"cannot be read after line {line_no} ({type(exc).__name__}: {exc})",
            "check that the file is a complete gzip or plain-text dump; re-download "
            "it or remove it from the raw folder",
        ) from exc
    if out:
        yield out


def _decode(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="backslashreplace"), False


def _literal_to_json(text: str) -> tuple[str | None, str | None]:
    """(JSON text, None) for a line holding a dict literal, else (None, reason). Never evaluates code."""
    try:
        value = json.loads(text)
    except RecursionError:
        return None, "nested_too_deep"
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except ValueError:
            return None, "not_a_python_literal"  # e.g. a function call: code, not data
        except (SyntaxError, TypeError, MemoryError, RecursionError):
            return None, "malformed_literal"
    if not isinstance(value, dict):
        return None, "not_an_object"
    try:
        return json.dumps(value, default=str), None
    except (TypeError, ValueError, RecursionError):
        return None, "malformed_literal"


def _python_source(batch: list[tuple[int, bytes]], literal: bool) -> tuple[pa.Table, int]:
    """An Arrow table (line_no, raw, j, pre_reason) for one batch; blank lines dropped and counted."""
    line_nos, raws, js, reasons = [], [], [], []
    blank = 0
    for line_no, data in batch:
        if isinstance(data, LongLine):
            line_nos.append(line_no)
            raws.append(data.decode("utf-8", errors="replace"))
            js.append(None)
            reasons.append("line_too_long")
            continue
        if not data.strip():
            blank += 1
            continue
        text, ok = _decode(data)
        j, reason = (
            (None, "invalid_utf8") if not ok else (_literal_to_json(text) if literal else (text, None))
        )
        line_nos.append(line_no)
        raws.append(text)
        js.append(j)
        reasons.append(reason)
    table = pa.table(
        {
            "line_no": pa.array(line_nos, pa.int64()),
            "raw": pa.array(raws, pa.string()),
            "j": pa.array(js, pa.string()),
            "pre_reason": pa.array(reasons, pa.string()),
        }
    )
    return table, blank


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------------
# Reviews


def _review_fields(fmt: str) -> dict[str, str]:
    """SQL expressions over the JSON text column ``j`` for one review format."""
    if fmt == "amazon2023_reviews":
        return {
            "user_id": "f[1]",
            "item_id": "coalesce(nullif(trim(f[2]), ''), f[3])",
            "rating_txt": "f[4]",
            "ts_txt": "f[5]",
            "ts": "CAST(floor(TRY_CAST(f[5] AS DOUBLE) / 1000) AS BIGINT)",  # milliseconds
            "paths": "['$.user_id', '$.parent_asin', '$.asin', '$.rating', '$.timestamp']",
        }
    return {
        "user_id": "f[1]",
        "item_id": "f[2]",
        "rating_txt": "f[3]",
        "ts_txt": "coalesce(f[4], f[5])",
        "ts": "coalesce(CAST(TRY_CAST(f[4] AS DOUBLE) AS BIGINT), "
        "CAST(epoch(try_strptime(f[5], '%m %d, %Y')) AS BIGINT))",
        "paths": "['$.reviewerID', '$.asin', '$.overall', '$.unixReviewTime', '$.reviewTime']",
    }


def _parse_reviews_sql(source: str, fmt: str, min_ts: int, max_ts: int, validate: bool = True) -> str:
    """SQL that parses (line_no, raw, j, pre_reason) rows into ``_parsed``.

    ``validate=False`` (the fast path) parses each line once and lets DuckDB raise on malformed
    JSON; the caller then re-reads the file with ``validate=True``, which checks every line.
    """
    e = _review_fields(fmt)
    if validate:
        ok = "coalesce(json_valid(j), false) AND starts_with(ltrim(j), '{')"
        f = f"CASE WHEN ok THEN json_extract_string(j, {e['paths']}) END"
    else:
        ok = "coalesce(starts_with(j, '{'), false)"
        f = f"json_extract_string(j, {e['paths']})"
    return f"""
        CREATE OR REPLACE TEMP TABLE _parsed AS
        WITH src AS (SELECT line_no, raw, j, pre_reason FROM {source}),
        x0 AS (
            SELECT line_no, raw, j, pre_reason, raw IS NULL AS blank, {ok} AS ok
            FROM src),
        x AS (SELECT line_no, raw, pre_reason, blank, ok, {f} AS f FROM x0),
        y AS (
            SELECT line_no, raw, pre_reason, blank, ok,
                   {e['user_id']} AS user_id, {e['item_id']} AS item_id,
                   {e['rating_txt']} AS rating_txt, TRY_CAST({e['rating_txt']} AS DOUBLE) AS rating,
                   {e['ts_txt']} AS ts_txt, {e['ts']} AS ts
            FROM x)
        -- raw is kept only for lines that go to quarantine
        SELECT * REPLACE (CASE WHEN reason IS NOT NULL THEN raw END AS raw) FROM (
        SELECT line_no, blank, user_id, item_id, rating, ts,
               CASE WHEN blank THEN NULL
                    WHEN pre_reason IS NOT NULL THEN pre_reason
                    WHEN NOT ok THEN 'malformed_json'
                    WHEN user_id IS NULL OR trim(user_id) = '' THEN 'missing_user_id'
                    WHEN item_id IS NULL OR trim(item_id) = '' THEN 'missing_item_id'
                    WHEN rating_txt IS NOT NULL AND rating IS NULL THEN 'invalid_rating'
                    WHEN ts_txt IS NULL THEN 'missing_timestamp'
                    WHEN ts IS NULL THEN 'invalid_timestamp'
                    WHEN ts < {int(min_ts)} OR ts > {int(max_ts)} THEN 'timestamp_out_of_range'
               END AS reason,
               raw
        FROM y
        )
    """


def _fast_source(path: Path, compression: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> str:
    """Lines through DuckDB's reader. A line over DuckDB's ``max_line_size`` makes the read fail
    (the caller then takes the Python reader); lines just under it are caught by ``strlen``."""
    n = int(max_line_bytes)
    reader = _READ_LINES.format(path=_sql_str(str(path)), compression=compression, max_line_size=n + 2)
    return (
        f"(SELECT ordinality AS line_no, CASE WHEN strlen(raw) > {n} THEN left(raw, {LONG_LINE_KEEP}) "
        f"ELSE raw END AS raw, CASE WHEN strlen(raw) > {n} THEN NULL ELSE raw END AS j, "
        f"CASE WHEN strlen(raw) > {n} THEN 'line_too_long' END AS pre_reason "
        f"FROM {reader} WITH ORDINALITY)"
    )


_SIZE_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


@contextlib.contextmanager
def memory_cap(conn: duckdb.DuckDBPyConnection, cap: int = FAST_READ_MEMORY_CAP) -> Iterator[None]:
    """Lower DuckDB's ``memory_limit`` to ``cap`` for the block (never raise it), then restore it."""
    current = conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    match = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", str(current))
    size = float(match.group(1)) * _SIZE_UNITS.get(match.group(2).lower() or "b", 1) if match else 0
    if not match or size <= cap:
        yield
        return
    conn.execute(f"SET memory_limit = '{int(cap) >> 20}MiB'")
    try:
        yield
    finally:
        conn.execute(f"SET memory_limit = '{current}'")


@dataclass
class ParsedCounts:
    """What one scan of ``_parsed`` finds (see ``_parsed_counts``)."""

    blank: int = 0
    lines: int = 0  # non-blank
    kept: int = 0
    max_line_no: int = 0
    quarantined: Counter = field(default_factory=Counter)

    @property
    def unsure(self) -> int:
        """Lines the fast path (``validate=False``) cannot vouch for: blank or malformed JSON."""
        return self.blank + self.quarantined["malformed_json"]

    def add_to(self, stats: FileStats) -> None:
        stats.blank_lines += self.blank
        stats.lines += self.lines
        stats.kept += self.kept
        stats.max_line_no = max(stats.max_line_no, self.max_line_no)
        stats.quarantined.update(self.quarantined)


def _parsed_counts(conn) -> ParsedCounts:
    """Lines, blank lines, kept lines, the last line number and the quarantine reasons of
    ``_parsed``, in one scan (a blank line has no reason)."""
    counts = ParsedCounts()
    for blank, reason, n, max_line in conn.execute(
        "SELECT blank, reason, count(*), max(line_no) FROM _parsed GROUP BY ALL"
    ).fetchall():
        counts.max_line_no = max(counts.max_line_no, max_line or 0)
        if blank:
            counts.blank += n
            continue
        counts.lines += n
        if reason is None:
            counts.kept += n
        else:
            counts.quarantined[reason] += n
    return counts


def _count_parsed(conn, stats: FileStats, counts: ParsedCounts | None = None) -> None:
    """Add the lines, blank lines, kept lines and quarantine reasons of ``_parsed`` to ``stats``
    (``counts``: ``_parsed_counts`` if the caller has them already)."""
    (counts if counts is not None else _parsed_counts(conn)).add_to(stats)


def _quarantine_parsed(conn, name: str) -> None:
    conn.execute(
        "INSERT INTO _stage_quarantine SELECT ?, line_no, reason, raw FROM _parsed "
        "WHERE reason IS NOT NULL ORDER BY line_no",
        [name],
    )


def _stage_parsed_reviews(
    conn, stats: FileStats, name: str, fmt: str, seq_offset: int, counts: ParsedCounts | None = None
) -> None:
    """The DuckDB reader's ``_parsed`` (a whole file) becomes the file's staged part, without a copy."""
    _count_parsed(conn, stats, counts)
    _quarantine_parsed(conn, name)
    part = _next_review_part(conn)
    table = f"_stage_reviews_p{part}"
    conn.execute(f"ALTER TABLE _parsed RENAME TO {table}")
    _add_review_part(conn, table, seq_offset, name, fmt, part)


def _commit_reviews(conn, stats: FileStats, name: str, fmt: str, seq_offset: int) -> None:
    """One batch of the Python reader into ``_stage_reviews``."""
    _count_parsed(conn, stats)
    conn.execute(
        f"""
        INSERT INTO _stage_reviews
        SELECT trim(user_id), trim(item_id), rating, ts, {int(seq_offset)} + line_no, ?, line_no, ?
        FROM _parsed WHERE NOT blank AND reason IS NULL""",
        [name, fmt],
    )
    _quarantine_parsed(conn, name)


READERS = ("duckdb", "python")


def load_reviews(
    conn: duckdb.DuckDBPyConnection,
    ff: FileFormat,
    seq_offset: int,
    min_ts: int,
    max_ts: int,
    reader: str = "duckdb",
) -> FileStats:
    """Stage one review file (rows: see ``staged_reviews_sql``; unusable lines: ``_stage_quarantine``);
    returns its stats.

    ``seq_no`` is ``seq_offset + line_no`` (file order); the caller advances ``seq_offset`` by the
    file's ``max_line_no`` (or by the number of rows for S3-Rec files, see ``load_sequences``).
    ``reader``: ``duckdb`` tries DuckDB's reader first (the Python reader takes over for a file it
    cannot read exactly); ``python`` takes the exact line reader at once (tests compare the two).
    """
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, not {reader!r}")
    if ff.format in BENCHMARK_FORMATS:
        return load_sequences(conn, ff, seq_offset)
    t0 = time.perf_counter()
    name = ff.path.name
    stats = FileStats(name, ff.kind, ff.format, ff.compression)
    if ff.syntax == "json" and reader != "python":
        try:
            with memory_cap(conn):
                conn.execute(
                    _parse_reviews_sql(
                        _fast_source(ff.path, ff.compression, ff.max_line_bytes),
                        ff.format,
                        min_ts,
                        max_ts,
                        validate=False,
                    )
                )
            counts = _parsed_counts(conn)
        except duckdb.Error:
            counts = None
        if counts is not None and counts.unsure == 0:
            stats.parser = "duckdb"
            _stage_parsed_reviews(conn, stats, name, ff.format, seq_offset, counts)
            stats.seconds = time.perf_counter() - t0
            return stats
    stats.parser = "python"
    for batch in iter_lines(ff.path, max_line_bytes=ff.max_line_bytes):
        table, _ = _python_source(batch, literal=ff.syntax == "literal")
        table = _with_blanks(table, batch)
        conn.register("_py_lines", table)
        try:
            conn.execute(_parse_reviews_sql("_py_lines", ff.format, min_ts, max_ts))
        finally:
            conn.unregister("_py_lines")
        _commit_reviews(conn, stats, name, ff.format, seq_offset)
    _add_review_part(conn, "_stage_reviews", seq_offset, name, ff.format)
    stats.seconds = time.perf_counter() - t0
    return stats


def _with_blanks(table: pa.Table, batch: list[tuple[int, bytes]]) -> pa.Table:
    """Blank lines back in as NULL rows so that the SQL counts them."""
    blanks = [n for n, data in batch if not isinstance(data, LongLine) and not data.strip()]
    if not blanks:
        return table
    extra = pa.table(
        {
            "line_no": pa.array(blanks, pa.int64()),
            "raw": pa.nulls(len(blanks), pa.string()),
            "j": pa.nulls(len(blanks), pa.string()),
            "pre_reason": pa.nulls(len(blanks), pa.string()),
        }
    )
    return pa.concat_tables([table, extra])


def load_sequences(conn: duckdb.DuckDBPyConnection, ff: FileFormat, seq_offset: int) -> FileStats:
    """SASRec ``user item`` / S3-Rec ``user item1 item2 ...`` lines: no timestamps, file order kept."""
    t0 = time.perf_counter()
    name = ff.path.name
    stats = FileStats(name, ff.kind, ff.format, ff.compression, parser="python")
    seq = seq_offset
    for batch in iter_lines(ff.path, max_line_bytes=ff.max_line_bytes):
        users, items, seqs, line_nos = [], [], [], []
        q_lines, q_reasons, q_raw = [], [], []
        for line_no, data in batch:
            stats.max_line_no = line_no
            if isinstance(data, LongLine):
                stats.lines += 1
                q_lines.append(line_no)
                q_reasons.append("line_too_long")
                q_raw.append(data.decode("utf-8", errors="replace"))
                stats.quarantined["line_too_long"] += 1
                continue
            if not data.strip():
                stats.blank_lines += 1
                continue
            stats.lines += 1
            text, ok = _decode(data)
            tokens = text.split()
            reason = None
            if not ok:
                reason = "invalid_utf8"
            elif len(tokens) < 2:
                reason = "no_items_on_line"
            elif ff.format == "sasrec_pairs" and len(tokens) != 2:
                reason = "not_a_user_item_pair"
            elif any(t[:1] in "{[\"'" for t in tokens):
                reason = "malformed_line"
            if reason:
                q_lines.append(line_no)
                q_reasons.append(reason)
                q_raw.append(text)
                stats.quarantined[reason] += 1
                continue
            user = tokens[0]
            for item in tokens[1:]:
                seq += 1
                users.append(user)
                items.append(item)
                seqs.append(seq)
                line_nos.append(line_no)
        stats.kept += len(users)
        rows = pa.table(
            {
                "user_id": pa.array(users, pa.string()),
                "item_id": pa.array(items, pa.string()),
                "seq_no": pa.array(seqs, pa.int64()),
                "line_no": pa.array(line_nos, pa.int64()),
            }
        )
        conn.register("_py_rows", rows)
        try:
            conn.execute(
                "INSERT INTO _stage_reviews SELECT user_id, item_id, NULL, NULL, seq_no, ?, "
                "line_no, ? FROM _py_rows ORDER BY seq_no",
                [name, ff.format],
            )
        finally:
            conn.unregister("_py_rows")
        if q_lines:
            conn.executemany(
                "INSERT INTO _stage_quarantine VALUES (?, ?, ?, ?)",
                [(name, n, r, t) for n, r, t in zip(q_lines, q_reasons, q_raw)],
            )
    _add_review_part(conn, "_stage_reviews", seq_offset, name, ff.format)
    stats.max_line_no = max(stats.max_line_no, seq - seq_offset)  # seq_no stays unique across files
    stats.seconds = time.perf_counter() - t0
    return stats


# ---------------------------------------------------------------------------------------------
# Metadata

_CATEGORIES_SQL = """
list_filter(
  list_transform(
    flatten(list_transform(
      list_concat(coalesce(json_extract(j, '$.categories[*]'), []),
                  coalesce(json_extract(j, '$.category[*]'), [])),
      lambda x: CASE WHEN json_type(x) = 'ARRAY' THEN json_extract_string(x, '$[*]')
                     ELSE [json_extract_string(x, '$')] END)),
    lambda t: nullif(trim(replace(t, '&amp;', '&')), '')),
  lambda t: t IS NOT NULL)
"""


def _parse_meta_sql(source: str) -> str:
    return f"""
        CREATE OR REPLACE TEMP TABLE _parsed AS
        WITH src AS (SELECT line_no, raw, j, pre_reason FROM {source}),
        x AS (
            SELECT line_no, raw, pre_reason, raw IS NULL OR trim(raw) = '' AS blank,
                   CASE WHEN json_valid(j) THEN json_type(j) = 'OBJECT' ELSE false END AS ok, j
            FROM src),
        y AS (
            SELECT line_no, raw, pre_reason, blank, ok,
                   CASE WHEN ok THEN nullif(trim(coalesce(nullif(trim(j->>'parent_asin'), ''), j->>'asin')), '') END AS item_id,
                   CASE WHEN ok THEN j->>'title' END AS title,
                   CASE WHEN ok THEN coalesce(nullif(trim(j->>'brand'), ''), nullif(trim(j->>'store'), ''),
                                              nullif(trim(j->'details'->>'Brand'), '')) END AS brand,
                   CASE WHEN ok THEN {_CATEGORIES_SQL} END AS categories,
                   CASE WHEN ok THEN TRY_CAST(regexp_extract(replace(trim(j->>'price'), ',', ''),
                        '^\\$?\\s*([0-9]+(\\.[0-9]+)?)', 1) AS DOUBLE) END AS price,
                   CASE WHEN ok THEN coalesce(
                        nullif(trim(j->>'imUrl'), ''),
                        nullif(trim(json_extract_string(j, '$.imageURLHighRes[0]')), ''),
                        nullif(trim(json_extract_string(j, '$.imageURL[0]')), ''),
                        nullif(trim(json_extract_string(j, '$.image[0]')), ''),
                        nullif(trim(j->'images'->0->>'hi_res'), ''),
                        nullif(trim(j->'images'->0->>'large'), ''),
                        nullif(trim(j->'images'->0->>'thumb'), '')) END AS image_ref
            FROM x)
        -- raw is kept only for lines that go to quarantine
        SELECT * REPLACE (CASE WHEN reason IS NOT NULL THEN raw END AS raw) FROM (
        SELECT line_no, blank, item_id, title, brand,
               list_filter(categories, lambda c, i: list_position(categories, c) = i) AS categories,
               price, image_ref,
               CASE WHEN blank THEN NULL
                    WHEN pre_reason IS NOT NULL THEN pre_reason
                    WHEN NOT ok THEN 'malformed_json'
                    WHEN item_id IS NULL THEN 'missing_item_id'
               END AS reason,
               raw
        FROM y
        )
    """


def _commit_meta(conn, stats: FileStats, name: str, file_no: int, counts: ParsedCounts | None = None) -> None:
    _count_parsed(conn, stats, counts)
    conn.execute(
        """
        INSERT INTO _stage_items
        SELECT item_id, title, brand, categories, price, image_ref, ?, line_no, ?
        FROM _parsed WHERE NOT blank AND reason IS NULL ORDER BY line_no""",
        [name, file_no],
    )
    _quarantine_parsed(conn, name)


def load_meta(conn: duckdb.DuckDBPyConnection, ff: FileFormat, file_no: int) -> FileStats:
    """Append one metadata file to ``_stage_items`` (every line; duplicates are resolved later)."""
    t0 = time.perf_counter()
    name = ff.path.name
    stats = FileStats(name, ff.kind, ff.format, ff.compression)
    if ff.syntax == "json":
        try:
            with memory_cap(conn):
                conn.execute(_parse_meta_sql(_fast_source(ff.path, ff.compression, ff.max_line_bytes)))
            counts = _parsed_counts(conn)
        except duckdb.Error:
            counts = None
        if counts is not None and counts.unsure == 0:
            stats.parser = "duckdb"
            _commit_meta(conn, stats, name, file_no, counts)
            stats.seconds = time.perf_counter() - t0
            return stats
    stats.parser = "python"
    for batch in iter_lines(ff.path, max_line_bytes=ff.max_line_bytes):
        table, _ = _python_source(batch, literal=ff.syntax == "literal")
        conn.register("_py_lines", _with_blanks(table, batch))
        try:
            conn.execute(_parse_meta_sql("_py_lines"))
        finally:
            conn.unregister("_py_lines")
        _commit_meta(conn, stats, name, file_no)
    stats.seconds = time.perf_counter() - t0
    return stats


def load_item_attributes(conn: duckdb.DuckDBPyConnection, ff: FileFormat) -> FileStats:
    """An S3-Rec ``{item: [attribute ids]}`` file into ``_stage_item_attributes``."""
    t0 = time.perf_counter()
    name = ff.path.name
    stats = FileStats(name, ff.kind, ff.format, ff.compression, parser="python")
    try:
        with open_binary(ff.path) as fh:
            doc = json.load(fh)
    except (ValueError, OSError, EOFError, zlib.error, RecursionError) as exc:
        raise RawDataError(
            ff.path,
            f"is not a readable JSON object ({type(exc).__name__}: {exc})",
            "re-create the *_item2attributes.json file or remove it from the raw folder",
        ) from exc
    if not isinstance(doc, dict):
        raise RawDataError(
            ff.path, "holds JSON that is not an {item: [attributes]} object", "remove it from the raw folder"
        )
    rows, bad = [], []
    for item, attrs in doc.items():
        stats.lines += 1
        if (
            not isinstance(attrs, list)
            or not all(isinstance(a, (int, str)) for a in attrs)
            or not str(item).strip()
        ):
            bad.append((name, None, "not_a_list_of_attributes", json.dumps({item: attrs})[:100_000]))
            stats.quarantined["not_a_list_of_attributes"] += 1
            continue
        rows.extend((str(item), str(a)) for a in attrs)
    stats.kept = len(rows)
    table = pa.table(
        {
            "item_id": pa.array([r[0] for r in rows], pa.string()),
            "attribute": pa.array([r[1] for r in rows], pa.string()),
        }
    )
    conn.register("_py_attrs", table)
    try:
        conn.execute("INSERT INTO _stage_item_attributes SELECT item_id, attribute, ? FROM _py_attrs", [name])
    finally:
        conn.unregister("_py_attrs")
    if bad:
        conn.executemany("INSERT INTO _stage_quarantine VALUES (?, ?, ?, ?)", bad)
    stats.seconds = time.perf_counter() - t0
    return stats


# ---------------------------------------------------------------------------------------------
# Interactions: de-duplication and the k-interaction user/item filter (SQL on the `reviews` table)


@dataclass
class CoreCounts:
    """What a filter keeps."""

    users: int
    items: int
    interactions: int
    rounds: int = 1

    def as_dict(self) -> dict:
        return {
            "users": self.users,
            "items": self.items,
            "interactions": self.interactions,
            "rounds": self.rounds,
        }


def table_counts(conn, table: str, rounds: int = 1) -> CoreCounts:
    u, i, n = conn.execute(
        f"SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*) FROM {table}"
    ).fetchall()[0]
    return CoreCounts(u, i, n, rounds)


def dedupe_reviews(conn: duckdb.DuckDBPyConnection, source: str = "reviews") -> int:
    """``_dedup``: one row per (user, item), the earliest (by time, then file order); returns the
    number of rows dropped."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dedup AS
        SELECT user_id, item_id, ts, rating, seq_no, source_format
        FROM (SELECT *, row_number() OVER (PARTITION BY user_id, item_id
                                           ORDER BY ts NULLS LAST, seq_no) AS rn FROM {source})
        WHERE rn = 1""")
    before = conn.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0]
    after = conn.execute("SELECT count(*) FROM _dedup").fetchall()[0][0]
    return before - after


def one_pass_filter(conn: duckdb.DuckDBPyConnection, source: str, target: str, k: int) -> CoreCounts:
    """CARCA's filter: drop rows whose user or item has fewer than ``k`` rows, counted once."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE {target} AS
        WITH u AS (SELECT user_id FROM {source} GROUP BY 1 HAVING count(*) >= {int(k)}),
             i AS (SELECT item_id FROM {source} GROUP BY 1 HAVING count(*) >= {int(k)})
        SELECT s.* FROM {source} s SEMI JOIN u USING (user_id) SEMI JOIN i USING (item_id)""")
    return table_counts(conn, target)


def iterative_kcore(
    conn: duckdb.DuckDBPyConnection, source: str, target: str, k: int, max_rounds: int = 1000
) -> CoreCounts:
    """The k-core: repeat the one-pass filter until every user and item has at least ``k`` rows."""
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {target} AS SELECT * FROM {source}")
    rounds = 0
    while rounds < max_rounds:
        before = conn.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0]
        one_pass_filter(conn, target, "_kcore_step", k)
        after = conn.execute("SELECT count(*) FROM _kcore_step").fetchall()[0][0]
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {target} AS SELECT * FROM _kcore_step")
        rounds += 1
        if after == before:
            break
    conn.execute("DROP TABLE IF EXISTS _kcore_step")
    return table_counts(conn, target, rounds)
