"""tools/validate_data.py exit codes and output; tools/make_demo_data.py data (deterministic)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_fixtures import REAL_CLIPS, copy_real, flat, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def _validate_main():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import validate_data
    finally:
        sys.path.pop(0)
    return validate_data.main


def test_validate_data_exit_codes(tmp_path, capsys):
    main = _validate_main()                       # in-process: one interpreter start saved per case
    a, = copy_real(tmp_path / "audio", 1)
    good = write_jsonl(tmp_path / "good.jsonl", [flat(f"audio/{a.name}")])
    assert main([str(good)]) == 0
    out = capsys.readouterr().out
    assert "1 records, 1 good, 0 bad" in out and "BAD" not in out
    bad = write_jsonl(tmp_path / "bad.jsonl", [flat(f"audio/{a.name}"), dict(flat("audio/nope.wav"), id="x1"),
                                               dict(flat(f"audio/{a.name}", units=[5000]), id="x2")])
    assert main([str(bad), "--stage", "2"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(l.startswith("BAD x1: missing file") for l in lines)
    assert any(l.startswith("BAD x2: units out of range") for l in lines)
    assert any(l.startswith("BAD bad.jsonl:0: units missing") for l in lines)
    assert "3 records, 0 good, 3 bad" in lines[-1]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    r = _run("tools/validate_data.py", broken)      # the real command line, exit status included
    assert r.returncode == 2 and "line 1" in r.stderr


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".omni_ds_cache" not in p.parts}


def test_make_demo_data_is_valid_and_deterministic(tmp_path):
    pytest.importorskip("espeakng_loader")
    assert len(REAL_CLIPS) == 10
    for d in ("a", "b"):
        r = _run("tools/make_demo_data.py", "--out", tmp_path / d, "--no-models")
        assert r.returncode == 0, r.stderr
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    train = [json.loads(l) for l in (tmp_path / "a/train.jsonl").read_text().splitlines()]
    val = [json.loads(l) for l in (tmp_path / "a/val.jsonl").read_text().splitlines()]
    assert len(train) + len(val) == 20 and len(val) == 4
    assert sum(r["id"].startswith("gen_") for r in train + val) == 10
    for r in train + val:
        assert not Path(r["speech_instruction_path"]).is_absolute() and r["text_response"]
    r = _run("tools/validate_data.py", tmp_path / "a/train.jsonl", "--check-response-audio",
             "--max-seconds", "30")
    assert r.returncode == 0, r.stdout
    dialogues = json.loads((tmp_path / "a/multiturn/instruct_demo.json").read_text())
    assert sum(len(d["conversation"]) // 2 for d in dialogues) == len(train)
    assert {len(d["conversation"]) // 2 for d in dialogues} == {1, 2, 3}       # as the released set mixes
    r = _run("tools/validate_data.py", tmp_path / "a/multiturn/instruct_demo.json", "--check-response-audio")
    assert r.returncode == 0 and "0 bad" in r.stdout, r.stdout
