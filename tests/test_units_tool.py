"""tools/extract_units.py end to end: output format, bad audio reported by id, shards, resume
after a kill, .bin == .npy."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from units_fixtures import CLIPS, REPO, read_jsonl, write_manifest
from omni_ds.tiny.hubert import write_tiny_hubert, write_tiny_kmeans

TOOL = REPO / "tools" / "extract_units.py"
sys.path.insert(0, str(REPO / "tools"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("units_tool")
    ckpt = write_tiny_hubert(d / "tiny.pt", seed=2)
    km = write_tiny_kmeans(ckpt, CLIPS[:3], d / "km.bin", n_clusters=30, seed=0)
    (d / "broken.wav").write_bytes(b"RIFF....not a wav")
    wavs = [p for _ in range(3) for p in CLIPS]                      # 30 good records
    manifest = write_manifest(d / "m.jsonl", wavs, extra=[
        {"id": "broken", "speech_instruction_path": str(CLIPS[0]), "text_response": "t",
         "speech_response_path": str(d / "broken.wav")},
        {"id": "missing", "speech_instruction_path": str(CLIPS[0]), "text_response": "t",
         "speech_response_path": "nowhere.wav"},
        {"id": "tiny", "speech_instruction_path": str(CLIPS[0]), "text_response": "t",
         "speech_response_path": str(_short_wav(d))}])
    # Ids must be unique to compare rows: rewrite with an index suffix.
    rows = read_jsonl(manifest)
    for i, r in enumerate(rows):
        r["id"] = f"{r['id']}#{i}"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yield d, ckpt, km, manifest
    torch.set_num_threads(before)


def _short_wav(d):
    import numpy as np
    import soundfile as sf
    sf.write(d / "short.wav", np.zeros(200, np.float32), 16000)
    return d / "short.wav"


def _args(env, out, *extra):
    d, ckpt, km, manifest = env
    return ["--manifest", str(manifest), "--hubert", str(ckpt), "--kmeans", str(km),
            "--out", str(out), "--workers", "0", "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(env):
    """One uninterrupted run, in process."""
    import extract_units
    out = env[0] / "ref" / "out.jsonl"
    out.parent.mkdir()
    rc = extract_units.main(_args(env, out, "--part-size", "4"))
    return rc, out


def test_output_rows_and_failures_by_id(env, reference):
    rc, out = reference
    assert rc == 1                                   # some records failed: documented exit 1
    rows = read_jsonl(out)
    src = read_jsonl(env[3])
    assert len(rows) == 30
    good = [r for r in src if not r["id"].split("#")[0] in ("broken", "missing", "tiny")]
    assert [{k: v for k, v in r.items() if k != "units"} for r in rows] == good
    for r in rows:
        assert r["units"] and all(0 <= u < 30 for u in r["units"])
        assert all(a != b for a, b in zip(r["units"], r["units"][1:]))     # merged repeats
    failed = {f["id"].split("#")[0]: f["reason"] for f in read_jsonl(str(out) + ".failed.jsonl")}
    assert set(failed) == {"broken", "missing", "tiny"}
    assert "cannot read audio" in failed["broken"] and "too short" in failed["tiny"]
    summary = json.loads(open(str(out) + ".summary.json").read())
    assert summary["ok"] == 30 and summary["failed"] == 3 and summary["files"] == 33
    assert 0 < summary["unit_entropy_bits"] <= 30 ** 0.5 * 10


def test_shards_merge_to_the_same_output(env, reference, tmp_path):
    import extract_units
    out = tmp_path / "out.jsonl"
    # Both shards hold a failed record (parts 7 and 8), so both exit 1.
    assert extract_units.main(_args(env, out, "--part-size", "4", "--shard", "1/2")) == 1
    assert not out.exists()                          # shard 0's parts still missing
    assert extract_units.main(_args(env, out, "--part-size", "4", "--shard", "0/2")) == 1
    assert out.read_bytes() == reference[1].read_bytes()


def test_rank_and_world_size_pick_the_shard(env, reference, tmp_path, monkeypatch):
    import extract_units
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    extract_units.main(_args(env, out, "--part-size", "4"))
    written = sorted(p.name for p in (tmp_path / "out.jsonl.parts").glob("part-*.jsonl"))
    assert written == ["part-000001.jsonl", "part-000004.jsonl", "part-000007.jsonl"]


def test_no_dedup_and_npy_centroids(env, reference, tmp_path):
    import extract_units
    npy = tmp_path / "km.npy"
    out = tmp_path / "out.jsonl"
    d, ckpt, km, manifest = env
    assert extract_units.main(["--kmeans", str(km), "--save-centroids", str(npy)]) == 0
    args = _args(env, out, "--part-size", "4")
    args[args.index(str(km))] = str(npy)
    assert extract_units.main(args) == 1
    assert out.read_bytes() == reference[1].read_bytes()          # .npy == .bin
    out2 = tmp_path / "raw.jsonl"
    assert extract_units.main(_args(env, out2, "--no-dedup")) == 1
    full = read_jsonl(out2)
    from omni_ds.units.extract import merge_repeats
    assert [merge_repeats(r["units"]) for r in full] == [r["units"] for r in read_jsonl(reference[1])]
    assert sum(map(len, (r["units"] for r in full))) > sum(len(r["units"]) for r in read_jsonl(reference[1]))


def test_kill_and_resume_equals_uninterrupted_run(env, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    cmd = [sys.executable, str(TOOL), *_args(env, out, "--part-size", "1")]
    cmd[cmd.index("--workers") + 1] = "1"          # a real loader worker process in the killed run
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("part-*.jsonl")) and proc.poll() is None:
        time.sleep(0.005)
    # The whole process group, as a scheduler kills a job: the loader worker must not outlive it.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("part-*.jsonl")))
    assert 0 < done < 33, f"kill did not land mid-run ({done} parts written)"
    assert not out.exists()
    import extract_units                      # the rerun (in process: same code, faster start)
    cmd[cmd.index("--workers") + 1] = "0"
    assert extract_units.main(cmd[2:]) == 1
    assert out.read_bytes() == reference[1].read_bytes()
    assert len(list(parts.glob("part-*.jsonl"))) == 33
    # A rerun with nothing left to do only merges again: same bytes.
    assert extract_units.main(cmd[2:]) == 1
    assert out.read_bytes() == reference[1].read_bytes()


def test_parts_of_another_job_are_refused(env, reference, tmp_path, capsys):
    import extract_units
    out = tmp_path / "out.jsonl"
    assert extract_units.main(_args(env, out, "--part-size", "8", "--shard", "0/4")) == 1
    assert extract_units.main(_args(env, out, "--part-size", "4")) == 2
    assert "different job" in capsys.readouterr().err and not out.exists()


def test_help_and_bad_arguments():
    run = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--batch-seconds" in run.stdout and "Exit status" in run.stdout
    run = subprocess.run([sys.executable, str(TOOL), "--kmeans", "x.npy", "--shard", "3/2",
                          "--manifest", "m", "--hubert", "h", "--out", "o"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "--shard" in run.stderr


def test_a_refused_layer_leaves_no_plan_behind(env, reference, tmp_path, capsys):
    """--layer 0 is refused before anything is written, so the corrected command then runs
    (the plan used to be pinned first and refused the fix as 'differs in [layer]')."""
    import extract_units
    out = tmp_path / "out.jsonl"
    assert extract_units.main(_args(env, out, "--part-size", "4", "--layer", "0")) == 2
    assert "layer" in capsys.readouterr().err
    assert not (out.parent / (out.name + ".parts")).exists() or not any((out.parent / (out.name + ".parts")).iterdir())
    assert extract_units.main(_args(env, out, "--part-size", "4")) == reference[0]
    assert read_jsonl(out) == read_jsonl(reference[1])
