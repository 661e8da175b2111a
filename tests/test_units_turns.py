"""tools/extract_units.py on dialogues: km1000 units on every answer of a multi-turn manifest
(the released InstructS2S-200K layout and multi-turn LLaVA), each turn's units those of its audio
extracted alone, a failed turn listed with the record left out, kill / resume and shards giving
the bytes of one uninterrupted run, and the output valid for stage 2."""
from __future__ import annotations

import copy
import json
import os
import shutil
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
COPIES = 4          # of each dialogue shape: enough parts for a kill to land mid-run


def _released(rid: str, wavs: list[str]) -> dict:
    """The released layout: alternating turns, a path per turn, CosyVoice2 unit strings on answers."""
    conv = []
    for k, (question, answer) in enumerate(zip(wavs[0::2], wavs[1::2])):
        conv.append({"from": "human", "text": f"question {k}", "speech": question, "unit": None})
        conv.append({"from": "gpt", "text": f"answer {k}", "speech": answer,
                     "unit": f"<{4021 + k}><17><6560><{k}>"})
    return {"id": rid, "conversation": conv}


def _llava(rid: str, wavs: list[str]) -> dict:
    conv = []
    for k, (question, answer) in enumerate(zip(wavs[0::2], wavs[1::2])):
        conv.append({"from": "human", "value": f"<speech>\nPlease answer {k}.", "speech": question})
        conv.append({"from": "gpt", "value": f"answer {k}", "speech": answer})
    return {"id": rid, "conversations": conv}


def _records() -> list[dict]:
    names = [f"wav/{p.name}" for p in CLIPS]
    recs = []
    for c in range(COPIES):
        w = names[c:] + names[:c]                         # each copy its own pairing of clips
        recs += [_released(f"one_{c}", w[:2]), _released(f"two_{c}", w[2:6]),
                 _released(f"three_{c}", w[4:10]), _llava(f"llava_two_{c}", w[1:5]),
                 _llava(f"llava_one_{c}", w[6:8])]
    missing = _released("missing_turn2", names[:4])
    missing["conversation"][3]["speech"] = "wav/nowhere.wav"
    problem = _released("problem", names[:4])
    problem["conversation"][1]["from"] = "human"            # does not alternate
    return recs[:7] + [missing] + recs[7:] + [problem]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("units_turns")
    ckpt = write_tiny_hubert(d / "tiny.pt", seed=2)
    km = write_tiny_kmeans(ckpt, CLIPS[:3], d / "km.bin", n_clusters=30, seed=0)
    (d / "wav").mkdir()
    for p in CLIPS:
        shutil.copy(p, d / "wav" / p.name)
    manifest = d / "dialogues.json"                          # a JSON array, as released
    manifest.write_text(json.dumps(_records(), indent=1))
    yield d, ckpt, km, manifest
    torch.set_num_threads(before)


