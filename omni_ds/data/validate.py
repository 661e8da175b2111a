"""The validation pass: every record checked, each bad one reported with its id and reason.

Checks, for every turn of a record (a single-turn record has one; a dialogue one per question
and answer, named "turn k" in the reasons): the dialogue's structure (record_forms' `problem`),
instruction audio exists and decodes, its sample rate and duration are within limits, the answer
text is non-empty, units (when present; required in stage 2) lie in 0..unit_vocab_size-1, and,
given a PromptBuilder, the conversation fits model_max_length: whole trailing turns are dropped
(counted) and a first turn that does not fit has its answer cut (counted), as the dataset does.
In stage 2, given a PromptBuilder, each kept answer must also be feasible for CTC under the
model's upsampling (omni_ds.model.ctc_lengths: infeasible iff it has repeated neighbours and
ctc_upsample_factor x its response states < units + repeats), the response states being its
supervised answer tokens (one LLM state per supervised token, either ctc_hidden_source). Without a
PromptBuilder the state counts are unknown and this check is not made.

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
UNIT_SOURCES = ("km1000", "dataset")
_INDEX_VERSION = "4"          # 4: unit repeats per turn, supervised answer ids


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
    supervise: str = "all"                # dialogue labels: every answer, or the last kept one
    unit_source: str = "km1000"           # "km1000": `units`; "dataset": the record's own unit string
    unit_vocab_size: int = UNIT_VOCAB_SIZE
    ctc_upsample_factor: int = 25         # the model's lambda: output frames per response state

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage {self.stage!r}: allowed 1 or 2")
        if self.on_bad not in POLICIES:
            raise ValueError(f"on_bad {self.on_bad!r}: allowed {POLICIES}")
        if self.mel_mode not in ("padded", "trimmed"):
            raise ValueError(f"mel_mode {self.mel_mode!r}: allowed 'padded' or 'trimmed'")
        if self.ctc_upsample_factor < 1:
            raise ValueError(f"ctc_upsample_factor {self.ctc_upsample_factor!r}: must be >= 1")
        if self.supervise not in ("all", "last") or self.unit_source not in UNIT_SOURCES:
            raise ValueError(f"supervise {self.supervise!r} / unit_source {self.unit_source!r}: allowed "
                             f"'all' or 'last' / {UNIT_SOURCES}")


def turn_units(turn: dict, source: str) -> list[int] | None:
    """The units a turn trains the decoder on: km1000 `units`, or the data set's own (parsed)."""
    return turn["dataset_units"] if source == "dataset" else turn["units"]


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
    dropped_turns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per record
    n_turns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))        # per record
    cut_clips: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))      # good, a clip > 30 s

    @property
    def ok(self) -> bool:
        return not self.bad

    def counts(self) -> dict:
        """What the run trains on and what it cut, for the log and summary.json."""
        good = self.good
        dropped = self.dropped_turns[good] if len(self.dropped_turns) else np.zeros(0, np.int64)
        return {"records": self.n_records, "good": len(good), "bad": len(self.bad),
                "turns": int(self.n_turns[good].sum() - dropped.sum()) if len(self.n_turns) else len(good),
                "answers_cut_to_model_max_length": len(self.truncated),
                "dialogues_losing_turns": int((dropped > 0).sum()), "turns_dropped": int(dropped.sum()),
                "clips_cut_to_30s": len(self.cut_clips)}

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for b in self.bad:
            kinds[b.reason.split(":")[0]] = kinds.get(b.reason.split(":")[0], 0) + 1
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
        dropped = self.dropped_turns[self.good] if len(self.dropped_turns) else np.zeros(0, np.int64)
        return (f"{self.n_records} records, {len(self.good)} good, {len(self.bad)} bad"
                + (f" ({detail})" if detail else "")
                + (f"; {len(self.truncated)} good record(s) will have their response truncated "
                   "to model_max_length" if len(self.truncated) else "")
                + (f"; {int((dropped > 0).sum())} good dialogue(s) lose {int(dropped.sum())} trailing "
                   "turn(s) to model_max_length" if dropped.any() else "")
                + (f"; {len(self.cut_clips)} good record(s) have speech over 30 s, cut to its first 30 s"
                   if len(self.cut_clips) else ""))


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


