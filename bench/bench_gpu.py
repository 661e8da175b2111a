#!/usr/bin/env python
"""GPU figures of omni_ds on one device: training steps of both stages through the real Trainer
and DeepSpeed (ZeRO-2), random weights at real widths, and unit extraction in fp32 vs bf16/fp16.

    python bench/bench_gpu.py [--out DIR] [--budget-s 450]      # a CUDA device
    python bench/bench_gpu.py --tiny [--out DIR]                # CPU, tiny widths, < 1 min

Parts, in this order (each in its own process, time-boxed; a part that fails or runs out of time
is recorded and the rest go on; parts whose model folder failed are skipped):
  - data: 128 synthetic clips of 3-10 s with ~100-token answers and unit targets;
  - units: random full-size mHuBERT Base (768 wide, 12 layers); audio-s/s of the batched
    extractor in fp32, bf16 and fp16, and the share of frames with fp32's unit;
  then for Llama-3.1-8B, then Llama-3.2-1B:
  - prepare:<shape>: a random-weight LLaMA-Omni folder: Whisper-large-v3's encoder (1280 wide, 32
    layers) + projector + the LLM (1B: all 16 layers; 8B: as many of its 32 layers as
    omni_ds.train.memory's estimate fits in 75 % of the device with recompute), bf16;
  - s1:<shape>:padded:<attn>: stage-1 steps (projector + LLM train), encoder padded to 30 s (the
    official recipe), SDPA, and flash-attention 2 when installed;
  - s2:<shape>:padded:sdpa: stage-2 steps (the 425 M CTC decoder trains on the frozen model);
  - s1:<shape>:trimmed:<attn>: stage-1 steps with the encoder trimmed to each clip.
Each step part prints the medians over its measured steps (after warm-up) of the Trainer's own
scalars: tokens/s (LLM positions), samples/s, MFU and HFU (omni_ds/train/flops.py's FLOPs model
against the device's data-sheet bf16 peak), the stage-2 decoder positions/s; and the peak memory
next to omni_ds.train.memory's estimate of the same run. --tiny runs the same parts at tiny
widths on the CPU (MFU against this CPU's measured GEMM peak), all in one process.

Writes DIR/gpu_figures.json (every part's status and figures) and DIR/bench_gpu.log (every
part's own output); prints one line per part and the table at the end.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


# ---- the plan ---------------------------------------------------------------------------------------
def plan(tiny: bool, flash: bool, steps: int, warmup: int, precision: str) -> list[dict]:
    """The parts in run order, each {name, kind, needs, timeout_s, ...its arguments}."""
    from gpu_parts import shapes
    parts = [{"name": "data", "kind": "data", "needs": [], "timeout_s": 60, "clips": 8 if tiny else 128,
              "words": (8, 12) if tiny else (60, 80)}]
    parts.append({"name": "units", "kind": "units", "needs": ["data"], "timeout_s": 90,
                  "full_size": not tiny, "clusters": 50 if tiny else 1000, "clips": 1 if tiny else 128,
                  "passes": 1 if tiny else 3})
    attns = ["sdpa"] + (["flash_attention_2"] if flash else [])
    # the 8 B shape first: its stage-1 MFU is the figure the project targets (issue 12)
    for shape in (["tiny"] if tiny else ["llama-3.1-8b", "llama-3.2-1b"]):
        big = shape == "llama-3.1-8b"
        spec = shapes()[shape]
        parts.append({"name": f"prepare:{shape}", "kind": "prepare", "needs": ["data"], "shape": shape,
                      "timeout_s": 150 if big else 90, "precision": precision})
        runs = [(1, "padded", a) for a in attns] + [(2, "padded", "sdpa")] + [(1, "trimmed", a) for a in attns]
        for stage, encoder, attn in runs:
            parts.append({"name": f"s{stage}:{shape}:{encoder}:{attn}", "kind": "steps", "shape": shape,
                          "needs": [f"prepare:{shape}"], "timeout_s": 120 if big else 75, "stage": stage,
                          "encoder": encoder, "attn": attn, "micro": spec["micro"], "steps": steps,
                          "warmup": warmup, "recompute": spec["recompute"] and stage == 1,
                          "precision": precision})
    return parts


def blocked(part: dict, results: dict) -> str | None:
    """Why `part` cannot run given the results so far (a prerequisite that did not succeed)."""
    for need in part["needs"]:
        status = results.get(need, {}).get("status", "not run")
        if status != "ok":
            return f"needs {need} ({status})"
    return None


# ---- the worker: runs parts in this process ------------------------------------------------------------
def run_part(part: dict, work: Path, device: str, tiny: bool, results: dict) -> dict:
    import gpu_parts as gp
    if part["kind"] == "data":
        return gp.write_data(work, part["clips"], tuple(part["words"]))
    if part["kind"] == "units":
        return gp.units(work, device, part["full_size"], part["clusters"], part["clips"], part["passes"])
    if part["kind"] == "prepare":
        return gp.prepare(work, part["shape"], device, part["precision"])
    peak = None
    if tiny:    # no data sheet for a shared CPU: its measured GEMM throughput in the run's precision
        peak = results.setdefault("_cpu_peak", {}).get(part["precision"])
        if peak is None:
            peak = results["_cpu_peak"][part["precision"]] = gp.gemm_tflops(part["precision"])
    return gp.train_steps(work, part, peak)


def worker(parts: list[dict], work: Path, tiny: bool, results_file: Path) -> None:
    """Run `parts` in order; append each one's {name, status, seconds, figures} to results_file as
    soon as it ends (a later timeout or crash keeps what finished)."""
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict = {}
    for part in parts:
        t0 = time.perf_counter()
        why = blocked(part, results)
        if why:
            row = {"status": "skipped", "reason": why}
        else:
            print(f"[bench_gpu] part {part['name']} starts", flush=True)
            try:
                row = {"status": "ok", **run_part(part, work, device, tiny, results)}
            except Exception as e:          # recorded; the next part runs
                import traceback
                traceback.print_exc()
                row = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
            if device == "cuda":
                torch.cuda.empty_cache()
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results[part["name"]] = row
        with open(results_file, "a") as f:
            f.write(json.dumps({"name": part["name"], **row}, default=str) + "\n")


# ---- the driver -------------------------------------------------------------------------------------------
def run_group(group: list[dict], args, work: Path, log, budget_end: float) -> dict:
    """One worker process for `group`, killed at the group's time box; {name: result}."""
    fd, rfile = tempfile.mkstemp(prefix="bench_gpu_", suffix=".jsonl", dir=work)
    os.close(fd)
    box = min(sum(p["timeout_s"] for p in group), budget_end - time.time())
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(group), "--results", rfile,
           "--work", str(work)] + (["--tiny"] if args.tiny else [])
    env = dict(os.environ)
    if args.tiny:
        # a smoke run, not a CPU benchmark: one thread, which shared CPUs do not stall (with 2
        # OpenMP threads on 2 busy cores a tiny step took 8x longer)
        env.setdefault("OMP_NUM_THREADS", "1")
    t0, status = time.time(), None
    try:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=box, env=env)
        if proc.returncode:
            status = {"status": "failed", "error": f"worker exited {proc.returncode} (see the log)"}
    except subprocess.TimeoutExpired:
        status = {"status": "timeout", "error": f"killed at its time box of {box:.0f} s"}
    got = {}
    for line in Path(rfile).read_text().splitlines():
        row = json.loads(line)
        got[row.pop("name")] = row
    os.unlink(rfile)
    first = True
    for part in group:              # the part that was running when it died, then the rest
        if part["name"] not in got:
            got[part["name"]] = dict(status if first and status else {"status": "not run", "error": "worker ended"},
                                     seconds=round(time.time() - t0, 1) if first else 0.0)
            first = False
    return got


