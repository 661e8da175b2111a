"""The manifest record forms, each normalised to one dialogue: an id and a list of turns.

- flat (the original training README): `speech_instruction_path`, `text_response`, ...: one turn;
- LLaVA (the LLaMA-Omni repository): `speech` + `conversations` of alternating human / gpt turns
  with `value`s; one turn, or several (each human turn's audio from its own `speech` key, or the
  record's `speech` list in order);
- InstructS2S-200K as released: `conversation` of alternating human / gpt turns with `text`,
  `speech` (a path per turn) and `unit` (CosyVoice2 tokens "<n><n>..." on gpt turns, or null).

A turn is {speech_path, instruction_text, prompt_instruction, response_text, response_path, units,
dataset_units}: the instruction audio of a human entry and the gpt answer that follows it ("turn k"
in messages is the k-th question and answer; structure problems name the entry, `conversation[i]`).
`units` are km1000 units (tools/extract_units.py writes them as `units` on the record or, for
dialogues, on each gpt turn); `dataset_units` are the record's own unit string parsed (values as
they are, e.g. 0..6560 for CosyVoice2).

A record that cannot be read at all (not an object, a key of the wrong type) raises ManifestError
naming the file, line / index and key. A dialogue whose structure is unusable (turns that do not
alternate, no answer at the end, a turn without audio, a unit string that does not parse) is not
an error here: its `problem` says which turn and why, and the validation pass reports it as a
bad record under the run's policy.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from omni_ds.constants import SPEECH_PLACEHOLDER

FLAT_KEYS = ("speech_instruction_path", "text_instruction", "text_response", "speech_response_path")
TURN_KEYS = ("speech_path", "instruction_text", "prompt_instruction", "response_text", "response_path",
             "units", "dataset_units")
_UNIT_STRING = re.compile(r"^(?:<\d+>)*$")


class ManifestError(ValueError):
    """A record that cannot be read at all; the message names file, line/index and key."""


class _Problem(Exception):
    """A dialogue that reads but cannot be trained on; becomes the record's `problem`."""


