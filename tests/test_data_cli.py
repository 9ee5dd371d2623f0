"""``redr data verify|download`` through the real CLI entry point."""
from __future__ import annotations

from redr.cli import main
from redr.data.fixtures import write_higgs_csv_gz, write_image_dataset


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_lists_every_problem(tmp_path, capsys):
    folder = tmp_path / "kmnist"
    write_image_dataset(folder)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    code, out, _ = run(capsys, "data", "verify", "--dataset", "kmnist", "--data-dir", str(tmp_path))
    assert code == 1
    assert "PROBLEMS (4):" in out  # a bad file, a missing file, and two checksum mismatches
    assert "t10k-images-idx3-ubyte.gz: corrupt or not a gzip file" in out
    assert f"missing {folder / 'train-labels-idx1-ubyte.gz'}" in out
    assert "train-images-idx3-ubyte.gz: checksum MISMATCH: expected md5 bdb82020997e1d708af4cf47b453dcf7" in out


def test_verify_bad_higgs(tmp_path, capsys):
    write_higgs_csv_gz(tmp_path / "higgs" / "HIGGS.csv.gz", n=10)
    path = tmp_path / "higgs" / "HIGGS.csv.gz"
    path.write_bytes(path.read_bytes()[:-20])
    code, out, _ = run(capsys, "data", "verify", "--dataset", "higgs", "--data-dir", str(tmp_path))
    assert code == 1 and "truncated gzip file" in out


def test_download_without_network_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REDR_DATA_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    code, out, err = run(capsys, "data", "download", "--dataset", "kmnist", "--data-dir", str(tmp_path), "--no-progress")
    assert code == 1 and err.startswith("error: kmnist: missing 1 file(s)") and err.count("\n") == 1
    assert "train-images-idx3-ubyte.gz (md5 bdb82020997e1d708af4cf47b453dcf7)" in err and "--data-dir" in err


def test_usage_errors(capsys):
    code, _, err = run(capsys, "data", "verify", "--dataset", "mnist")
    assert code == 2 and "invalid choice" in err
