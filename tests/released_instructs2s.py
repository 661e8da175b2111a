"""A small data set in the layout InstructS2S-200K is released in (../shared/notes/instructs2s_format.md):
one JSON array of dialogues, `conversation` turns with `text`, relative `speech` paths and CosyVoice2
`unit` strings on the answers, wavs under data/multiturn_instruction/en/wav/<dir>/."""
import json
import random
import shutil
from pathlib import Path

from data_fixtures import REAL_CLIPS

MANIFEST = "instruct_en_200k_data_cosy2.json"
ANSWERS = ["Sure, boil the water first.", "Paris is the capital of France.", "Seven plus two is nine.",
           "Birds fly south in winter.", "Snow is cold and white.", "Music makes people happy."]


def dialogue(did: str, n_turns: int, root: Path, rng: random.Random) -> dict:
    conv = []
    for k in range(1, n_turns + 1):
        rel = Path("data/multiturn_instruction/en/wav") / did
        (root / rel).mkdir(parents=True, exist_ok=True)
        user, answer = rng.choice(REAL_CLIPS), rng.choice(REAL_CLIPS)
        shutil.copy(user, root / rel / f"{did}-{k}-user.wav")
        shutil.copy(answer, root / rel / f"{did}-{k}-assistant.wav")
        units = "".join(f"<{rng.randrange(6561)}>" for _ in range(rng.randrange(12, 30)))
        conv += [{"from": "human", "text": f"um, question {k} of {did}?", "speech": str(rel / f"{did}-{k}-user.wav"),
                  "unit": None},
                 {"from": "gpt", "text": f"{rng.choice(ANSWERS)} ({did}, turn {k})",
                  "speech": str(rel / f"{did}-{k}-assistant.wav"), "unit": units}]
    return {"id": did, "conversation": conv}


def write_released_set(root: Path, turns_per_dialogue=(1, 2, 3, 1, 3, 2), seed: int = 0) -> Path:
    """root/instruct_en_200k_data_cosy2.json with one dialogue per entry of `turns_per_dialogue`."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    records = [dialogue(f"instruct_en_{i}", n, root, rng) for i, n in enumerate(turns_per_dialogue)]
    path = root / MANIFEST
    path.write_text(json.dumps(records, indent=1))
    return path
