"""The validation pass: every record checked, each bad one reported with its id and reason.

Checks: instruction audio exists and decodes, its sample rate and duration are within limits,
the response text is non-empty, units (when present; required in stage 2) lie in 0..999, and,
given a PromptBuilder, the prompt + response fit model_max_length.

The expensive part (decoding audio, tokenising text) is cached next to the manifest as an index
(`.omni_ds_cache/<manifest>.<fingerprint>.*.npz`), keyed by the manifest's content hash and, for
token counts, by the tokenizer and prompt settings; later runs read durations and token lengths
from it and never touch the audio. (Audio files edited in place after validation are not
noticed; the dataset still reports them by id if they fail to load.)

Duration policy: with `max_seconds=None` (default) a clip over 30 s is kept and its first 30 s
are used (Whisper's own behaviour); with `max_seconds` set, longer clips are bad ("too long").
Bad-record policy (`on_bad`): "skip" (default: reported, counted, left out) or "error" (raise
`DataError` listing them).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from omni_ds.constants import SAMPLE_RATE, UNIT_VOCAB_SIZE
from omni_ds.data.audio import speech_positions
from omni_ds.data.manifest import Manifest, cache_dir_for

POLICIES = ("skip", "error")
_INDEX_VERSION = "2"


class DataError(ValueError):
    """Bad records under the "error" policy, or a record that failed to load; names the ids."""

    def __init__(self, message: str, record_id: str | None = None):
        super().__init__(message)
        self.record_id = record_id


@dataclass
class ValidationConfig:
    stage: int = 1                        # 2: units are required
    mel_mode: str = "padded"              # how speech positions are counted for the length check
    max_seconds: float | None = None      # None: clips over 30 s are truncated to 30 s
    min_seconds: float = 0.1
    min_sample_rate: int = 8000
    full_decode: bool = True              # decode every file once (False: header only)
    check_response_audio: bool = False    # also probe speech_response_path (for unit extraction)
    speech_ds_rate: int = 5
    num_workers: int = 0                  # processes for the first (uncached) audio probe
    on_bad: str = "skip"

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage {self.stage!r}: allowed 1 or 2")
        if self.on_bad not in POLICIES:
            raise ValueError(f"on_bad {self.on_bad!r}: allowed {POLICIES}")
        if self.mel_mode not in ("padded", "trimmed"):
            raise ValueError(f"mel_mode {self.mel_mode!r}: allowed 'padded' or 'trimmed'")


@dataclass(frozen=True)
class BadRecord:
    index: int
    id: str
    reason: str


@dataclass
class ValidationReport:
    n_records: int
    bad: list[BadRecord]
    good: np.ndarray                # manifest indices of usable records, ascending
    instr_samples: np.ndarray       # per record, 16 kHz samples of the instruction (-1 unreadable)
    n_prompt: np.ndarray            # per record, prompt ids incl. the placeholder (-1: unknown)
    n_answer: np.ndarray            # per record, answer ids (-1: unknown)
    n_units: np.ndarray             # per record, units (0 when none)
    lengths: np.ndarray             # per record, estimated LLM positions (for batching)
    from_cache: dict = field(default_factory=dict)
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # good, answer cut

    @property
    def ok(self) -> bool:
        return not self.bad

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for b in self.bad:
            kinds[b.reason.split(":")[0]] = kinds.get(b.reason.split(":")[0], 0) + 1
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
        return (f"{self.n_records} records, {len(self.good)} good, {len(self.bad)} bad"
                + (f" ({detail})" if detail else "")
                + (f"; {len(self.truncated)} good record(s) will have their response truncated "
                   "to model_max_length" if len(self.truncated) else ""))


# -- audio probe (cached) --------------------------------------------------------------------
def probe_audio(path: str, full_decode: bool = True) -> tuple[int, int, str]:
    """(samples at 16 kHz, native sample rate, error message or "") for one file."""
    import os

    import soundfile as sf
    if not os.path.isfile(path):
        return -1, 0, f"missing file: {path}"
    try:
        info = sf.info(path)
        if full_decode:
            wave, _ = sf.read(path, dtype="float32", always_2d=True)
            frames = wave.shape[0]
            if not np.isfinite(wave).all():
                return -1, info.samplerate, f"corrupt audio: {path} (non-finite samples)"
        else:
            frames = info.frames
    except Exception as e:      # soundfile raises several types; the message is what matters
        return -1, 0, f"corrupt audio: {path} ({type(e).__name__}: {e})"
    return int(round(frames * SAMPLE_RATE / info.samplerate)), int(info.samplerate), ""


def _probe_many(paths: list, full_decode: bool, workers: int):
    todo = [(i, p) for i, p in enumerate(paths) if p]
    samples = np.full(len(paths), -1, np.int64)
    rates = np.zeros(len(paths), np.int32)
    errors: dict[int, str] = {}
    if workers > 0 and len(todo) > 64:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(probe_audio, [p for _, p in todo], [full_decode] * len(todo),
                                  chunksize=64))
    else:
        results = [probe_audio(p, full_decode) for _, p in todo]
    for (i, _), (n, sr, err) in zip(todo, results):
        samples[i], rates[i] = n, sr
        if err:
            errors[i] = err
    return samples, rates, errors


def _units_stats(manifest: Manifest):
    """Per record: number of units, min and max (vectorised over the Arrow list column)."""
    import pyarrow.compute as pc
    col = manifest.arrow_column("units").combine_chunks()
    n = len(col)
    has = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
    counts = np.asarray(pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False), np.int64)
    lo = np.zeros(n, np.int64)
    hi = np.zeros(n, np.int64)
    values = col.flatten().to_numpy(zero_copy_only=False) if counts.sum() else np.zeros(0, np.int64)
    nonempty = counts > 0
    if nonempty.any():
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
        lo[nonempty] = np.minimum.reduceat(values, starts)
        hi[nonempty] = np.maximum.reduceat(values, starts)
    return has, counts, lo, hi


def _save_npz(path, **arrays):
    # per-process temporary name: every rank of a launch may validate the same manifest at once
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)           # atomic: readers see the old or the new index, never half


def _errors_to_arrays(errors: dict[int, str]):
    idx = np.array(sorted(errors), np.int64)
    return idx, np.array([errors[i] for i in idx], dtype=str) if len(idx) else np.zeros(0, "<U1")


def audio_index(manifest: Manifest, cfg: ValidationConfig) -> tuple[dict, bool]:
    """Durations, sample rates, decode errors and unit statistics; cached per manifest content."""
    variant = f"{int(cfg.full_decode)}{int(cfg.check_response_audio)}"
    path = cache_dir_for(manifest.path) / (
        f"{manifest.path.name}.{manifest.fingerprint}.audio-v{_INDEX_VERSION}-{variant}.npz")
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        d["errors"] = dict(zip(d.pop("err_idx").tolist(), d.pop("err_msg").tolist()))
        d["resp_errors"] = dict(zip(d.pop("rerr_idx").tolist(), d.pop("rerr_msg").tolist()))
        return d, True
    samples, rates, errors = _probe_many(manifest.column("speech_path"), cfg.full_decode, cfg.num_workers)
    if cfg.check_response_audio:
        rsamples, _, rerrors = _probe_many(manifest.column("response_path"), cfg.full_decode, cfg.num_workers)
    else:
        rsamples, rerrors = np.full(len(manifest), -1, np.int64), {}
    has_units, n_units, units_lo, units_hi = _units_stats(manifest)
    d = dict(instr_samples=samples, instr_sr=rates, resp_samples=rsamples, has_units=has_units,
             n_units=n_units, units_lo=units_lo, units_hi=units_hi)
    ei, em = _errors_to_arrays(errors)
    ri, rm = _errors_to_arrays(rerrors)
    _save_npz(path, **d, err_idx=ei, err_msg=em, rerr_idx=ri, rerr_msg=rm)
    d["errors"], d["resp_errors"] = errors, rerrors
    return d, False


# -- token counts (cached per tokenizer + prompt settings) ------------------------------------
def tokenizer_fingerprint(builder) -> str:
    tok = builder.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    h = hashlib.sha256(body.encode())
    h.update(json.dumps([builder.template, builder.system_prompt, builder.instruction,
                         getattr(tok, "chat_template", None) or ""]).encode())
    return h.hexdigest()[:16]


def token_index(manifest: Manifest, builder) -> tuple[dict, bool]:
    """Prompt and answer token counts per record (no length limit applied here)."""
    from omni_ds.data.prompt import PromptError
    path = cache_dir_for(manifest.path) / (
        f"{manifest.path.name}.{manifest.fingerprint}.tokens-v{_INDEX_VERSION}-"
        f"{tokenizer_fingerprint(builder)}.npz")
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        d["errors"] = dict(zip(d.pop("err_idx").tolist(), d.pop("err_msg").tolist()))
        return d, True
    n = len(manifest)
    n_prompt = np.full(n, -1, np.int32)
    n_answer = np.full(n, -1, np.int32)
    errors: dict[int, str] = {}
    responses = manifest.column("response_text")
    instructions = manifest.column("prompt_instruction")
    limit, builder.model_max_length = builder.model_max_length, None   # count, do not truncate
    try:
        todo = [i for i in range(n) if responses[i].strip()]
        if builder.template == "llama3":
            # Fast path, same ids as build(): the answer is tokenised on its own (response +
            # <|eot_id|>), batched in Rust; the prompt depends only on the instruction (memoised).
            for start in range(0, len(todo), 8192):
                chunk = todo[start:start + 8192]
                answers = [builder.render(responses[i], instructions[i])[1] for i in chunk]
                enc = builder.tokenizer(answers, add_special_tokens=False, verbose=False).input_ids
                for i, ids in zip(chunk, enc):
                    n_answer[i] = len(ids)
            for i in todo:
                try:
                    n_prompt[i] = builder.build(None, instructions[i])["n_prompt"]
                except PromptError as e:
                    errors[i] = f"prompt: {e}"
        else:
            for i in todo:
                try:
                    out = builder.build(responses[i], instructions[i])
                except PromptError as e:
                    errors[i] = f"prompt: {e}"
                    continue
                n_prompt[i], n_answer[i] = out["n_prompt"], len(out["input_ids"]) - out["n_prompt"]
    finally:
        builder.model_max_length = limit
    ei, em = _errors_to_arrays(errors)
    _save_npz(path, n_prompt=n_prompt, n_answer=n_answer, err_idx=ei, err_msg=em)
    return dict(n_prompt=n_prompt, n_answer=n_answer, errors=errors), False


# -- the pass --------------------------------------------------------------------------------
def record_speech_positions(instr_samples: np.ndarray, cfg: ValidationConfig) -> np.ndarray:
    """LLM positions of each record's speech under the configured mel mode."""
    if cfg.mel_mode == "padded":
        return np.full(len(instr_samples), speech_positions(3000, cfg.speech_ds_rate), np.int64)
    frames = np.minimum(np.ceil(np.maximum(instr_samples, 0) / 160), 3000).astype(np.int64)
    return speech_positions(frames, cfg.speech_ds_rate)          # elementwise on the array


