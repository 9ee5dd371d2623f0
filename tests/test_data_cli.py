"""``redr data verify|download`` through the real CLI entry point."""
from __future__ import annotations

import pytest

from redr.cli import main
from redr.data.fixtures import write_higgs_csv_gz, write_image_dataset


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_partial_kmnist_names_exactly_the_missing_files(shared_data_dir, capsys):
    code, out, err = run(capsys, "data", "verify", "--dataset", "kmnist", "--data-dir", str(shared_data_dir))
    assert code == 1 and "problems found" in err
    problems = out.split("PROBLEMS (3):")[1]
    missing = sorted(line.split("/")[-1] for line in problems.splitlines() if line.startswith("  - missing "))
    assert missing == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"]
    assert "train-labels-idx1-ubyte.gz         29,497 bytes  60,000 labels" in out
    assert "checksum ok (official md5)" in out and "redr data download --dataset kmnist" in out


def test_verify_fashion_mnist(shared_data_dir, capsys):
    code, out, _ = run(capsys, "data", "verify", "--dataset", "fashion-mnist", "--data-dir", str(shared_data_dir))
    assert code == 0
    assert "train split: 60,000 rows, 10 classes, 6,000 each" in out
    assert "test split: 10,000 rows, 10 classes, 1,000 each" in out
    assert out.count("checksum ok") == 4 and "OK: fashion-mnist" in out


def test_verify_higgs(shared_data_dir, capsys):
    code, out, _ = run(capsys, "data", "verify", "--dataset", "higgs", "--data-dir", str(shared_data_dir))
    assert code == 0 and "46,240 rows x 29 columns" in out and "21,783 background (0), 24,457 signal (1)" in out
    assert "38,533 training + 7,707 validation" in out


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
