"""The `megakernel` command on the CPU: conversion end to end, and clear refusals."""
import os
import subprocess
import sys

from megakernel.cli import main
from megakernel.fixtures import tiny_config, write_random_checkpoint
from megakernel.weight_loader import FlatFile


def test_convert_command_writes_a_valid_flat_file(tmp_path, capsys):
    ck = write_random_checkpoint(str(tmp_path / "ck"), tiny_config(), seed=4)
    out = str(tmp_path / "w.bin")
    assert main(["convert", ck, out, "--quiet"]) == 0
    with FlatFile(out) as f:
        assert f.config.hidden_size == tiny_config()["hidden_size"]


def test_convert_bad_path_is_one_line_and_nonzero(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "w.bin")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not os.path.exists(tmp_path / "w.bin")


def test_generate_without_model_is_refused(capsys):
    assert main(["generate", "--prompt-ids", "1", "2"]) == 1
    assert "--random-weights" in capsys.readouterr().err


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "megakernel.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "convert" in r.stdout