def _gpu_name() -> str | None:
    """The GPU as nvidia-smi names it (name, memory, driver): the driver itself holds no CUDA
    context, so the parts' processes have the whole device."""
    import shutil
    if not shutil.which("nvidia-smi"):
        return None
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=30)
    return q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None


def environment() -> dict:
    import importlib.metadata as md
    import torch
    gpu = (_gpu_name() or "a CUDA device (no nvidia-smi)") if torch.cuda.is_available() else None
    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "host": platform.node(), "python": platform.python_version(),
           "device": gpu or f"CPU ({os.cpu_count()} cores)", "cuda": torch.version.cuda,
           "torch_threads": torch.get_num_threads()}
    for pkg in ("torch", "transformers", "deepspeed", "flash_attn", "omni_ds"):
        try:
            env[pkg] = md.version(pkg if pkg != "flash_attn" else "flash-attn")
        except md.PackageNotFoundError:
            env[pkg] = None
    import omni_ds
    env["omni_ds_path"] = str(Path(omni_ds.__file__).parent)
    return env


def _flash_available() -> bool:
    import importlib.util
    import torch
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny widths on the CPU, all parts in one process")
    ap.add_argument("--out", default=None, help="folder for gpu_figures.json and bench_gpu.log (default: a temp dir)")
    ap.add_argument("--work", default=None, help="folder for data and model folders (default: a temp dir; the "
                                                 "8 B folder is ~12 GB)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="all parts end within this many seconds")
    ap.add_argument("--only", default=None, help="comma-separated part names (prerequisites are added)")
    ap.add_argument("--part-timeout-s", type=float, default=None, help="cap every part's own time box")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per step part (5; --tiny 2)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    ap.add_argument("--precision", default=None, choices=["bf16", "fp16", "fp32"],
                    help="of the training steps (bf16; --tiny fp32: bf16 on this CPU is item 5 of issue 12)")
    ap.add_argument("--log", default=None, help="the parts' own output (default OUT/bench_gpu.log)")
    ap.add_argument("--setup-json", default=None, help="a JSON list (gpu_check.sh's install steps) kept as 'setup'")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker), Path(args.work), args.tiny, Path(args.results))
        return 0
    t_start = time.time()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_gpu_out_"))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_gpu_work_"))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    precision = args.precision or ("fp32" if args.tiny else "bf16")
    parts = plan(args.tiny, _flash_available(), args.steps or (2 if args.tiny else 5), args.warmup, precision)
    parts = select(parts, args.only)
    if args.part_timeout_s:
        for p in parts:
            p["timeout_s"] = min(p["timeout_s"], args.part_timeout_s)
    print(f"[bench_gpu] {env['device']}; torch {env['torch']}, transformers {env['transformers']}, "
          f"deepspeed {env['deepspeed']}, flash-attn {env['flash_attn'] or 'not installed'}; "
          f"{len(parts)} parts, budget {args.budget_s:.0f} s; work {work}", flush=True)
    groups = [parts] if args.tiny else [[p] for p in parts]
    results: dict = {}
    budget_end = t_start + args.budget_s
    log_path = Path(args.log) if args.log else out / "bench_gpu.log"
    with open(log_path, "a") as log:
        for group in groups:
            why = blocked(group[0], results)
            left = budget_end - time.time()
            if why or left < 20:
                for p in group:
                    results[p["name"]] = {"status": "skipped", "reason": why or f"budget: {left:.0f} s left",
                                          "seconds": 0.0}
            else:
                log.write(f"\n===== {', '.join(p['name'] for p in group)} =====\n")
                log.flush()
                results.update(run_group(group, args, work, log, budget_end))
            for p in group:
                print(f"[bench_gpu] {p['name']}: {one_line(results[p['name']])}", flush=True)
    figures = {"environment": env, "tiny": args.tiny, "budget_s": args.budget_s,
               "wall_s": round(time.time() - t_start, 1), "parts": results}
    if args.setup_json:
        figures = {"setup": json.loads(Path(args.setup_json).read_text()), **figures}
    figures["ratios"] = ratios(results)
    (out / "gpu_figures.json").write_text(json.dumps(figures, indent=2, default=str))
    print(table(results))
    for line in figures["ratios"]:
        print(f"[bench_gpu] {line}")
    print(f"[bench_gpu] figures: {out / 'gpu_figures.json'}; log: {log_path}")
    return 0


