"""Manifest reading: both record forms, JSON list and JSONL, relative paths, raw, errors."""
import json

import pytest

from data_fixtures import flat, write_jsonl
from omni_ds.data.manifest import CACHE_DIRNAME, ManifestError, load_manifest

LLAVA = {"id": "q7", "speech": "audio/q7.wav",
         "conversations": [{"from": "human", "value": "<speech>\nPlease answer briefly."},
                           {"from": "gpt", "value": "Sure, here it is."}],
         "units": [3, 1, 999]}


@pytest.mark.parametrize("as_list", [False, True], ids=["jsonl", "json-list"])
def test_both_forms(tmp_path, as_list):
    recs = [flat("audio/a.wav", speech_response_path="/abs/r.wav"), LLAVA]
    path = tmp_path / ("m.json" if as_list else "m.jsonl")
    if as_list:
        path.write_text(json.dumps(recs, indent=1))
    else:
        write_jsonl(path, recs)
    m = load_manifest(path)
    assert len(m) == 2
    a, b = m[0], m[1]
    assert a == {"id": f"{path.name}:0", "speech_path": str(tmp_path / "audio/a.wav"),
                 "response_path": "/abs/r.wav", "instruction_text": "What is the capital?",
                 "response_text": "The capital is Paris.", "units": None,
                 "prompt_instruction": None, "index": 0}
    assert b["id"] == "q7" and b["speech_path"] == str(tmp_path / "audio/q7.wav")
    assert b["response_text"] == "Sure, here it is." and b["instruction_text"] == ""
    assert b["prompt_instruction"] == "Please answer briefly." and b["units"] == [3, 1, 999]
    assert b["response_path"] is None and b["index"] == 1
    assert m.raw(0) == recs[0] and m.raw(1) == recs[1]     # exactly what was read
    assert m.ids == [f"{path.name}:0", "q7"]
    assert [r["index"] for r in m] == [0, 1]
    with pytest.raises(IndexError):
        m[2]


def test_cache_reused_and_invalidated(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [flat("a.wav")])
    m1 = load_manifest(path)
    cached = list((tmp_path / CACHE_DIRNAME).glob("m.jsonl.*.arrow"))
    assert len(cached) == 1
    assert load_manifest(path).fingerprint == m1.fingerprint
    write_jsonl(path, [flat("a.wav"), flat("b.wav", response="Other.")])
    m2 = load_manifest(path)
    assert m2.fingerprint != m1.fingerprint and len(m2) == 2 and m2[1]["response_text"] == "Other."


@pytest.mark.parametrize("line, match", [
    ('{"speech_instruction_path": "a.wav"}', r"line 2.*'text_response'"),
    ('{"text_response": "x"}', r"line 2.*'speech_instruction_path'"),
    ('{"speech_instruction_path": 5, "text_response": "x"}', r"line 2.*'speech_instruction_path'"),
    ('{"speech_instruction_path": "a.wav", "text_response": "x", "units": [1, "2"]}', r"line 2.*'units'"),
    ('{"id": "z", "speech": "a.wav", "conversations": {"from": "human"}}', r"line 2 \(id z\).*'conversations'"),
    ('{"speech_instruction_path": "a.wav", ', r"line 2: not valid JSON"),
    ('[1, 2]', r"line 2: record must be a JSON object"),
])
def test_malformed_records_name_file_line_and_key(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(flat("ok.wav")) + "\n" + line + "\n")
    with pytest.raises(ManifestError, match=match) as e:
        load_manifest(path)
    assert str(path) in str(e.value)


def test_json_list_error_names_index(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([flat("a.wav"), {"speech_instruction_path": "b.wav"}]))
    with pytest.raises(ManifestError, match=r"bad.json\[1\].*'text_response'"):
        load_manifest(path)


def test_duplicate_ids_rejected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [dict(LLAVA), dict(LLAVA)])
    with pytest.raises(ManifestError, match="duplicate id 'q7'"):
        load_manifest(path)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_manifest(tmp_path / "nope.jsonl")


def test_utf8_bom_tolerated(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_text("\ufeff" + json.dumps(flat("a.wav", response="Ünïcode ✓")) + "\n", encoding="utf-8")
    assert load_manifest(path)[0]["response_text"] == "Ünïcode ✓"


def test_empty_and_non_utf8_manifests_are_named(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ManifestError, match=r"empty.jsonl: no records"):
        load_manifest(empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(flat("a.wav", response="caf\u00e9")).encode("latin-1").replace(b"\\u00e9", b"\xe9"))
    with pytest.raises(ManifestError, match=r"latin.jsonl: not UTF-8 text"):
        load_manifest(latin)
