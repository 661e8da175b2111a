"""The dry run plans with the run's own settings: the effective OmniConfig (init_from's
config.json + overrides), so a stage-2 dry run on a trimmed stage-1 folder plans trimmed lengths."""
import contextlib
import io
import json
import re

from omni_ds.train.config import load_config
from omni_ds.train.demo import demo_stage2_config, write_tiny_stage2_setup
from omni_ds.train.parts import build_data, build_model, effective_omni_config
from omni_ds.train.recipe import REPO, main


def test_stage2_dry_run_on_a_trimmed_folder_plans_the_runs_lengths(tmp_path):
    d = write_tiny_stage2_setup(tmp_path / "demo")          # its stage-1 folder is trimmed-mode
    path = tmp_path / "stage2.json"
    path.write_text(json.dumps(demo_stage2_config(d, output_dir=str(tmp_path / "out"), report_to=[])))
    cfg = load_config(str(path))
    assert "encoder_mode" not in cfg.model.omni and effective_omni_config(cfg).encoder_mode == "trimmed"

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["--config", str(path), "--ds", str(REPO / "ds_configs" / "zero2.json"), "--dry-run",
                   "--world-size", "2"], stage=2)
    out = buf.getvalue()
    assert rc == 0, out
    planned = re.search(r"LLM positions per sample: mean (\d+), max (\d+)", out)

    model, tok = build_model(cfg, {})
    train, _, _ = build_data(cfg, model, tok, 2, 0, lambda msg: None)
    assert model.omni_config.encoder_mode == "trimmed"
    assert int(planned.group(2)) == int(max(train.lengths))
    assert abs(int(planned.group(1)) - float(train.lengths.mean())) <= 0.5
    assert int(planned.group(2)) < 300          # a padded plan has 300 speech positions alone


def _stage2_dry_run(demo, tmp_path, **overrides) -> tuple[int, str]:
    """`launch/stage2.py --dry-run --world-size 2` on the demo's stage-2 config with `overrides`:
    (exit code, what it printed)."""
    path = tmp_path / "stage2.json"
    path.write_text(json.dumps(demo_stage2_config(demo, report_to=[], **overrides)))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["--config", str(path), "--ds", str(REPO / "ds_configs" / "zero2.json"), "--dry-run",
                   "--world-size", "2"], stage=2)
    return rc, buf.getvalue()


def test_bad_records_under_on_bad_error_make_the_run_not_ready(tmp_path):
    d = write_tiny_stage2_setup(tmp_path / "demo")
    rows = [json.loads(line) for line in open(d / "train_units.jsonl")]
    rows[1]["speech_instruction_path"] = str(tmp_path / "gone.wav")        # a vanished clip
    manifest = tmp_path / "train_units.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out = _stage2_dry_run(d, tmp_path, output_dir=str(tmp_path / "out"),
                              **{"data.train_manifest": str(manifest), "data.on_bad": "error"})
    assert rc == 1 and "dry run: NOT READY" in out, out
    assert f"bad record {rows[1]['id']}" in out and "missing file" in out
    assert "1 bad records and data.on_bad = 'error'" in out


def test_the_dry_run_refuses_an_output_dir_it_cannot_write_and_a_manifest_with_nothing_usable(tmp_path):
    import pytest
    from omni_ds.train.config import ConfigError, build_config
    d = write_tiny_stage2_setup(tmp_path / "demo")
    (tmp_path / "taken").write_text("a file where the output folder should be")
    rows = [dict(json.loads(line), speech_instruction_path=str(tmp_path / "gone.wav"))
            for line in open(d / "train_units.jsonl")]
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out = _stage2_dry_run(d, tmp_path, output_dir=str(tmp_path / "taken"),
                              **{"data.train_manifest": str(nothing)})
    assert rc == 1 and "dry run: NOT READY" in out, out
    assert f"output_dir {tmp_path / 'taken'}: is a file, not a folder" in out
    assert "data.train_manifest" in out and "no usable records" in out
    with pytest.raises(ConfigError, match="'output_dir' = ' ': must name a folder"):
        build_config(demo_stage2_config(d, output_dir=" "))
