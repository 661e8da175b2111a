"""The command lines users are shown: README code blocks and inline code, and the `_comment`
lines of launch/configs/*.json. test_documented_commands.py runs each one on the demo data.

Some cannot run here, and the README says so on the command's own line (or its code block):
  "needs real weights"     pretrained models or downloads;
  "needs a SLURM cluster"  sbatch;
  "needs a CUDA GPU"       bench/gpu_check.sh's measurement;
  "needs PyPI"             downloads into the checkout (bench/fetch_gpu_wheels.sh);
benchmarks (`python bench/...`) print measurements and are not tests.
"""
import json
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTS = re.compile(r"^(python|deepspeed|bash|torchrun|sbatch)\s")
EXEMPT_MARKS = ("needs real weights", "needs a SLURM cluster", "needs a CUDA GPU", "needs PyPI")


def _readme_lines(text: str):
    """(command, the line's comment) from code blocks (continuations joined) and inline code."""
    in_block, pending = False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            for m in re.finditer(r"`([^`]+)`", line):
                if STARTS.match(m.group(1)):
                    yield m.group(1), line
            continue
        s = (pending + " " + line.strip()).strip() if pending else line.strip()
        pending = ""
        if s.endswith("\\"):
            pending = s[:-1].strip()
        elif STARTS.match(s):
            cmd, _, comment = s.partition(" #")
            yield cmd.strip(), comment


def _config_comment_lines():
    for f in sorted((REPO / "launch" / "configs").glob("*.json")):
        comment = json.loads(f.read_text()).get("_comment", [])
        for line in comment if isinstance(comment, list) else [comment]:
            for part in re.split(r"Check first: |\(|\)", line):
                if STARTS.match(part.strip()):
                    yield part.strip(), f"{f.name} _comment"


def documented_commands() -> dict[str, str]:
    """{command: where/why}: every distinct command line, with its exemption mark if it has one."""
    found: dict[str, str] = {}
    for cmd, context in list(_readme_lines((REPO / "README.md").read_text())) + list(_config_comment_lines()):
        cmd = " ".join(cmd.split())
        mark = next((m for m in EXEMPT_MARKS if m in context), None)
        if cmd.startswith("python bench/"):
            mark = "benchmark"
        found.setdefault(cmd, mark or "")
    return found


def split(cmd: str) -> list[str]:
    """Tokens of a documented command; optional `[...]` parts dropped (the plain form is run)."""
    return shlex.split(re.sub(r"\[[^\]]*\]", " ", cmd))