class _Reasons(dict):
    """record index -> why it is bad; the first failing check is the reported reason."""

    def add(self, i, why: str) -> None:
        self.setdefault(int(i), why)


def validate_manifest(manifest: Manifest, cfg: ValidationConfig | None = None, builder=None) -> ValidationReport:
    """Check every record; returns the report (raises DataError under on_bad="error")."""
    cfg = cfg or ValidationConfig()
    audio, audio_cached = audio_index(manifest, cfg)
    n, reasons = len(manifest), _Reasons()
    _check_audio(audio, cfg, reasons)
    _check_text_and_units(manifest, audio, cfg, reasons)
    positions = record_speech_positions(audio["instr_samples"], cfg)
    n_prompt, n_answer = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    tokens_cached, truncated = None, np.zeros(0, np.int64)
    if builder is not None:
        n_prompt, n_answer, tokens_cached, truncated = _check_tokens(manifest, builder, positions, reasons)
    ids = manifest.ids
    bad_list = [BadRecord(i, ids[i], reasons[i]) for i in sorted(reasons)]
    good = np.setdiff1d(np.arange(n), np.fromiter(reasons, np.int64, len(reasons)))
    lengths = _planning_lengths(manifest, builder, positions, n_prompt, n_answer)
    report = ValidationReport(n, bad_list, good, audio["instr_samples"], n_prompt, n_answer, audio["n_units"],
                              lengths, {"audio": audio_cached, "tokens": tokens_cached},
                              np.setdiff1d(truncated, np.array([b.index for b in bad_list], np.int64)))
    if bad_list and cfg.on_bad == "error":
        shown = "\n".join(f"  {b.id}: {b.reason}" for b in bad_list[:50])
        more = f"\n  ... and {len(bad_list) - 50} more" if len(bad_list) > 50 else ""
        raise DataError(f"{manifest.path}: {len(bad_list)} bad record(s) (policy 'error'):\n{shown}{more}")
    return report