class Turns:
    """A manifest's turns flattened (record r owns turns offsets[r]:offsets[r + 1]), as Arrow
    columns: per-turn checks run vectorised over all of them at once."""

    def __init__(self, manifest: Manifest):
        col = manifest.arrow_column("turns").combine_chunks()
        self.offsets = np.asarray(col.offsets.to_numpy(zero_copy_only=False), np.int64)
        self.flat = col.flatten()
        self.n = len(self.flat)
        self.record = np.repeat(np.arange(len(manifest)), np.diff(self.offsets))   # record of each turn
        self.number = np.arange(self.n) - self.offsets[self.record] + 1            # 1-based within it
        self.single = np.diff(self.offsets)[self.record] == 1

    def field(self, name: str):
        return self.flat.field(name)

    def column(self, name: str) -> list:
        return self.field(name).to_pylist()

    def where(self, t: int) -> str:
        """'' for a single-turn record, ' (turn k)' for a dialogue's turn, for the reasons."""
        return "" if self.single[t] else f" (turn {self.number[t]})"


def _units_stats(col):
    """Per turn: number of units, min and max (vectorised over the Arrow list column)."""
    import pyarrow.compute as pc
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


def _units_repeats(col) -> np.ndarray:
    """Per turn: adjacent equal units (each needs a CTC blank between them), vectorised."""
    import pyarrow.compute as pc
    counts = np.asarray(pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False), np.int64)
    if not counts.sum():
        return np.zeros(len(col), np.int64)
    values = np.asarray(col.flatten().to_numpy(zero_copy_only=False))
    owner = np.repeat(np.arange(len(col)), counts)             # the turn of each value
    pairs = (values[1:] == values[:-1]) & (owner[1:] == owner[:-1])
    return np.bincount(owner[1:][pairs], minlength=len(col)).astype(np.int64)


def _save_npz(path, **arrays):
    # per-process temporary name: every rank of a launch may validate the same manifest at once
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)           # atomic: readers see the old or the new index, never half


def _errors_to_arrays(errors: dict[int, str]):
    idx = np.array(sorted(errors), np.int64)
    return idx, np.array([errors[i] for i in idx], dtype=str) if len(idx) else np.zeros(0, "<U1")


def _load_index(path, error_keys: dict[str, str]) -> dict:
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    for name, prefix in error_keys.items():
        d[name] = dict(zip(d.pop(f"{prefix}_idx").tolist(), d.pop(f"{prefix}_msg").tolist()))
    return d


def audio_index(manifest: Manifest, cfg: ValidationConfig, turns: Turns) -> tuple[dict, bool]:
    """Per turn: durations, sample rates, decode errors and unit statistics; cached per content."""
    variant = f"{int(cfg.full_decode)}{int(cfg.check_response_audio)}{cfg.unit_source}"
    path = cache_dir_for(manifest.path) / (
        f"{manifest.path.name}.{manifest.fingerprint}.audio-v{_INDEX_VERSION}-{variant}.npz")
    if path.is_file():
        return _load_index(path, {"errors": "err", "resp_errors": "rerr"}), True
    samples, rates, errors = _probe_many(turns.column("speech_path"), cfg.full_decode, cfg.num_workers)
    if cfg.check_response_audio:
        rsamples, _, rerrors = _probe_many(turns.column("response_path"), cfg.full_decode, cfg.num_workers)
    else:
        rsamples, rerrors = np.full(turns.n, -1, np.int64), {}
    has_units, n_units, units_lo, units_hi = _units_stats(
        turns.field("dataset_units" if cfg.unit_source == "dataset" else "units"))
    _, n_ds, _, ds_hi = _units_stats(turns.field("dataset_units"))
    repeats = _units_repeats(turns.field("dataset_units" if cfg.unit_source == "dataset" else "units"))
    d = dict(instr_samples=samples, instr_sr=rates, resp_samples=rsamples, has_units=has_units,
             n_units=n_units, units_lo=units_lo, units_hi=units_hi, dataset_units_hi=np.where(n_ds > 0, ds_hi, -1),
             n_repeats=repeats)
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


def token_index(manifest: Manifest, builder, turns: Turns) -> tuple[dict, bool]:
    """Per turn: prompt ids (placeholder counted once), answer ids and how many of those are
    supervised, no length limit applied; errors per record."""
    path = cache_dir_for(manifest.path) / (
        f"{manifest.path.name}.{manifest.fingerprint}.tokens-v{_INDEX_VERSION}-"
        f"{tokenizer_fingerprint(builder)}.npz")
    if path.is_file():
        return _load_index(path, {"errors": "err"}), True
    counts = {k: np.full(turns.n, -1, np.int32) for k in ("n_prompt", "n_answer", "n_supervised")}
    errors: dict[int, str] = {}
    count = _count_llama3 if builder.template == "llama3" else _count_by_template
    count(builder, turns, counts, errors)
    ei, em = _errors_to_arrays(errors)
    _save_npz(path, **counts, err_idx=ei, err_msg=em)
    return dict(counts, errors=errors), False