def select(parts: list[dict], only: str | None) -> list[dict]:
    """The parts named in `only` and what they need, in plan order."""
    if not only:
        return parts
    by_name = {p["name"]: p for p in parts}
    want = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in want if n not in by_name]
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {unknown}; the parts are {list(by_name)}")
    keep, todo = set(), list(want)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += by_name[name]["needs"]
    return [p for p in parts if p["name"] in keep]


# ---- printing ---------------------------------------------------------------------------------------------
def _fmt(x, spec: str = ".1f", scale: float = 1.0) -> str:
    return "-" if x is None else format(x * scale, spec)


def one_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status'].upper()} after {r.get('seconds', 0)} s: {r.get('reason') or r.get('error')}"
    if "step_time_s" in r:
        dec = f", decoder {_fmt(r['decoder_tokens_per_s'], '.0f')} pos/s" if r.get("decoder_tokens_per_s") else ""
        return (f"ok {r['seconds']} s; step {_fmt(r['step_time_s'], '.3f')} s, {_fmt(r['tokens_per_s'], '.0f')} "
                f"tokens/s, {_fmt(r['samples_per_s'], '.2f')} samples/s{dec}, MFU {_fmt(r['mfu'], '.1f', 100)} %, "
                f"peak {_fmt(r['max_memory_gib'], '.2f')} GiB (estimate {_fmt(r['estimate_gib'], '.2f')}), "
                f"{r['llm_layers']} LLM layers, {r['attn']}")
    if "fp32" in r:
        cells = []
        for k in ("fp32", "bf16", "fp16"):
            c = r[k]
            cells.append(f"{k} refused" if "refused" in c else
                         f"{k} {c['audio_s_per_s']:.0f} audio-s/s ({100 * c['agreement_vs_fp32']:.2f} % = fp32)")
        return f"ok {r['seconds']} s; " + ", ".join(cells)
    if "llm_layers" in r:
        return f"ok {r['seconds']} s; {r['llm_layers']} of {r['llm_layers_full']} LLM layers, {r['folder']}"
    return f"ok {r['seconds']} s"


