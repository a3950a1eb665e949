"""Reading task records from files, Hub datasets and S3; writing JSONL safely.

:func:`read_records` accepts three kinds of source and always returns a list of
dicts (one per row):

* a local file ``PATH.{jsonl,json,csv,parquet}``. ``.json`` holds a list of
  objects, or an object whose ``"data"`` key holds that list (the common
  export shape); ``.csv`` values are all kept as strings (Sudoku puzzles such
  as ``0140432014020000`` would lose their leading zeros as numbers).
* a Hugging Face dataset ``hf:NAME[?config=C&split=S&revision=R]``, e.g.
  ``hf:openai/gsm8k?config=main&split=test``; ``config``/``split`` may also be
  given as keyword arguments. NAME may be a local folder: data files (loaded by
  ``datasets.load_dataset``) or a ``save_to_disk`` folder (``load_from_disk``).
  ``hf://`` is rejected: in huggingface_hub it names *files* in a repo.
* an S3 object ``s3://BUCKET/KEY.{jsonl,json,csv,parquet}`` read through s3fs;
  ``storage_options`` go to ``s3fs.S3FileSystem`` and missing ones default to
  ``AWS_ENDPOINT_URL[_S3]``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``.

Every problem a user can fix (missing file, bad line, unknown format, wrong
split) is a :class:`~d1.errors.DataError` whose message names the source.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs

from d1.errors import DataError

HF_PREFIX = "hf:"
S3_PREFIX = "s3://"
FORMATS = (".jsonl", ".json", ".csv", ".parquet")
_HF_QUERY_KEYS = ("config", "split", "revision")


def read_records(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    config: str | None = None,
    storage_options: dict | None = None,
) -> list[dict]:
    """All rows of ``source`` (see the module docstring for the syntax) as dicts.

    ``split`` and ``config`` only apply to ``hf:`` sources; ``storage_options``
    only to ``s3://`` ones. Passing them elsewhere is a DataError rather than
    silently ignored, so a misrouted option is noticed.
    """
    source = os.fspath(source)
    is_hf, is_s3 = source.startswith(HF_PREFIX), source.startswith(S3_PREFIX)
    if not is_hf and (split is not None or config is not None):
        raise DataError(f"{source}: split/config only apply to hf: sources")
    if not is_s3 and storage_options:
        raise DataError(f"{source}: storage_options only apply to s3:// sources")
    if is_hf:
        return _read_hf(source, split=split, config=config)
    if is_s3:
        return _read_s3(source, storage_options or {})
    return _read_local(source)


def _format_of(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in FORMATS:
        raise DataError(f"{name}: unknown file extension {suffix or '(none)'!r}; expected one of {', '.join(FORMATS)}")
    return suffix


def _read_local(path: str) -> list[dict]:
    fmt = _format_of(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a data file")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_bytes(data, fmt, path)


def parse_bytes(data: bytes, fmt: str, name: str) -> list[dict]:
    """Parse the whole content of a ``fmt`` file (``.jsonl`` ...); ``name`` is for messages."""
    if fmt == ".parquet":
        # Imported lazily: pyarrow is heavy and most sources are JSONL.
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(data)).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{name}: not a readable parquet file ({exc})") from None
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if fmt == ".csv":
        return _parse_csv(text, name)
    if fmt == ".json":
        return _parse_json(text, name)
    return _parse_jsonl(text, name)


def _parse_csv(text: str, name: str) -> list[dict]:
    # csv yields every cell as str, which is the point (leading zeros).
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records = []
    try:
        for row in reader:
            # DictReader pads short rows with None and files extra cells under
            # the key None: both mean a ragged file, not a string-valued record.
            if None in row or None in row.values():
                raise DataError(f"{name}: line {reader.line_num}: expected {len(reader.fieldnames)} fields")
            records.append(row)
    except csv.Error as exc:
        raise DataError(f"{name}: line {reader.line_num}: malformed CSV ({exc})") from None
    return records


_INT_DIGITS = re.compile(r"limit \((\d+) digits\).*value has (\d+) digits")


def json_value_problem(exc: ValueError | RecursionError) -> str:
    """Why ``json.loads`` refused a text that is not a syntax error, in words (one line)."""
    if isinstance(exc, RecursionError):
        return "arrays or objects nested too deeply to read"
    m = _INT_DIGITS.search(str(exc))
    if m:  # Python refuses to convert integers of more than sys.get_int_max_str_digits() digits
        return f"a number of {m.group(2)} digits, more than the {m.group(1)} that can be read"
    return " ".join(str(exc).split())[:200]


def read_json_file(path: str | os.PathLike) -> object:
    """The JSON document in ``path``; DataError naming the file when it is not UTF-8 JSON, is nested
    too deeply (``[[[[...``) or holds a number too long to convert (thousands of digits)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not readable JSON ({json_value_problem(exc)})") from None


def _parse_jsonl(text: str, name: str) -> list[dict]:
    records = []
    # Split on "\n" only: str.splitlines() would also break at U+2028 and
    # friends, which ensure_ascii=False writes unescaped inside strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():  # tolerate blank lines (e.g. a trailing one)
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{name}: line {lineno}: not readable JSON ({json_value_problem(exc)})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{name}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
    return records


def _parse_json(text: str, name: str) -> list[dict]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}: line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{name}: not readable JSON ({json_value_problem(exc)})") from None
    rows = doc.get("data") if isinstance(doc, dict) else doc
    if not isinstance(rows, list):
        raise DataError(f"{name}: expected a JSON list of objects or an object with a 'data' list")
    for i, rec in enumerate(rows):
        if not isinstance(rec, dict):
            raise DataError(f"{name}: item {i}: expected a JSON object, got {type(rec).__name__}")
    return rows


def _parse_hf(source: str, split: str | None, config: str | None) -> tuple[str, dict[str, str | None]]:
    """``hf:NAME?k=v`` -> (NAME, {config, split, revision}); kwargs must agree with the query."""
    rest = source[len(HF_PREFIX) :]
    if rest.startswith("//"):
        raise DataError(f"{source}: write hf:NAME (e.g. hf:openai/gsm8k?config=main&split=test), not hf://")
    name, _, query = rest.partition("?")
    if not name:
        raise DataError(f"{source}: missing dataset name after 'hf:'")
    opts: dict[str, str | None] = dict.fromkeys(_HF_QUERY_KEYS)
    try:
        query_opts = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DataError(f"{source}: malformed options after '?'; expected key=value&key=value") from None
    for key, values in query_opts.items():
        if key not in opts:
            raise DataError(f"{source}: unknown option {key!r}; allowed: {', '.join(_HF_QUERY_KEYS)}")
        if len(values) != 1 or not values[0]:
            raise DataError(f"{source}: option {key!r} needs exactly one non-empty value")
        opts[key] = values[0]
    for key, given in (("config", config), ("split", split)):
        if given is not None and opts[key] not in (None, given):
            raise DataError(f"{source}: {key}={given!r} conflicts with {key}={opts[key]!r} in the source")
        opts[key] = opts[key] or given
    return name, opts


def _read_hf(source: str, *, split: str | None, config: str | None) -> list[dict]:
    import datasets  # lazy: importing datasets costs ~1.5 s

    name, opts = _parse_hf(source, split, config)
    saved = os.path.isdir(name) and any(
        os.path.isfile(os.path.join(name, f)) for f in ("state.json", "dataset_dict.json")
    )
    if saved and (opts["config"] or opts["revision"]):
        raise DataError(f"{source}: config/revision do not apply to a save_to_disk folder")
    try:
        if saved:  # load_dataset refuses save_to_disk folders of a single Dataset
            ds = datasets.load_from_disk(name)
        else:
            # Passing split lets datasets prepare only that split.
            ds = datasets.load_dataset(name, opts["config"], split=opts["split"], revision=opts["revision"])
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as exc:
        # OSError covers ConnectionError (offline / no such Hub repo) and
        # FileNotFoundError; ValueError covers an unknown config or split.
        raise DataError(f"{source}: cannot load dataset ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        want = opts["split"]
        if want is None:
            if len(ds) != 1:
                raise DataError(f"{source}: several splits ({', '.join(ds)}); choose one with ?split=NAME")
            want = next(iter(ds))
        if want not in ds:
            raise DataError(f"{source}: no split {want!r}; available: {', '.join(ds)}")
        ds = ds[want]
    elif saved and opts["split"] is not None:  # a single saved Dataset has no splits
        raise DataError(f"{source}: split {opts['split']!r} given but the dataset has no splits")
    return ds.to_list()


def s3_filesystem(storage_options: dict | None = None):
    """An ``s3fs.S3FileSystem`` from explicit options, falling back to AWS_* env vars.

    botocore reads most of these variables itself, but only recent versions
    honour AWS_ENDPOINT_URL; resolving them here keeps behaviour independent of
    the installed botocore. ``skip_instance_cache`` avoids a cached instance
    (and its stale directory listings) from an earlier call with other options.
    """
    import s3fs

    opts = dict(storage_options or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
        opts["endpoint_url"] = endpoint
    for key, env in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY")):
        if key not in opts and os.environ.get(env):
            opts[key] = os.environ[env]
    opts.setdefault("skip_instance_cache", True)
    return s3fs.S3FileSystem(**opts)


def _read_s3(uri: str, storage_options: dict) -> list[dict]:
    fmt = _format_of(uri)
    if not uri[len(S3_PREFIX) :].partition("/")[2]:
        raise DataError(f"{uri}: expected s3://BUCKET/KEY")
    from botocore.exceptions import BotoCoreError

    try:
        with s3_filesystem(storage_options).open(uri, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DataError(f"{uri}: no such file") from None
    except PermissionError as exc:
        raise DataError(f"{uri}: access denied, check the S3 credentials ({exc})") from None
    except (OSError, BotoCoreError) as exc:  # unreachable endpoint, bad bucket name, ...
        raise DataError(f"{uri}: cannot read ({exc})") from None
    return parse_bytes(data, fmt, uri)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write ``records`` one JSON object per line, atomically; returns the path.

    Bytes are deterministic (sorted keys, UTF-8 without escaping, ``\\n``
    endings) so that DVC hashes only change when the content does. The data
    goes to a temporary file in the same folder that replaces ``path`` with
    ``os.replace`` once complete: on any error (a record that cannot be
    serialised, a full disk) ``path`` keeps its previous content and no
    partial file is left. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder => same filesystem, so os.replace is an atomic rename.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 lets the umask decide the mode, like a plain open()
    # (tempfile would create the file 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "wb") as fh:
            for rec in records:
                fh.write(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())  # content on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        raise DataError(f"{os.fspath(path)}: no such file") from None
    return digest.hexdigest()
