"""tools/export.py writes only where it may: a new or empty folder, or (with --overwrite) an
earlier export; a user's file in --out is never deleted."""
from pathlib import Path

import pytest

from launcher import load_tool

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_with_a_user_file_is_refused_and_kept(tmp_path, capsys, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "omni_ds_training.json").write_text("{}")
    argv = ["--checkpoint", str(tmp_path / "no_such_run"), "--out", str(out)] + (["--overwrite"] if overwrite else [])
    assert load_tool("export").main(argv) == 2
    err = capsys.readouterr().err
    assert "not empty" in err if not overwrite else "notes.txt" in err
    assert (out / "notes.txt").read_text() == "mine"


def test_out_rules():
    problem = load_tool("export")._out_problem
    assert problem(REPO / "README.md", False) == "is a file"
    assert problem(REPO / "no_such_folder", False) is None


def test_an_earlier_export_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "omni_ds_training.json"):
        (out / name).write_text("{}")
    problem = load_tool("export")._out_problem
    assert "pass --overwrite" in problem(out, False)
    assert problem(out, True) is None
    (out / "omni_ds_training.json").unlink()
    assert "not an earlier export" in problem(out, True)