def _count_llama3(builder, turns: Turns, counts: dict, errors) -> None:
    """Fast path, same ids as build_dialogue(): each answer is tokenised on its own (response +
    <|eot_id|>, all supervised), batched in Rust; a turn's prompt depends only on its instruction
    and on whether it opens the dialogue (memoised)."""
    from omni_ds.data.prompt import PromptError
    n_prompt, n_answer = counts["n_prompt"], counts["n_answer"]
    responses, instructions = turns.column("response_text"), turns.column("prompt_instruction")
    todo = [t for t in range(turns.n) if responses[t].strip()]
    for start in range(0, len(todo), 8192):
        chunk = todo[start:start + 8192]
        answers = [builder.render(responses[t], instructions[t])[1] for t in chunk]
        for t, ids in zip(chunk, builder.tokenizer(answers, add_special_tokens=False, verbose=False).input_ids):
            n_answer[t] = len(ids)
    counts["n_supervised"][:] = n_answer
    memo: dict = {}
    for t in range(turns.n):
        key = (turns.number[t] == 1, instructions[t])
        if key not in memo:
            opening = [] if key[0] else [(None, "")]       # a later turn's prompt follows an answer
            try:
                memo[key] = len(builder.tokenize_dialogue(opening + [(instructions[t], None)])[-1][0])
            except PromptError as e:
                memo[key] = f"prompt: {e}"
        if isinstance(memo[key], str):
            errors.setdefault(int(turns.record[t]), memo[key])
        else:
            n_prompt[t] = memo[key]


def _count_by_template(builder, turns: Turns, counts: dict, errors) -> None:
    """The tokenizer's own chat template: each dialogue rendered and tokenised whole."""
    from omni_ds.data.prompt import PromptError
    responses, instructions = turns.column("response_text"), turns.column("prompt_instruction")
    for r in range(len(turns.offsets) - 1):
        lo, hi = int(turns.offsets[r]), int(turns.offsets[r + 1])
        if lo == hi or not all(responses[t].strip() for t in range(lo, hi)):
            continue
        try:
            parts = builder.tokenize_dialogue([(instructions[t], responses[t]) for t in range(lo, hi)])
        except PromptError as e:
            errors[r] = f"prompt: {e}"
            continue
        for t, (prompt_ids, answer_ids, n_sup) in zip(range(lo, hi), parts):
            counts["n_prompt"][t], counts["n_answer"][t] = len(prompt_ids), len(answer_ids)
            counts["n_supervised"][t] = n_sup


# -- the pass --------------------------------------------------------------------------------
def record_speech_positions(instr_samples: np.ndarray, cfg: ValidationConfig) -> np.ndarray:
    """LLM positions of each clip's speech under the configured mel mode."""
    if cfg.mel_mode == "padded":
        return np.full(len(instr_samples), speech_positions(3000, cfg.speech_ds_rate), np.int64)
    frames = np.minimum(np.ceil(np.maximum(instr_samples, 0) / 160), 3000).astype(np.int64)
    return speech_positions(frames, cfg.speech_ds_rate)          # elementwise on the array


class _Reasons(dict):
    """record index -> why it is bad; the first failing check is the reported reason."""

    def add(self, i, why: str) -> None:
        self.setdefault(int(i), why)


@dataclass
class _Fit:
    """Per record, how the dialogue fits model_max_length (see module doc)."""
    n_prompt: np.ndarray        # the first turn's prompt ids
    n_answer: np.ndarray        # answer ids of the kept turns
    lengths: np.ndarray         # LLM positions of the kept turns
    dropped: np.ndarray         # trailing turns dropped
    truncated: np.ndarray       # records whose (first) answer is cut
    states: np.ndarray | None = None    # per turn, LLM states the decoder gets (0: turn not kept)


