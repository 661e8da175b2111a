#!/usr/bin/env python
"""Build the small self-contained demo data set and tiny models.

    python tools/make_demo_data.py --out DIR

Writes, deterministically:
  DIR/audio/instructions/*.wav  the 10 real spoken instructions of ../shared/data/spoken_instructions
                                (copied as they are, 22.05 kHz) + 10 generated with eSpeak NG (16 kHz)
  DIR/audio/responses/*.wav     a spoken response for every record (eSpeak NG, 16 kHz)
  DIR/train.jsonl, DIR/val.jsonl  flat manifest form, paths relative to DIR (16 train, 4 val)
  DIR/models/tokenizer, whisper, llm   omni_ds.tiny factories (random weights)
  DIR/models/hubert.pt          tiny mHuBERT-architecture checkpoint in fairseq's layout
  DIR/models/kmeans.bin         joblib scikit-learn k-means fitted on its layer-11 features
  DIR/models/vocoder            tiny random unit HiFi-GAN (fairseq layout): lets the demo's
                                evaluation vocode answers and time first audio (the sound is noise)
  DIR/stage1.json, DIR/stage2.json   ready training configs for these files
                                of the response audio
  DIR/multiturn/instruct_demo.json  the same clips as 2- and 3-turn dialogues in the layout
                                InstructS2S-200K is released in (conversation / text / speech /
                                unit, wavs under data/multiturn_instruction/en/wav/), and
                                DIR/stage1_multiturn.json to train stage 1 on them

Speech synthesis uses the eSpeak NG library bundled in the `espeakng-loader` wheel (PyPI, no
system packages), driven through ctypes; its output is deterministic. The transcripts given to
the real clips are plausible AlpacaEval/vicuna-style questions chosen without listening: they
are demo labels, not verified transcripts.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, not installed

REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "spoken_instructions"

# name -> (instruction transcript, response text); real clips first (not verified transcripts).
REAL = {
    "helpful_base_1": ("How do I make a cup of tea?",
                       "Boil water, pour it over a tea bag, wait three minutes, then enjoy."),
    "helpful_base_2": ("What are some good ways to relax after a long and stressful day at work?",
                       "Take a short walk, listen to calm music, and go to bed early."),
    "helpful_base_3": ("How can I improve my sleep at night?",
                       "Keep a regular bedtime and avoid screens before you sleep."),
    "helpful_base_4": ("What is a good name for a cat?",
                       "Try Luna, Milo, or Pepper."),
    "helpful_base_5": ("How do I start learning to cook?",
                       "Start with simple recipes like pasta, eggs, and soup."),
    "vicuna_1": ("How can I improve my time management skills?",
                 "Make a daily list and do the most important task first."),
    "vicuna_2": ("What are the most effective ways to deal with stress?",
                 "Exercise, sleep well, and talk to people you trust."),
    "vicuna_3": ("What are the main differences between Python and JavaScript?",
                 "Python is popular for data work, JavaScript runs in web browsers."),
    "vicuna_4": ("How can I increase my productivity while working from home?",
                 "Keep set hours and a quiet place to work."),
    "vicuna_5": ("Can you explain the basics of quantum computing?",
                 "Quantum computers use qubits that can hold zero and one at once."),
}
GENERATED = {
    "gen_01": ("What is the capital of France?", "The capital of France is Paris."),
    "gen_02": ("How many legs does a spider have?", "A spider has eight legs."),
    "gen_03": ("Why is the sky blue?", "Air scatters blue sunlight more than red light."),
    "gen_04": ("Tell me a short joke.", "Why did the computer sneeze? It had a virus."),
    "gen_05": ("What should I eat for breakfast?", "Try oatmeal with fruit and a glass of milk."),
    "gen_06": ("How do plants make food?", "Plants use sunlight, water and air to make sugar."),
    "gen_07": ("Name three colors of the rainbow.", "Red, green, and blue."),
    "gen_08": ("How far away is the moon?", "The moon is about four hundred thousand kilometers away."),
    "gen_09": ("What is two plus three?", "Two plus three is five."),
    "gen_10": ("Give me a tip for learning a language.", "Practice a little every day and speak out loud."),
}
VAL = {"helpful_base_4", "vicuna_5", "gen_03", "gen_09"}


class ESpeak:
    """eSpeak NG from the espeakng-loader wheel, synchronous mode, collecting PCM in a callback."""

    def __init__(self, voice: str = "en-us", rate_wpm: int = 165):
        import espeakng_loader
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        synchronous = 2                       # AUDIO_OUTPUT_SYNCHRONOUS: no audio device needed
        self.sr = lib.espeak_Initialize(synchronous, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sr <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sr})")
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG voice {voice!r} not found")
        lib.espeak_SetParameter(1, rate_wpm, 0)           # espeakRATE, absolute
        self._chunks: list[np.ndarray] = []
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0
        self._callback = proto(collect)                   # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def synth(self, text: str) -> np.ndarray:
        """float32 waveform at self.sr."""
        self._chunks = []
        buf = text.encode("utf-8")
        rc = self.lib.espeak_Synth(buf, len(buf) + 1, 0, 0, 0, 0, None, None)
        if rc != 0:
            raise RuntimeError(f"espeak_Synth failed ({rc}) for {text!r}")
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0


def write_speech(tts: ESpeak, text: str, path: Path) -> Path:
    import soundfile as sf
    import soxr
    wave = soxr.resample(tts.synth(text), tts.sr, 16000, quality="HQ")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wave, -1.0, 1.0), 16000, subtype="PCM_16")
    return path


def write_models(out: Path, response_wavs: list[Path]) -> None:
    from omni_ds.tiny.hubert import write_tiny_hubert, write_tiny_kmeans
    from omni_ds.tiny.models import write_tiny_llm, write_tiny_whisper
    from omni_ds.tiny.tokenizer import write_tiny_tokenizer
    models = out / "models"
    write_tiny_tokenizer(models / "tokenizer")
    write_tiny_whisper(models / "whisper")
    write_tiny_llm(models / "llm", models / "tokenizer")
    hubert = write_tiny_hubert(models / "hubert.pt")
    write_tiny_kmeans(hubert, response_wavs, models / "kmeans.bin")
    from omni_ds.tiny.vocoder import write_tiny_vocoder
    write_tiny_vocoder(models / "vocoder")


def build(out: Path, real_dir: Path = REAL_DIR, with_models: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    tts = ESpeak()
    rows = {"train": [], "val": []}
    responses = []
    for name, (instruction, response) in list(REAL.items()) + list(GENERATED.items()):
        rel_in = Path("audio/instructions") / f"{name}.wav"
        if name in REAL:
            src = real_dir / f"{name}.wav"
            if not src.is_file():
                raise FileNotFoundError(f"real clip {src} not found (set --real-dir)")
            (out / rel_in).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out / rel_in)
        else:
            write_speech(tts, instruction, out / rel_in)
        rel_out = Path("audio/responses") / f"{name}.wav"
        responses.append(write_speech(tts, response, out / rel_out))
        rows["val" if name in VAL else "train"].append({
            "id": name, "speech_instruction_path": str(rel_in), "text_instruction": instruction,
            "text_response": response, "speech_response_path": str(rel_out)})
    for split, recs in rows.items():
        with open(out / f"{split}.jsonl", "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
    write_multiturn(out, rows["train"])
    if with_models:
        write_models(out, responses)
        write_configs(out)
    return {k: len(v) for k, v in rows.items()}


def write_multiturn(out: Path, records: list[dict]) -> Path:
    """The training records chained into dialogues of 3, 2, 3, 2, ... turns (the rest: one), released layout."""
    root, dialogues, k = out / "multiturn", [], 0
    while k < len(records):
        did = f"instruct_demo_{len(dialogues)}"
        wav = Path("data/multiturn_instruction/en/wav") / did
        (root / wav).mkdir(parents=True, exist_ok=True)
        conv = []
        for turn, rec in enumerate(records[k:k + (3 if len(dialogues) % 2 == 0 else 2)], 1):
            user, assistant = wav / f"{did}-{turn}-user.wav", wav / f"{did}-{turn}-assistant.wav"
            shutil.copyfile(out / rec["speech_instruction_path"], root / user)
            shutil.copyfile(out / rec["speech_response_path"], root / assistant)
            conv += [{"from": "human", "text": rec["text_instruction"], "speech": str(user), "unit": None},
                     {"from": "gpt", "text": rec["text_response"], "speech": str(assistant), "unit": None}]
        k += len(conv) // 2
        dialogues.append({"id": did, "conversation": conv})
    path = root / "instruct_demo.json"
    path.write_text(json.dumps(dialogues, indent=1) + "\n")
    return path


def write_configs(out: Path) -> None:
    """Ready training configs pointing at these files: DIR/stage1.json, DIR/stage2.json,
    DIR/stage1_multiturn.json (the dialogues), DIR/stage1_lora.json (LoRA on the LLM)."""
    from omni_ds.train.demo import demo_stage1_config, demo_stage2_config
    (out / "stage1.json").write_text(json.dumps(demo_stage1_config(out), indent=1) + "\n")
    (out / "stage2.json").write_text(json.dumps(demo_stage2_config(out), indent=1) + "\n")
    multiturn = demo_stage1_config(out, **{"data.train_manifest": str(out.resolve() / "multiturn" / "instruct_demo.json"),
                                           "data.val_manifest": None, "output_dir": str(out.resolve() / "runs" / "stage1_multiturn")})
    multiturn["_comment"] = ("stage 1 on the demo's dialogues (released InstructS2S layout): "
                             "deepspeed --num_gpus 2 launch/stage1.py --config DIR/stage1_multiturn.json --ds ds_configs/zero2.json")
    (out / "stage1_multiturn.json").write_text(json.dumps(multiturn, indent=1) + "\n")
    lora = demo_stage1_config(out, **{"lora.rank": 8, "output_dir": str(out.resolve() / "runs" / "stage1_lora")})
    lora["_comment"] = ("stage 1 with LoRA (r=8) on the tiny LLM, the projector trained fully; final/ is the merged "
                        "model, lora_adapter/ the peft adapter: "
                        "deepspeed --num_gpus 2 launch/stage1.py --config DIR/stage1_lora.json --ds ds_configs/zero2.json")
    (out / "stage1_lora.json").write_text(json.dumps(lora, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--real-dir", type=Path, default=REAL_DIR, help="folder of the real clips")
    p.add_argument("--no-models", action="store_true", help="write the data only")
    args = p.parse_args(argv)
    counts = build(args.out, args.real_dir, with_models=not args.no_models)
    print(f"wrote {args.out}: train {counts['train']} records, val {counts['val']} records"
          + ("" if args.no_models else ", models under models/"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
