"""The README's library example runs as written, and its commands match CI."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_library_example_runs(capsys):
    blocks = python_blocks()
    assert blocks, "the README shows a library example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.strip() == "[19968, 6656, 260]"


def test_readme_test_command_is_what_ci_runs():
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert len(bash) >= 2
    test_command = bash[1].strip()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pytest" in test_command and "pip install torch==2.13.0" in test_command
    for part in ("pip install torch==2.13.0", 'pip install -e ".[test]"', "python -m pytest -q"):
        assert part in test_command and part in ci