def validate_manifest(manifest: Manifest, cfg: ValidationConfig | None = None, builder=None) -> ValidationReport:
    """Check every record; returns the report (raises DataError under on_bad="error")."""
    cfg = cfg or ValidationConfig()
    turns = Turns(manifest)
    audio, audio_cached = audio_index(manifest, cfg, turns)
    n, reasons = len(manifest), _Reasons()
    for r, problem in enumerate(manifest.column("problem")):
        if problem:
            reasons.add(r, f"bad dialogue: {problem}")
    _check_audio(audio, cfg, turns, reasons)
    _check_text_and_units(audio, cfg, turns, reasons)
    positions = record_speech_positions(audio["instr_samples"], cfg)
    tokens_cached = None
    if builder is None:
        fit = _guess_fit(n, turns, positions)
    else:
        tokens, tokens_cached = token_index(manifest, builder, turns)
        for r, msg in tokens["errors"].items():
            reasons.add(r, msg)
        fit = _fit_dialogues(builder, turns, positions, tokens, reasons)
        if cfg.stage == 2:
            _check_ctc(audio, cfg, turns, fit.states, reasons)
    ids = manifest.ids
    bad_list = [BadRecord(i, ids[i], reasons[i]) for i in sorted(reasons)]
    good = np.setdiff1d(np.arange(n), np.fromiter(reasons, np.int64, len(reasons)))
    first = np.minimum(turns.offsets[:-1], max(turns.n - 1, 0))
    has_turns = np.diff(turns.offsets) > 0
    report = ValidationReport(
        n, bad_list, good, np.where(has_turns, audio["instr_samples"][first], -1) if turns.n else np.full(n, -1),
        fit.n_prompt, fit.n_answer, np.bincount(turns.record, audio["n_units"], n).astype(np.int64), fit.lengths,
        {"audio": audio_cached, "tokens": tokens_cached},
        np.setdiff1d(fit.truncated, np.array([b.index for b in bad_list], np.int64)),
        fit.dropped, np.diff(turns.offsets), _cut_clips(audio, cfg, turns, reasons))
    if bad_list and cfg.on_bad == "error":
        shown = "\n".join(f"  {b.id}: {b.reason}" for b in bad_list[:50])
        more = f"\n  ... and {len(bad_list) - 50} more" if len(bad_list) > 50 else ""
        raise DataError(f"{manifest.path}: {len(bad_list)} bad record(s) (policy 'error'):\n{shown}{more}")
    return report


def _cut_clips(audio: dict, cfg: ValidationConfig, turns: Turns, reasons: _Reasons) -> np.ndarray:
    """Good records with a clip over 30 s: Whisper hears its first 30 s (max_seconds None)."""
    if cfg.max_seconds is not None or not turns.n:
        return np.zeros(0, np.int64)
    long = np.unique(turns.record[audio["instr_samples"] > 30 * SAMPLE_RATE])
    return np.setdiff1d(long, np.fromiter(reasons, np.int64, len(reasons)))


def _check_audio(audio: dict, cfg: ValidationConfig, turns: Turns, reasons: _Reasons) -> None:
    rec = turns.record
    for which, errs in (("instruction", audio["errors"]), ("response", audio["resp_errors"])):
        for t, msg in errs.items():
            kind, _, detail = msg.partition(": ")       # "missing file: /p" -> kind first
            reasons.add(rec[t], f"{kind}: {which} audio{turns.where(t)} {detail}")
    samples, rates = audio["instr_samples"], audio["instr_sr"]
    seconds = samples / SAMPLE_RATE
    readable = samples >= 0
    for t in np.flatnonzero(readable & (rates < cfg.min_sample_rate)):
        reasons.add(rec[t], f"sample rate: {rates[t]} Hz below the minimum {cfg.min_sample_rate} Hz{turns.where(t)}")
    for t in np.flatnonzero(readable & (seconds < cfg.min_seconds)):
        reasons.add(rec[t], f"too short: {seconds[t]:.2f} s < min_seconds {cfg.min_seconds}{turns.where(t)}")
    if cfg.max_seconds is not None:
        for t in np.flatnonzero(readable & (seconds > cfg.max_seconds)):
            reasons.add(rec[t], f"too long: {seconds[t]:.2f} s > max_seconds {cfg.max_seconds}{turns.where(t)}")


def _check_text_and_units(audio: dict, cfg: ValidationConfig, turns: Turns, reasons: _Reasons) -> None:
    import pyarrow.compute as pc
    rec, top = turns.record, cfg.unit_vocab_size - 1
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(turns.field("response_text"))), 0)
    for t in np.flatnonzero(np.asarray(empty.to_numpy(zero_copy_only=False), bool)):
        reasons.add(rec[t], "empty text: text_response is empty" if turns.single[t]
                    else f"empty text: the answer of turn {turns.number[t]} is empty")
    has_units, n_units = audio["has_units"], audio["n_units"]
    out_of_range = has_units & (n_units > 0) & ((audio["units_lo"] < 0) | (audio["units_hi"] > top))
    for t in np.flatnonzero(out_of_range):
        reasons.add(rec[t], f"units out of range: values {audio['units_lo'][t]}..{audio['units_hi'][t]} "
                            f"outside 0..{top}{turns.where(t)}")
    if cfg.stage == 2:
        for t in np.flatnonzero(~has_units | (n_units == 0)):
            reasons.add(rec[t], _missing_units(cfg, turns, t, int(audio["dataset_units_hi"][t])))