def resolve_path(root: Path, value, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: key {key!r} must be a non-empty path string, got {value!r}")
    p = Path(value)
    return str(p if p.is_absolute() else (root / p))


def _text(rec: dict, key: str, where: str, required: bool) -> str:
    if key not in rec:
        if required:
            raise ManifestError(f"{where}: missing key {key!r}")
        return ""
    value = rec[key]
    if not isinstance(value, str):
        raise ManifestError(f"{where}: key {key!r} must be a string, got {type(value).__name__}")
    return value


def _units(holder: dict, where: str, key: str = "units") -> Optional[list[int]]:
    units = holder.get("units")
    if units is None:
        return None
    # Range is checked by validation (a bad record, not a broken file); type is checked here.
    if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
        raise ManifestError(f"{where}: key {key!r} must be a list of integers")
    return units


def parse_unit_string(text) -> list[int]:
    """'<4021><17><6560>' -> [4021, 17, 6560]; anything else raises _Problem."""
    if not isinstance(text, str) or not _UNIT_STRING.match(text.replace(" ", "")):
        raise _Problem(f"unit string does not parse (expected '<n><n>...'): {str(text)[:40]!r}")
    return [int(n) for n in re.findall(r"<(\d+)>", text)]


def _turn(speech_path, response_text, *, instruction_text="", prompt_instruction=None, response_path=None,
          units=None, dataset_units=None) -> dict:
    return {"speech_path": speech_path, "instruction_text": instruction_text,
            "prompt_instruction": prompt_instruction, "response_text": response_text,
            "response_path": response_path, "units": units, "dataset_units": dataset_units}


def normalise(rec, where: str, index: int, root: Path, name: str) -> dict:
    """One raw record (any form) -> {"id", "turns", "problem"}; `root` resolves relative paths."""
    if not isinstance(rec, dict):
        raise ManifestError(f"{where}: record must be a JSON object, got {type(rec).__name__}")
    rid = rec.get("id")
    rid = str(rid) if rid is not None else f"{name}:{index}"
    reader = {"released": _released, "llava": _llava, "flat": _flat}[form_of(rec)]
    turns, problem = [], None
    try:
        reader(rec, f"{where} (id {rid})", root, turns)
    except _Problem as e:
        problem = str(e)
    return {"id": rid, "turns": turns, "problem": problem}


def form_of(rec: dict) -> str:
    """'released', 'llava' or 'flat': the form a raw record is read as (the keys decide)."""
    if "conversation" in rec:
        return "released"
    return "llava" if "conversations" in rec or "speech" in rec else "flat"


def unit_holders(rec: dict) -> list[dict]:
    """The objects of a raw record that hold each turn's km1000 `units`, in turn order: where the
    readers below look for them. The record itself for a flat or single-turn LLaVA record (unless
    its gpt turn already holds `units`, which the reader prefers), each gpt turn object otherwise
    (always for the released form: its reader reads units only there)."""
    form = form_of(rec)
    if form == "flat":
        return [rec]
    answers = rec["conversation" if form == "released" else "conversations"][1::2]
    if form == "llava" and len(answers) == 1 and "units" not in answers[0]:
        return [rec]
    return answers


def put_units(rec: dict, units: list[list[int]]) -> dict:
    """`rec` (raw, as read) with `units[k]` added for turn k where it will be read back; nothing
    else changes (the released form's own `unit` strings stay as they are)."""
    holders = unit_holders(rec)
    if len(holders) != len(units):
        raise ValueError(f"{len(units)} unit lists for a record of {len(holders)} turns")
    for holder, turn_units in zip(holders, units):
        holder["units"] = turn_units
    return rec


def _flat(rec: dict, where: str, root: Path, turns: list) -> None:
    for key in ("speech_instruction_path", "text_response"):
        if key not in rec:
            raise ManifestError(f"{where}: missing key {key!r} (flat form needs {FLAT_KEYS[:3]}; LLaVA "
                                "form needs 'speech' and 'conversations'; released form 'conversation')")
    response_path = rec.get("speech_response_path")
    turns.append(_turn(
        resolve_path(root, rec["speech_instruction_path"], where, "speech_instruction_path"),
        _text(rec, "text_response", where, required=True),
        instruction_text=_text(rec, "text_instruction", where, required=False),
        response_path=resolve_path(root, response_path, where, "speech_response_path") if response_path else None,
        units=_units(rec, where)))


def _pairs(convs, where: str, key: str, text_key: str):
    """(human, gpt) turn pairs of an alternating conversation, human first and gpt last."""
    if not isinstance(convs, list):
        raise ManifestError(f"{where}: key {key!r} must be a list")
    for k, turn in enumerate(convs):
        if not isinstance(turn, dict) or not isinstance(turn.get(text_key, ""), str):
            raise ManifestError(f"{where}: key '{key}[{k}].{text_key}' must be a string in an object")
    roles = [t.get("from") for t in convs]
    for k, role in enumerate(roles):
        want = "human" if k % 2 == 0 else "gpt"
        if role != want:
            raise _Problem(f"{key}[{k}]: expected from={want!r} (entries alternate human, gpt, ...), "
                           f"got {role!r}")
    if not convs or len(convs) % 2:
        raise _Problem(f"the conversation does not end with an answer ({len(convs)} turns; "
                       "it must be human, gpt pairs)")
    return list(zip(convs[0::2], convs[1::2]))


def _llava(rec: dict, where: str, root: Path, turns: list) -> None:
    if "speech" not in rec and not any(isinstance(t, dict) and "speech" in t for t in rec.get("conversations") or []):
        raise ManifestError(f"{where}: missing key 'speech'")
    if "conversations" not in rec:
        raise ManifestError(f"{where}: key 'conversations' must be a list")
    pairs = _pairs(rec["conversations"], where, "conversations", "value")
    speech = rec.get("speech")
    speech_list = speech if isinstance(speech, list) else [speech] * (1 if len(pairs) == 1 else 0)
    for k, (human, gpt) in enumerate(pairs):
        path = human.get("speech") or (speech_list[k] if k < len(speech_list) else None)
        if not path:
            raise _Problem(f"conversations[{2 * k}]: no speech path (a 'speech' key on the entry, or the "
                           "record's 'speech' list with one path per human entry)")
        # The human turn is "<speech>\n{instruction}": keep the instruction for the prompt.
        instruction = human.get("value", "").replace(SPEECH_PLACEHOLDER, "", 1).strip()
        single = len(pairs) == 1
        response_path = gpt.get("speech") or (rec.get("speech_response_path") or rec.get("tgt_speech") if single else None)
        turns.append(_turn(
            resolve_path(root, path, where, "speech"), gpt.get("value", ""),
            instruction_text=_text(rec, "text_instruction", where, required=False) if single else "",
            prompt_instruction=instruction or None,
            response_path=resolve_path(root, response_path, where, "speech_response_path") if response_path else None,
            units=_units(gpt, where) if "units" in gpt else (_units(rec, where) if single else None)))


def _released(rec: dict, where: str, root: Path, turns: list) -> None:
    for k, (human, gpt) in enumerate(_pairs(rec["conversation"], where, "conversation", "text")):
        if not human.get("speech"):
            raise _Problem(f"conversation[{2 * k}]: the human entry has no 'speech' path")
        unit = gpt.get("unit")
        try:
            dataset_units = None if unit is None else parse_unit_string(unit)
        except _Problem as e:
            raise _Problem(f"conversation[{2 * k + 1}].unit: {e}") from None
        turns.append(_turn(
            resolve_path(root, human["speech"], where, f"conversation[{2 * k}].speech"), gpt.get("text", ""),
            instruction_text=human.get("text", ""),
            response_path=resolve_path(root, gpt["speech"], where, f"conversation[{2 * k + 1}].speech")
            if gpt.get("speech") else None,
            units=_units(gpt, where, f"conversation[{2 * k + 1}].units"), dataset_units=dataset_units))