def _check_audio(audio: dict, cfg: ValidationConfig, reasons: _Reasons) -> None:
    for which, errs in (("instruction", audio["errors"]), ("response", audio["resp_errors"])):
        for i, msg in errs.items():
            kind, _, detail = msg.partition(": ")       # "missing file: /p" -> kind first
            reasons.add(i, f"{kind}: {which} audio {detail}")
    samples, rates = audio["instr_samples"], audio["instr_sr"]
    seconds = samples / SAMPLE_RATE
    readable = samples >= 0
    for i in np.flatnonzero(readable & (rates < cfg.min_sample_rate)):
        reasons.add(i, f"sample rate: {rates[i]} Hz below the minimum {cfg.min_sample_rate} Hz")
    for i in np.flatnonzero(readable & (seconds < cfg.min_seconds)):
        reasons.add(i, f"too short: {seconds[i]:.2f} s < min_seconds {cfg.min_seconds}")
    if cfg.max_seconds is not None:
        for i in np.flatnonzero(readable & (seconds > cfg.max_seconds)):
            reasons.add(i, f"too long: {seconds[i]:.2f} s > max_seconds {cfg.max_seconds}")


def _check_text_and_units(manifest: Manifest, audio: dict, cfg: ValidationConfig, reasons: _Reasons) -> None:
    import pyarrow.compute as pc
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(manifest.arrow_column("response_text"))), 0)
    for i in np.flatnonzero(np.asarray(empty.to_numpy(zero_copy_only=False), bool)):
        reasons.add(i, "empty text: text_response is empty")
    has_units, n_units = audio["has_units"], audio["n_units"]
    out_of_range = has_units & (n_units > 0) & ((audio["units_lo"] < 0) | (audio["units_hi"] >= UNIT_VOCAB_SIZE))
    for i in np.flatnonzero(out_of_range):
        reasons.add(i, f"units out of range: values {audio['units_lo'][i]}..{audio['units_hi'][i]} "
                       f"outside 0..{UNIT_VOCAB_SIZE - 1}")
    if cfg.stage == 2:
        for i in np.flatnonzero(~has_units | (n_units == 0)):
            reasons.add(i, "units missing: stage 2 needs 'units' (run tools/extract_units.py)")