def ratios(results: dict) -> list[str]:
    """The side-by-side comparisons of one run: trimmed vs padded, bf16/fp16 vs fp32 units, and
    the stage-1 MFU target at 8 B width (issue 12: >= 50 % on H100/H200 with flash-attention)."""
    ok = {n: r for n, r in results.items() if r.get("status") == "ok"}
    lines = []
    for name, r in ok.items():
        trimmed = ok.get(name.replace(":padded:", ":trimmed:"))
        if name.startswith("s1:") and ":padded:" in name and trimmed:
            lines.append(f"{name.replace(':padded', '')}: trimmed / padded samples/s = "
                         f"{trimmed['samples_per_s'] / r['samples_per_s']:.2f}x (LLM positions per sample "
                         f"{trimmed['llm_positions_per_sample']:.0f} vs {r['llm_positions_per_sample']:.0f})")
        if name.startswith("s1:llama-3.1-8b:padded:") and r.get("mfu") is not None:
            verdict = "reached" if r["mfu"] >= 0.5 else "NOT reached"
            lines.append(f"{name}: MFU {100 * r['mfu']:.1f} % ({r['llm_layers']} of 32 layers), target >= 50 % "
                         f"{verdict}")
    units = ok.get("units", {})
    for name in ("bf16", "fp16"):
        if "audio_s_per_s" in units.get(name, {}) and "audio_s_per_s" in units.get("fp32", {}):
            lines.append(f"units {name} / fp32 = {units[name]['audio_s_per_s'] / units['fp32']['audio_s_per_s']:.2f}x "
                         f"audio-s/s, {100 * units[name]['agreement_vs_fp32']:.2f} % of frames equal")
    return lines


def table(results: dict) -> str:
    rows = ["| part | status | step s | tokens/s | samples/s | decoder pos/s | MFU % | HFU % | peak GiB | estimate GiB |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if not name.startswith(("s1:", "s2:")):
            continue
        if r["status"] != "ok":
            rows.append(f"| {name} | {r['status']} | | | | | | | | |")
            continue
        rows.append(f"| {name} | ok | {_fmt(r['step_time_s'], '.3f')} | {_fmt(r['tokens_per_s'], '.0f')} | "
                    f"{_fmt(r['samples_per_s'], '.2f')} | {_fmt(r.get('decoder_tokens_per_s'), '.0f')} | "
                    f"{_fmt(r['mfu'], '.1f', 100)} | {_fmt(r['hfu'], '.1f', 100)} | "
                    f"{_fmt(r['max_memory_gib'], '.2f')} | {_fmt(r['estimate_gib'], '.2f')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