def _check_ctc(audio: dict, cfg: ValidationConfig, turns: Turns, states: np.ndarray, reasons: _Reasons) -> None:
    """Kept answers whose units no CTC alignment exists for (module doc): their loss would be
    infinite, i.e. zeroed, and the run would train on nothing for them."""
    from omni_ds.model.ctc_lengths import ctc_infeasible, infeasible_reason
    n_units, repeats, factor = audio["n_units"], audio["n_repeats"], cfg.ctc_upsample_factor
    for t in np.flatnonzero((states > 0) & ctc_infeasible(states, n_units, repeats, factor)):
        where = "" if turns.single[t] else f"turn {turns.number[t]}: "
        reasons.add(turns.record[t], f"ctc infeasible: {where}"
                                     f"{infeasible_reason(int(states[t]), int(n_units[t]), int(repeats[t]), factor)}")


def _missing_units(cfg: ValidationConfig, turns: Turns, t: int, dataset_hi: int) -> str:
    if cfg.unit_source == "km1000" and dataset_hi >= 0:
        return (f"units missing{turns.where(t)}: the record has only its own unit string (values up to "
                f"{dataset_hi}: CosyVoice2 speech tokens, not the km1000 units the decoder predicts); run "
                "tools/extract_units.py on the manifest for km1000 units, or train on these with "
                "data.unit_source \"dataset\" and model.omni.unit_vocab_size 6561")
    return f"units missing{turns.where(t)}: stage 2 needs 'units' (run tools/extract_units.py)"


def _fit_dialogues(builder, turns: Turns, positions: np.ndarray, tokens: dict, reasons: _Reasons) -> _Fit:
    """Whole trailing turns dropped to fit; a first turn that does not fit has its answer cut, or
    is a bad record when not even one answer token would remain (the dataset's rule)."""
    n = len(turns.offsets) - 1
    p_t, a_t = tokens["n_prompt"].astype(np.int64), tokens["n_answer"].astype(np.int64)
    per_turn = p_t + positions - 1 + np.maximum(a_t, 0)
    cum = np.cumsum(per_turn)
    base = np.concatenate([[0], cum])[turns.offsets[:-1]]
    within = cum - base[turns.record] if turns.n else cum          # positions up to each turn
    limit = builder.model_max_length
    fits = within <= limit if limit is not None else np.ones(turns.n, bool)
    kept = np.bincount(turns.record[fits], minlength=n)
    n_turns = np.diff(turns.offsets)
    last = turns.offsets[:-1] + np.maximum(kept, 1) - 1
    first = np.minimum(turns.offsets[:-1], max(turns.n - 1, 0))
    lengths = np.where(n_turns > 0, within[np.minimum(last, max(turns.n - 1, 0))] if turns.n else 0, 0)
    answers = np.bincount(turns.record[fits], np.maximum(a_t, 0)[fits], minlength=n).astype(np.int64)
    supervised = tokens["n_supervised"].astype(np.int64)
    states = np.where(fits, np.maximum(supervised, 0), 0)       # one state per supervised token
    truncated = []
    for r in np.flatnonzero((kept == 0) & (n_turns > 0)):
        t = first[r]
        err = builder.fit_error(int(p_t[t]), int(a_t[t]), int(positions[t]))
        if err:
            reasons.add(r, err)
            continue
        room = builder.answer_room(int(p_t[t]), int(positions[t]))
        lengths[r], answers[r] = limit, min(room, int(a_t[t]))       # the answer is cut short
        states[t] = min(room, int(supervised[t]))                     # as build_dialogue cuts it
        truncated.append(r)
    return _Fit(np.where(n_turns > 0, p_t[first], -1) if turns.n else np.full(n, -1), answers, lengths,
                n_turns - np.maximum(kept, np.minimum(n_turns, 1)), np.array(truncated, np.int64), states)


def _guess_fit(n: int, turns: Turns, positions: np.ndarray) -> _Fit:
    """Without a tokenizer: planning lengths from a words-based guess (no length limit)."""
    words = np.array([len(t.split()) for t in turns.column("response_text")], np.int64)
    per_turn = positions + 60 + (words * 4 + 2) // 3
    return _Fit(np.full(n, -1), np.full(n, -1), np.bincount(turns.record, per_turn, n).astype(np.int64),
                np.zeros(n, np.int64), np.zeros(0, np.int64))