def _args(env, out, *extra, manifest=None):
    d, ckpt, km, dialogues = env
    return ["--manifest", str(manifest or dialogues), "--hubert", str(ckpt), "--kmeans", str(km),
            "--out", str(out), "--workers", "0", "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(env):
    """One uninterrupted run, in process."""
    import extract_units
    out = env[0] / "ref" / "out.jsonl"
    out.parent.mkdir()
    return extract_units.main(_args(env, out, "--part-size", "3")), out


def _answers(rec: dict) -> list[dict]:
    return (rec.get("conversation") or rec["conversations"])[1::2]


def _without_units(rec: dict) -> dict:
    rec = copy.deepcopy(rec)
    rec.pop("units", None)
    for turn in _answers(rec):
        turn.pop("units", None)
    return rec


def _units_of(rec: dict) -> list[list[int]]:
    """Each answer's units, from wherever the tool put them."""
    if "units" in rec:
        return [rec["units"]]
    return [turn["units"] for turn in _answers(rec)]


def test_units_on_every_answer_and_nothing_else_changed(env, reference):
    rc, out = reference
    assert rc == 1                                            # two records failed
    src = {r["id"]: r for r in json.loads(env[3].read_text())}
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [i for i in src if i not in ("missing_turn2", "problem")]
    for r in rows:
        assert _without_units(r) == src[r["id"]]              # unit strings, paths, texts as read
        if r["id"].startswith("llava_one"):
            assert "units" in r and "units" not in _answers(r)[0]        # single-turn: on the record
        else:
            assert "units" not in r and all("units" in t for t in _answers(r))
            assert all("units" not in t for t in (r.get("conversation") or r["conversations"])[0::2])
        for units in _units_of(r):
            assert units and all(0 <= u < 30 for u in units)
    assert sum(len(_units_of(r)) for r in rows) == COPIES * (1 + 2 + 3 + 2 + 1)


def test_each_turn_has_the_units_of_its_audio_alone(env, reference, tmp_path):
    import extract_units
    d = env[0]
    alone = write_manifest(tmp_path / "alone.jsonl", [d / "wav" / p.name for p in CLIPS])
    out = tmp_path / "alone_units.jsonl"
    assert extract_units.main(_args(env, out, manifest=alone)) == 0
    by_clip = {r["id"]: r["units"] for r in read_jsonl(out)}
    for r in read_jsonl(reference[1]):
        answers = [r["speech_response_path"]] if "speech_response_path" in r else [t["speech"] for t in _answers(r)]
        assert _units_of(r) == [by_clip[os.path.basename(a)[:-4]] for a in answers], r["id"]


def test_failed_turn_and_problem_record_are_listed_and_left_out(env, reference):
    out = reference[1]
    failed = read_jsonl(str(out) + ".failed.jsonl")
    assert [(f["id"], f["index"], f.get("turn")) for f in failed] == [("missing_turn2", 7, 2), ("problem", 21, None)]
    assert failed[0]["path"] == str(env[0] / "wav" / "nowhere.wav")
    assert "cannot read audio" in failed[0]["reason"]
    assert failed[1]["reason"].startswith("bad dialogue: conversation[1]: expected from='gpt'")
    summary = json.loads(open(str(out) + ".summary.json").read())
    assert (summary["ok"], summary["failed"], summary["files"]) == (20, 2, 22)
    plan = json.loads((out.parent / "out.jsonl.parts" / "plan.json").read_text())
    assert plan["records_with_units_on_turns"] == 4 * COPIES + 2      # llava_one keeps record units


def test_output_validates_for_stage_2(env, reference):
    from omni_ds.data.manifest import load_manifest
    from omni_ds.data.validate import ValidationConfig, validate_manifest
    m = load_manifest(reference[1], audio_root=str(env[0]))
    report = validate_manifest(m, ValidationConfig(stage=2))
    assert report.ok, report.summary()
    assert [t["units"] for i in range(len(m)) for t in m.turns(i)] == \
        [u for r in read_jsonl(reference[1]) for u in _units_of(r)]
    # The data set's own CosyVoice2 units are still read, unchanged, beside the km1000 ones.
    assert m.turns(0)[0]["dataset_units"] == [4021, 17, 6560, 0]


def test_shards_merge_to_the_same_output(env, reference, tmp_path):
    import extract_units
    out = tmp_path / "out.jsonl"
    assert extract_units.main(_args(env, out, "--part-size", "2", "--shard", "1/2")) == 1
    assert not out.exists()                                   # shard 0's parts still missing
    assert extract_units.main(_args(env, out, "--part-size", "2", "--shard", "0/2")) == 1
    assert out.read_bytes() == reference[1].read_bytes()
    assert read_jsonl(str(out) + ".failed.jsonl") == read_jsonl(str(reference[1]) + ".failed.jsonl")


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
    n = len(_records())
    done = len(list(parts.glob("part-*.jsonl")))
    assert 0 < done < n, f"kill did not land mid-run ({done} parts written)"
    assert not out.exists()
    import extract_units                      # the rerun (in process: same code, faster start)
    cmd[cmd.index("--workers") + 1] = "0"
    assert extract_units.main(cmd[2:]) == 1
    assert out.read_bytes() == reference[1].read_bytes()
    assert len(list(parts.glob("part-*.jsonl"))) == n
    assert read_jsonl(str(out) + ".failed.jsonl") == read_jsonl(str(reference[1]) + ".failed.jsonl")


def test_put_units_writes_where_each_form_is_read_back(tmp_path):
    """The three forms through the manifest reader: units read back per turn as they were put."""
    from omni_ds.data.manifest import load_manifest
    from omni_ds.data.record_forms import put_units
    flat = {"id": "flat", "speech_instruction_path": "q.wav", "text_response": "a", "speech_response_path": "a.wav"}
    gpt_held = _llava("gpt_held", ["q.wav", "a.wav"])
    gpt_held["conversations"][1]["units"] = [9]              # the reader prefers these: replaced
    recs = [put_units(flat, [[1, 2]]), put_units(_llava("l1", ["q.wav", "a.wav"]), [[3]]),
            put_units(gpt_held, [[4]]), put_units(_llava("l2", ["q", "a", "q", "a"]), [[5], [6]]),
            put_units(_released("r1", ["q", "a"]), [[7]]), put_units(_released("r2", ["q", "a"] * 2), [[8], [0]])]
    assert "units" in recs[1] and "units" not in recs[2] and "units" not in recs[4]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = load_manifest(path)
    assert [[t["units"] for t in m.turns(i)] for i in range(len(m))] == [[[1, 2]], [[3]], [[4]], [[5], [6]], [[7]],
                                                                        [[8], [0]]]
    with pytest.raises(ValueError, match="2 unit lists for a record of 1 turns"):
        put_units(flat, [[1], [2]])
