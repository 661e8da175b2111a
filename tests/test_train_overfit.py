"""The tiny model overfits the demo data: after a few hundred stage-1 steps (the demo config from
demo_stage1_config, through the deepspeed launcher), greedy decoding from the final
LLaMA-Omni folder returns each training clip's own response. Different clips have different
answers, so this only passes if the speech reaches the LLM — and the demo set holds clips with
the same number of speech positions (trimmed mode) but different answers, so the length of the
speech alone cannot explain the answers.

The tiny Whisper's input convolutions are scaled so its output is dominated by content, as a
trained Whisper's is (see omni_ds.tiny.models.write_tiny_whisper); without that, training finds
only the length shortcut."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omni_ds.train.demo import demo_stage1_config

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("overfit")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    demo = root / "demo"
    p = subprocess.run([sys.executable, "tools/make_demo_data.py", "--out", str(demo)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    cfg = json.loads((demo / "stage1.json").read_text())        # written by make_demo_data
    assert cfg == json.loads(json.dumps(demo_stage1_config(demo)))
    p = subprocess.run([DEEPSPEED, "--num_gpus", "1", "--master_port", "29731", "launch/stage1.py",
                        "--config", str(demo / "stage1.json"), "--ds", "ds_configs/zero2.json"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return demo, Path(cfg["output_dir"])


def test_greedy_decoding_returns_each_clips_response(trained):
    from omni_ds.data.audio import load_audio, log_mel
    from omni_ds.data.manifest import load_manifest
    from omni_ds.data.prompt import PromptBuilder
    from omni_ds.model.checkpoint import load_omni_folder
    demo, out = trained
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] <= 400
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train/loss"]
    assert summary["final_loss"] < 0.1 * first
    model, tok = load_omni_folder(out / "final")
    model.eval()
    prompt = PromptBuilder(tok).build(None)["input_ids"]
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    records = list(load_manifest(demo / "train.jsonl"))
    assert len({r["response_text"] for r in records}) == len(records)       # distinct answers
    from omni_ds.data.audio import speech_positions
    by_len = {}
    for r in records:
        frames = log_mel(load_audio(r["speech_path"]), mode="trimmed")[1]
        by_len.setdefault(speech_positions(frames), []).append(r["id"])
    assert max(len(v) for v in by_len.values()) >= 2, by_len   # equal lengths, different answers
    wrong = []
    with torch.no_grad():
        for rec in records:
            mel, frames = log_mel(load_audio(rec["speech_path"]), mode=model.omni_config.encoder_mode)
            gen = model.generate(mel[None], torch.tensor([frames]), prompt, max_new_tokens=48,
                                 eos_token_ids=[eot], with_units=False)
            text = tok.decode(gen["token_ids"], skip_special_tokens=True).strip()
            if text != rec["response_text"].strip():
                wrong.append((rec["id"], text, rec["response_text"]))
    assert not wrong, wrong
