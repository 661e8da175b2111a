"""Every command line of the README and of launch/configs/*.json comments runs, on the demo data.

Each command is run as written, with only what the demo cannot share substituted: file names
(train.jsonl, DIR, question.wav, the mHuBERT / k-means names) by the demo's files, `--num_gpus
N` / `--nproc_per_node N` by 2, step counts by 2; the paper recipes (launch/configs/*.json) keep
every setting but their paths, a global batch the demo's 16 samples can fill, and stage 2's
decoder width (the paper's 425 M-parameter decoder on a 64-wide tiny LLM would only cost RAM).
The training commands run through launch/stage{N}.py's own CLI in one 2-rank launch.
Commands that another test runs whole name it; those that cannot run here carry their reason
in the README (documented_commands.EXEMPT_MARKS) or are benchmarks.
"""
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from documented_commands import REPO, documented_commands, split
from launcher import DEEPSPEED, free_port, launcher_env

COMMANDS = documented_commands()
TIMEOUT = 600
DEMO_BATCH = ["--set", "global_batch_size=8", "--set", "per_device_train_batch_size=2"]
DEMO_SMALL = DEMO_BATCH + ["--set", "eval_max_samples=2", "--set", "report_to=[]", "--set", "progress_bar=false"]
# run whole by another test (file, test function)
ELSEWHERE = {
    "bash launch/quickstart.sh": ("tests/test_quickstart.py", "test_quickstart_short_variant"),
    "bash tests/run.sh": (".ci/run", "bash tests/run.sh"),
    "deepspeed --hostfile launch/hostfile.example launch/stage1.py": ("tests/test_train_dist.py", "two_node"),
    # it needs Piper, which test_synthesize_data.py uses when installed (and skips, saying so, when not)
    "python tools/synthesize_data.py": ("tests/test_synthesize_data.py", "test_layout_filter_counts_and_validation"),
    # needs a 2-rank checkpoint to convert: the world-size test makes one and converts it
    "python tools/convert_checkpoint.py": ("tests/test_world_size_resume.py", "tools/convert_checkpoint.py"),
    "bash bench/gpu_check.sh OUT --tiny": ("tests/test_bench_gpu.py", "test_gpu_check_tiny_end_to_end"),
}
# commands whose documented outcome is not exit 0: (exit code, what the output must say)
EXPECT = {"python tools/estimate_memory.py --gpus 4 --gpu L40 --zero 2": (1, "DOES NOT FIT"),
          "python tools/estimate_memory.py --llm llama-3.1-8b --gpus 1 --gpu-memory-gib 24 --zero 2": (1, "DOES NOT FIT")}


def elsewhere(cmd: str):
    return next((v for k, v in ELSEWHERE.items() if cmd.startswith(k)), None)


class Demo:
    """Where the substituted names point."""

    def __init__(self, root: Path):
        self.root, self.demo = root, root / "demo"
        self.clip = sorted((REPO.parent / "shared" / "data" / "spoken_instructions").glob("*.wav"))[0]

    def out(self, cmd: str) -> Path:
        return self.root / "runs" / (re.sub(r"[^A-Za-z0-9]+", "_", cmd)[:60] + hashlib.sha1(cmd.encode()).hexdigest()[:8])

    def paper_overrides(self, stage: int) -> list[str]:
        d = self.demo
        sets = {1: [f"whisper_path={d}/models/whisper", f"llm_path={d}/models/llm", f"train_manifest={d}/train.jsonl",
                    f"val_manifest={d}/val.jsonl"],
                2: [f"init_from={self.out(PAPER_STAGE1)}/final", f"train_manifest={d}/train_units.jsonl",
                    f"val_manifest={d}/val_units.jsonl", "omni.ctc_decoder_config=(2,64,4,128)",
                    f"cache_dir={self.root}/hidden_cache"]}[stage]
        return [a for s in sets for a in ("--set", s)]


PAPER_STAGE1 = "deepspeed --num_gpus 4 launch/stage1.py --config launch/configs/stage1.json --ds ds_configs/zero3.json"


def substitute(cmd: str, env: Demo) -> list[str]:
    """The command's argv on the demo data (module docstring)."""
    d, args, out = env.demo, split(cmd), []
    names = {"train.jsonl": f"{d}/train.jsonl", "train_units.jsonl": f"{d}/train_units.jsonl",
             "question.wav": str(env.clip), "mhubert_base_vp_en_es_fr_it3.pt": f"{d}/models/hubert.pt",
             "mhubert_base_vp_en_es_fr_it3_L11_km1000.bin": f"{d}/models/kmeans.bin",
             "runs/stage1": str(env.out(PAPER_STAGE1)), "max_steps=50": "max_steps=2",
             "units.txt": f"{env.root}/units.txt", "OUT": f"{env.root}/evaluation"}
    after = {"--hubert": f"{d}/models/hubert.pt", "--kmeans": f"{d}/models/kmeans.bin", "--num_gpus": "2",
             "--nproc_per_node": "2", "--model": f"{env.out(PAPER_STAGE2)}/final"}
    rest = {"extract_units": ["--manifest", f"{d}/train.jsonl", "--hubert", f"{d}/models/hubert.pt", "--kmeans",
                              f"{d}/models/kmeans.bin", "--out", f"{env.root}/torchrun_units.jsonl"],
            "launch/stage1.py": ["--config", f"{d}/stage1.json", "--ds", "ds_configs/zero2.json"]}
    for i, a in enumerate(args):
        prev = args[i - 1] if i else ""
        if prev in after:
            out.append(after[prev])
        elif a == "...":
            out += next(v for k, v in rest.items() if k in cmd)
        elif prev == "--out" and a == "DIR":
            out.append(f"{env.root}/exported")
        elif a.startswith("demo/"):
            out.append(f"{d}/{a[len('demo/'):]}".rstrip("/"))
        else:
            out.append(names.get(a, a))
    return out


