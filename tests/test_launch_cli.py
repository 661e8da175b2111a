"""launch/stage{1,2}.py as users call them: without --config they run the paper recipe."""
import contextlib
import io

import pytest

from omni_ds.train.recipe import PAPER_RECIPES, main


@pytest.mark.parametrize("stage", [1, 2])
def test_help_names_the_paper_recipe_as_the_default_config(stage, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"], stage=stage)
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"launch/configs/stage{stage}.json" in out and "paper's" in out


@pytest.mark.parametrize("stage", [1, 2])
def test_no_config_means_the_paper_recipe(stage, tmp_path, monkeypatch):
    """The README's `deepspeed --num_gpus 4 launch/stage1.py --ds ds_configs/zero2.json`: no
    'required --config' error; the recipe's own paths are checked (absent here, so NOT READY)."""
    monkeypatch.chdir(tmp_path)                    # no models/ or data/ here
    assert PAPER_RECIPES[stage].is_file()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["--ds", str(PAPER_RECIPES[stage].parents[2] / "ds_configs" / "zero2.json"), "--dry-run",
                   "--world-size", "4", "--gpu", "L40"], stage=stage)
    out = buf.getvalue()
    assert rc == 1 and f"stage {stage}, config OK" in out and "NOT READY" in out
    missing = "models/Llama-3.1-8B-Instruct" if stage == 1 else "runs/stage1/final"
    assert f"{missing!r}: no such file or folder" in out
