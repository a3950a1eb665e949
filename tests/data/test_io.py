"""d1.data.io: local formats, hf: sources (offline, local datasets), atomic writes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import socket

import pytest

from d1.data.io import parse_bytes, read_records, sha256_file, write_jsonl
from d1.errors import DataError

RECORDS = [
    {"question": "Janet’s ducks lay 16 eggs…", "answer": "18", "n": 1},
    {"question": "line\u2028separator and \"quotes\"\nnewline", "answer": "0042", "n": 2},
]


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- local files


def test_jsonl_round_trip(tmp_path):
    path = write_jsonl(tmp_path / "sub" / "x.jsonl", RECORDS)  # parent is created
    assert read_records(str(path)) == RECORDS


def test_jsonl_bytes_are_deterministic(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"b": 1, "a": "é"}])
    b = write_jsonl(tmp_path / "b.jsonl", iter([{"a": "é", "b": 1}]))  # any iterable, any key order
    assert a.read_bytes() == b.read_bytes() == '{"a": "é", "b": 1}\n'.encode()
    assert sha256_file(a) == hashlib.sha256(a.read_bytes()).hexdigest()


def test_jsonl_blank_lines_and_crlf(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\r\n{"a": 2}\r\n')
    assert read_records(path) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("doc", [RECORDS, {"data": RECORDS}])
def test_json_list_or_data_object(tmp_path, doc):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert read_records(str(path)) == RECORDS


def test_csv_keeps_strings_and_leading_zeros(tmp_path):
    path = tmp_path / "sudoku.csv"
    _write_csv(path, [{"Puzzle": "0140432014020000", "Solution": "2143432114323214", "n": "7"}])
    assert read_records(str(path)) == [{"Puzzle": "0140432014020000", "Solution": "2143432114323214", "n": "7"}]


def test_builtin_sudoku_csv_keeps_leading_zeros():
    from importlib import resources

    path = resources.files("d1.data").joinpath("benchmarks", "sudoku", "4x4_test.csv")
    rows = read_records(str(path))
    assert rows and all(len(r["Puzzle"]) == 16 and r["Puzzle"].isdigit() for r in rows)
    assert any(r["Puzzle"].startswith("0") for r in rows)


def test_csv_with_bom_and_ragged_row(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("\ufeffa,b\n1,2\n".encode())
    assert read_records(str(path)) == [{"a": "1", "b": "2"}]
    path.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(DataError, match=r"x\.csv: line 3: expected 2 fields"):
        read_records(str(path))


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), path)
    assert read_records(str(path)) == RECORDS


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: no such file$"):
        read_records(str(path))


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n')
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: line 3: invalid JSON"):
        read_records(str(path))
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2: expected a JSON object, got list"):
        read_records(str(path))


@pytest.mark.parametrize("doc", ['{"rows": []}', "[1]", "{"])
def test_bad_json_document(tmp_path, doc):
    path = tmp_path / "bad.json"
    path.write_text(doc)
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_records(str(path))


@pytest.mark.parametrize("name", ["x.txt", "x.jsonl.gz", "noext"])
def test_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("{}")
    with pytest.raises(DataError, match=r"unknown file extension '(\.txt|\.gz|\(none\))'"):
        read_records(str(path))


def test_not_utf8_and_not_parquet():
    with pytest.raises(DataError, match="mem.jsonl: not UTF-8"):
        parse_bytes(b"\xff\xfe{}", ".jsonl", "mem.jsonl")
    with pytest.raises(DataError, match="mem.parquet: not a readable parquet file"):
        parse_bytes(b"not parquet", ".parquet", "mem.parquet")


def test_options_for_other_source_kinds_are_rejected(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", RECORDS)
    with pytest.raises(DataError, match="split/config only apply to hf:"):
        read_records(str(path), split="test")
    with pytest.raises(DataError, match="storage_options only apply to s3://"):
        read_records(str(path), storage_options={"key": "k"})


def test_sha256_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        sha256_file(tmp_path / "nope")


# ------------------------------------------------------------- atomic writes


class _Boom:
    """Not JSON-serialisable: json.dumps fails on it halfway through the file."""


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = write_jsonl(tmp_path / "out.jsonl", RECORDS)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl(path, [RECORDS[0], {"x": _Boom()}])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_failed_first_write_leaves_nothing(tmp_path):
    def records():
        yield RECORDS[0]
        raise KeyboardInterrupt  # even an interrupt must not leave a partial file

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(tmp_path / "out.jsonl", records())
    assert os.listdir(tmp_path) == []


def test_written_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_jsonl(tmp_path / "out.jsonl", RECORDS)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------ hf: sources


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """datasets in offline mode, its cache in tmp_path, and no non-loopback connections."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    return datasets


@pytest.fixture
def local_dataset(tmp_path):
    folder = tmp_path / "ds"
    write_jsonl(folder / "train.jsonl", RECORDS)
    write_jsonl(folder / "test.jsonl", RECORDS[:1])
    return folder


def test_hf_local_folder_with_split(offline_hf, local_dataset):
    assert read_records(f"hf:{local_dataset}?split=train") == RECORDS
    assert read_records(f"hf:{local_dataset}", split="test") == RECORDS[:1]
    assert read_records(f"hf:{local_dataset}?split=test", split="test") == RECORDS[:1]


def test_hf_split_errors(offline_hf, local_dataset):
    with pytest.raises(DataError, match=r"several splits \((train, test|test, train)\); choose one with \?split="):
        read_records(f"hf:{local_dataset}")
    with pytest.raises(DataError, match="cannot load dataset.*validation"):
        read_records(f"hf:{local_dataset}?split=validation")
    with pytest.raises(DataError, match="conflicts with split='train'"):
        read_records(f"hf:{local_dataset}?split=train", split="test")


def test_hf_save_to_disk_folder(offline_hf, tmp_path):
    ds = offline_hf.Dataset.from_list(RECORDS)
    ds.save_to_disk(str(tmp_path / "one"))
    offline_hf.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "dict"))
    assert read_records(f"hf:{tmp_path / 'one'}") == RECORDS
    assert read_records(f"hf:{tmp_path / 'dict'}") == RECORDS  # the only split
    assert read_records(f"hf:{tmp_path / 'dict'}", split="test") == RECORDS
    with pytest.raises(DataError, match="no split 'train'; available: test"):
        read_records(f"hf:{tmp_path / 'dict'}", split="train")
    with pytest.raises(DataError, match="given but the dataset has no splits"):
        read_records(f"hf:{tmp_path / 'one'}", split="train")
    with pytest.raises(DataError, match="do not apply to a save_to_disk folder"):
        read_records(f"hf:{tmp_path / 'one'}?config=main")


@pytest.mark.parametrize(
    "source, message",
    [
        ("hf:", "missing dataset name"),
        ("hf://openai/gsm8k", "not hf://"),
        ("hf:openai/gsm8k?subset=main", "unknown option 'subset'"),
        ("hf:openai/gsm8k?split=", "needs exactly one non-empty value"),
        ("hf:openai/gsm8k?split", "malformed options"),
        # offline, and not cached: must fail cleanly without any connection
        ("hf:no-such-org/no-such-dataset?split=test", "cannot load dataset"),
    ],
)
def test_hf_bad_sources(offline_hf, source, message):
    with pytest.raises(DataError, match=message):
        read_records(source)


def test_hf_unknown_config(offline_hf, local_dataset):
    with pytest.raises(DataError, match="cannot load dataset"):
        read_records(f"hf:{local_dataset}?config=nope&split=train")
