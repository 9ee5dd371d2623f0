"""``redr train --help``: every option states its default once, and what it states is what a run does."""
from __future__ import annotations

import contextlib
import io
import re

import pytest

from redr.cli import main
from redr.training.config import RunConfig


@pytest.fixture(scope="module")
def help_text() -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["train", "--help"])
    return buf.getvalue()


def option_helps(text: str) -> dict[str, str]:
    """Each option's help, joined over its wrapped lines."""
    body = text.split("options:", 1)[1]
    helps, name = {}, None
    for line in body.splitlines():
        match = re.match(r"^  (-[-\w]+)", line)
        if match:
            name = match.group(1)
            helps[name] = line[len(match.group(0)):]
        elif name is not None:
            helps[name] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in helps.items()}


def test_every_default_is_printed_once(help_text):
    helps = option_helps(help_text)
    assert len(helps) > 30
    assert "(default: None)" not in help_text
    twice = {name: text for name, text in helps.items() if text.count("default") > 1}
    assert not twice, twice


def test_the_preset_help_says_what_a_run_without_dataset_does(help_text):
    said = re.search(r"without --dataset, ([\w-]+)\)", option_helps(help_text)["--preset"]).group(1)
    config = RunConfig.from_options()
    assert config.preset == said and config.dataset == said


def test_the_stated_defaults_are_the_config_defaults(help_text):
    helps = option_helps(help_text)
    config = RunConfig.from_options(dataset="higgs")
    assert f"(default {config.density})" in helps["--density"]
    assert f"higgs {config.epochs}" in helps["--epochs"] and f"higgs {config.batch_size}" in helps["--batch-size"]
    assert f"(default {config.seed})" in helps["--seed"] and f"(default {config.backend})" in helps["--backend"]
