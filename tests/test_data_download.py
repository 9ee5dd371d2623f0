"""Downloads for real, against an HTTP server on 127.0.0.1 that the test starts (with Range support)."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from redr.cli import main
from redr.data import dataset as dataset_module, load_dataset
from redr.data.download import download_file, part_path
from redr.data.fixtures import write_higgs_csv_gz
from redr.data.registry import FASHION_MNIST
from redr.errors import DataError


class Server:
    """Serves ``root`` on 127.0.0.1; records requests; can cut the next response short."""

    def __init__(self, root: Path):
        self.root, self.requests, self.cut_next_after = root, [], None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) > 0:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_next_after is not None:
                    body, server.cut_next_after = body[: server.cut_next_after], None
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    with Server(root) as srv:
        yield srv


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def payload(server, name="blob.bin", size=3_000_000) -> tuple[bytes, str]:
    data = hashlib.sha256(b"seed").digest() * (size // 32)
    (server.root / name).write_bytes(data)
    return data, hashlib.md5(data).hexdigest()


def test_download_verifies_and_moves_into_place(server, tmp_path, capsys):
    data, md5 = payload(server)
    dest = tmp_path / "data" / "blob.bin"
    result = download_file([f"{server.url}/blob.bin"], dest, md5=md5, progress=True)
    assert result.ok and dest.read_bytes() == data
    assert not part_path(dest).exists() and sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]
    err = capsys.readouterr().err
    assert "blob.bin" in err and "100%" in err and "2.86M" in err  # the progress bar, with the total size


def test_wrong_checksum_leaves_no_file(server, tmp_path):
    _, md5 = payload(server)
    dest = tmp_path / "data" / "blob.bin"
    with pytest.raises(DataError) as err:
        download_file([f"{server.url}/blob.bin"], dest, md5="0" * 32, progress=False)
    assert f"expected md5 {'0' * 32}, got {md5}" in str(err.value) and "deleted" in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_broken_connection_keeps_part_and_resumes_with_range(server, tmp_path):
    data, md5 = payload(server)
    dest = tmp_path / "blob.bin"
    server.cut_next_after = 1_000_000
    with pytest.raises(DataError, match="connection closed after 1,000,000 of 3,000,000 bytes.*rerun resumes"):
        download_file([f"{server.url}/blob.bin"], dest, md5=md5, progress=False)
    assert not dest.exists() and part_path(dest).stat().st_size == 1_000_000  # never visible as the real file
    download_file([f"{server.url}/blob.bin"], dest, md5=md5, progress=False)
    assert server.requests[-1] == ("/blob.bin", "bytes=1000000-")
    assert dest.read_bytes() == data and not part_path(dest).exists()


def test_an_error_page_is_not_accepted_without_a_checksum(server, tmp_path):
    (server.root / "HIGGS.csv.gz").write_text("<html>Service unavailable</html>")
    dest = tmp_path / "d" / "HIGGS.csv.gz"
    with pytest.raises(DataError, match="did not send a gzip file"):
        download_file([f"{server.url}/HIGGS.csv.gz"], dest, md5=None, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_falls_back_to_the_next_url(server, tmp_path):
    data, md5 = payload(server, size=1000)
    dest = tmp_path / "blob.bin"
    download_file([f"{server.url}/nope.bin", f"{server.url}/blob.bin"], dest, md5=md5, progress=False)
    assert dest.read_bytes() == data


def test_missing_file_with_no_network(tmp_path):
    url = closed_port_url()
    with pytest.raises(DataError) as err:
        load_dataset("kmnist", data_dir=tmp_path, base_url=url, progress=False)
    msg = str(err.value)
    assert f"{url}/kmnist/train-images-idx3-ubyte.gz" in msg  # the URL tried
    assert "train-images-idx3-ubyte.gz (md5 bdb82020997e1d708af4cf47b453dcf7)" in msg
    assert str(tmp_path / "kmnist") in msg and "--data-dir" in msg and "REDR_DATA_DIR" in msg
    assert "Connection refused" in msg or "refused" in msg.lower()
    assert list((tmp_path / "kmnist").iterdir()) == []


def test_official_urls_named_when_no_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("REDR_DATA_BASE_URL", raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz" in msg
    assert "raw.githubusercontent.com/zalandoresearch/fashion-mnist" in msg


@pytest.fixture
def fashion_mirror(server, shared_data_dir, monkeypatch):
    """Serve the shared Fashion-MNIST copy; ignore a system-wide copy so the download really happens."""
    (server.root / "fashion-mnist").mkdir()
    for f in FASHION_MNIST.files:
        (server.root / "fashion-mnist" / f.name).symlink_to(shared_data_dir / "fashion-mnist" / f.name)
    monkeypatch.setattr(dataset_module, "get_spec", lambda name: dataclasses.replace(FASHION_MNIST, extra_dirs=()))
    return server


def test_load_dataset_downloads_then_loads(fashion_mirror, tmp_path):
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "d", base_url=fashion_mirror.url, progress=False,
                      train_rows=100, test_rows=100)
    assert sorted(ds.info["downloaded"]) == sorted(f.name for f in FASHION_MNIST.files)
    assert sorted(p.name for p in (tmp_path / "d" / "fashion-mnist").iterdir()) == sorted(ds.info["downloaded"])
    assert ds.train_x.shape == (100, 784)


def test_cli_download_uses_the_mirror_variable(server, tmp_path, monkeypatch, capsys):
    rows = write_higgs_csv_gz(server.root / "higgs" / "HIGGS.csv.gz", n=120)
    monkeypatch.setenv("REDR_DATA_BASE_URL", server.url)
    assert main(["data", "download", "--dataset", "higgs", "--data-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "downloaded 1 file(s)" in out and "120 rows x 29 columns" in out and "OK: higgs" in out
    assert (tmp_path / "higgs" / "HIGGS.csv.gz").read_bytes() == (server.root / "higgs" / "HIGGS.csv.gz").read_bytes()
    assert len(rows) == 120