def is_training(cmd: str) -> bool:
    return re.search(r"launch/stage[12]\.py", cmd) is not None and not cmd.startswith("bash ") \
        and "--hostfile" not in cmd


def training_argv(cmd: str, env: Demo) -> tuple[int, list[str]]:
    """(stage, argv after launch/stageN.py) of a training command, paper recipes on demo paths."""
    argv = substitute(cmd, env)
    stage = int(re.search(r"launch/stage([12])\.py", cmd).group(1))
    argv = argv[[i for i, a in enumerate(argv) if a.endswith(f"launch/stage{stage}.py")][0] + 1:]
    if "--config" not in argv or "launch/configs/" in " ".join(argv):
        argv += env.paper_overrides(stage)
    if "--dry-run" in argv:
        argv += DEMO_BATCH
    else:
        argv += DEMO_SMALL + ["--set", f"output_dir={env.out(cmd)}"]
        argv += [] if "max_steps=2" in argv else ["--set", "max_steps=2"]
    return stage, argv


PAPER_STAGE2 = "deepspeed --num_gpus 4 launch/stage2.py --config launch/configs/stage2.json --ds ds_configs/zero2.json"


def _run(argv: list[str], cwd=REPO) -> subprocess.CompletedProcess:
    exe = {"python": sys.executable, "torchrun": str(Path(sys.executable).with_name("torchrun")),
           "deepspeed": DEEPSPEED}.get(argv[0], argv[0])
    return subprocess.run([exe, *argv[1:]], cwd=cwd, env=launcher_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _launch_training(cmds: list[str], env: Demo) -> dict:
    cases = []
    for cmd in sorted(cmds, key=lambda c: ("stage2" in c, c)):       # stage 2 starts from stage 1's folder
        stage, argv = training_argv(cmd, env)
        cases.append({"name": cmd, "stage": stage, "argv": argv, "output_dir": str(env.out(cmd))})
    (env.root / "cases.json").write_text(json.dumps(cases))
    results = env.root / "results.json"
    p = subprocess.run([DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "tests/recipe_matrix_driver.py",
                        "--cases", str(env.root / "cases.json"), "--results", str(results)],
                       cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0 and results.is_file(), f"training launch failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return {r["name"]: r for r in json.loads(results.read_text())}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    env = Demo(tmp_path_factory.mktemp("documented"))
    runnable = [c for c, mark in COMMANDS.items() if not mark and not elsewhere(c)]
    first = [c for c in runnable if "make_demo_data" in c] + [c for c in runnable if "extract_units" in c]
    results = {c: _run(substitute(c, env)) for c in first}
    assert (env.demo / "train_units.jsonl").is_file(), results
    val = _run(["python", "tools/extract_units.py", "--manifest", f"{env.demo}/val.jsonl", "--hubert",
                f"{env.demo}/models/hubert.pt", "--kmeans", f"{env.demo}/models/kmeans.bin", "--out",
                f"{env.demo}/val_units.jsonl"])
    assert val.returncode == 0, val.stderr[-2000:]
    trained = _launch_training([c for c in runnable if is_training(c) and "--dry-run" not in c], env)
    for c in runnable:
        if c in results or c in trained:
            continue
        results[c] = _run(["python", f"launch/stage{training_argv(c, env)[0]}.py", *training_argv(c, env)[1]]
                          if is_training(c) else substitute(c, env))
    return {"env": env, "results": results, "trained": trained}


def test_every_documented_command_is_accounted_for():
    assert PAPER_STAGE1 in COMMANDS and PAPER_STAGE2 in COMMANDS
    assert "bash launch/quickstart_real_small.sh" in " ".join(c for c, m in COMMANDS.items() if m)
    for cmd in COMMANDS:
        where = elsewhere(cmd)
        if where:
            assert where[1] in (REPO / where[0]).read_text(), f"{cmd}: {where} does not run it"


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_documented_command_runs_on_the_demo_data(ran, cmd):
    if COMMANDS[cmd]:
        pytest.skip(f"{COMMANDS[cmd]} (marked in the README)")
    if elsewhere(cmd):
        pytest.skip(f"run whole by {elsewhere(cmd)[0]}")
    if cmd in ran["trained"]:
        r = ran["trained"][cmd]
        assert "traceback" not in r and r["rc"] == 0, r.get("traceback")
        assert r["summary"]["status"] == "completed" and r["summary"]["final_dir"], r["summary"]
        return
    p = ran["results"][cmd]
    rc, must_say = EXPECT.get(cmd, (0, ""))
    assert p.returncode == rc and must_say in p.stdout + p.stderr, \
        f"{substitute(cmd, ran['env'])} -> {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