def _check_tokens(manifest: Manifest, builder, positions: np.ndarray, reasons: _Reasons):
    """(prompt tokens, answer tokens, cache info, records that fit only with their answer cut)."""
    tokens, tokens_cached = token_index(manifest, builder)
    n_prompt, n_answer = tokens["n_prompt"].astype(np.int64), tokens["n_answer"].astype(np.int64)
    for i, msg in tokens["errors"].items():
        reasons.add(i, msg)
    truncated = np.zeros(0, np.int64)
    if builder.model_max_length is not None:
        room = builder.model_max_length - (n_prompt + positions - 1)
        for i in np.flatnonzero((n_answer > 0) & (room < 1)):
            reasons.add(i, builder.fit_error(int(n_prompt[i]), int(n_answer[i]), int(positions[i])))
        # Fits only with its answer cut short: usable, but counted in the summary.
        truncated = np.flatnonzero((n_answer > 0) & (room >= 1) & (room < n_answer))
    return n_prompt, n_answer, tokens_cached, truncated


def _planning_lengths(manifest: Manifest, builder, positions, n_prompt, n_answer) -> np.ndarray:
    """LLM positions per record (speech + text); without a tokenizer, a words-based guess."""
    if builder is None:
        words = np.array([len(t.split()) for t in manifest.column("response_text")], np.int64)
        return positions + 60 + (words * 4 + 2) // 3
    lengths = positions + np.maximum(n_prompt, 1) - 1 + np.maximum(n_answer, 0)
    if builder.model_max_length is not None:      # truncated answers are planned as cut
        lengths = np.minimum(lengths, builder.model_max_length)
    return lengths
