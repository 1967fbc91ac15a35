"""Training measured side by side with the peers in ../shared/peers (run: pytest -m benchmark -s).

Each test runs a peer and the matching ``zoo train`` one after the other on this machine
and prints both figures and their ratio (and writes them to ``out/bench-training-*.json``).
Nothing here asserts a speed: the machines are shared and timings drift; the README
reports what an idle machine gave.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA

PEERS = REPO.parent / "shared" / "peers"
TEXT = SHARED_DATA / "tinyshakespeare" / "input.txt"

pytestmark = [pytest.mark.benchmark,
              pytest.mark.skipif(not (PEERS.is_dir() and TEXT.is_file()), reason="needs ../shared/peers and data")]


def timed(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``command``; its result, wall seconds and peak resident memory in GB (its own process tree)."""
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
             "print(f'peak-rss {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
             "sys.exit(done.returncode)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    rss = int(re.search(r"peak-rss (\d+)", done.stderr).group(1)) / 2**20
    return done, seconds, rss


def metrics(run: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("event") == event]


def report(name: str, figures: dict) -> None:
    out = REPO / "out" / f"bench-training-{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def test_nanogpt_cpu_recipe_against_zoo(tmp_path):
    """nanoGPT's CPU recipe (2,000 iterations, batch 12 x 64) against zoo train baby-gpt-cpu on the same batches."""
    peer, peer_wall, _ = timed(["bash", str(PEERS / "nanogpt" / "run.sh"), sys.executable, "2000"])
    line = peer.stdout.strip().splitlines()[-1]
    peer_loss = float(re.search(r"final val loss ([0-9.]+)", line).group(1))
    peer_iter_ms = [float(m) for m in re.findall(r"time ([0-9.]+)ms", peer.stdout)][:-1]  # the last includes evaluation
    run = tmp_path / "zoo"
    zoo = [sys.executable, "-m", "zoo.cli", "train", "baby-gpt-cpu", "--data", str(TEXT), "-o", str(run),
           "--max-steps", "2000", "--eval-every", "250"]
    _, zoo_wall, _ = timed(zoo)
    train = metrics(run, "train")
    window_tokens = [r["tokens"] - (train[i - 1]["tokens"] if i else 0) for i, r in enumerate(train)]  # cumulative
    zoo_rate = train[-1]["tokens"] / sum(n / r["tokens_per_second"] for n, r in zip(window_tokens, train))
    validations = metrics(run, "validation")
    by_peer_wall = [v for v in validations if v["seconds"] <= peer_wall]
    report("nanogpt", {
        "nanogpt": {"wall_s": round(peer_wall, 1), "tokens_per_s_with_evaluation": round(2000 * 768 / peer_wall),
                    "val_loss": peer_loss, "line": line},
        "zoo": {"wall_s": round(zoo_wall, 1), "training_tokens_per_s": round(zoo_rate),
                "tokens_per_s_with_evaluation": round(2000 * 768 / zoo_wall),
                "val_loss_final": validations[-1]["loss"],
                "val_loss_at_nanogpt_wall": by_peer_wall[-1]["loss"] if by_peer_wall else None},
        "ratio_tokens_per_s_with_evaluation": round(peer_wall / zoo_wall, 2),
        "ratio_training_tokens_per_s": round(zoo_rate / (768 / (sum(peer_iter_ms) / len(peer_iter_ms) / 1000)), 2)
        if peer_iter_ms else None,
    })


def test_gpt2_fine_tuning_against_transformers(tmp_path):
    """GPT-2 Small at batch 4 x 256: transformers' GPT2LMHeadModel in a plain loop against zoo train --weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp_path / "gpt2")  # random weights: speed, not quality
    peer, _, peer_rss = timed([sys.executable, str(PEERS / "hf-finetune" / "run.py"), "--steps", "30"])
    peer_rate = float(re.search(r"([0-9,]+) tokens/s", peer.stdout).group(1).replace(",", ""))
    run = tmp_path / "zoo"
    _, _, zoo_rss = timed([sys.executable, "-m", "zoo.cli", "train", "gpt2", "--weights", str(tmp_path / "gpt2"),
                           "--data", str(TEXT), "-o", str(run), "--batch-size", "4", "--seq-len", "256",
                           "--max-steps", "30", "--eval-every", "1000", "--eval-tokens", "256"])
    train = metrics(run, "train")[1:]  # after the first window (warm-up), as the peer skips its first 3 steps
    zoo_rate = sum(r["tokens_per_second"] for r in train) / len(train)
    report("finetune", {"transformers": {"tokens_per_s": peer_rate, "peak_rss_gb": round(peer_rss, 2)},
                        "zoo": {"tokens_per_s": round(zoo_rate, 1), "peak_rss_gb": round(zoo_rss, 2)},
                        "ratio_tokens_per_s": round(zoo_rate / peer_rate, 2),
                        "ratio_peak_rss": round(zoo_rss / peer_rss, 2)})


def test_lora_against_full_fine_tuning(tmp_path):
    """GPT-2 Small on Tiny Shakespeare at batch 4 x 256: LoRA rank 8 (attention and MLP) against
    every weight, the same minutes each: tokens/s, peak memory, the validation loss reached."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp_path / "gpt2")  # random weights: no hub here
    figures = {}
    for name, extra in (("full", []), ("lora", ["--lora", "8"])):
        run = tmp_path / name
        _, seconds, rss = timed([sys.executable, "-m", "zoo.cli", "train", "gpt2", "--weights", str(tmp_path / "gpt2"),
                                 "--data", str(TEXT), "-o", str(run), "--max-minutes", "3", "--eval-every", "1m",
                                 "--eval-tokens", "8192", *extra])
        train = metrics(run, "train")[1:]
        figures[name] = {"tokens_per_s": round(sum(r["tokens_per_second"] for r in train) / len(train), 1),
                         "steps": metrics(run, "train")[-1]["step"], "peak_rss_gb": round(rss, 2),
                         "validation_loss": metrics(run, "validation")[-1]["loss"],
                         "trainable_parameters": metrics(run, "start")[0]["trainable_parameters"]}
    figures["ratio_tokens_per_s"] = round(figures["lora"]["tokens_per_s"] / figures["full"]["tokens_per_s"], 2)
    figures["ratio_peak_rss"] = round(figures["lora"]["peak_rss_gb"] / figures["full"]["peak_rss_gb"], 2)
    subprocess.run([sys.executable, "-m", "zoo.cli", "compare", str(tmp_path / "full"), str(tmp_path / "lora"),
                    "-o", str(REPO / "out" / "lora-against-full.png")], check=True)
    report("lora", figures)


def test_gpt2_xl_lora_memory(tmp_path):
    """gpt2-xl (random weights) LoRA rank 8 on attention and MLP, --seq-len 256, a few steps: peak
    resident memory against the fp32 weight bytes, with a float32 and a bfloat16 base."""
    from zoo.core.spec import load_spec

    spec = load_spec("gpt2-xl")
    weights = tmp_path / "gpt2-xl"
    subprocess.run([sys.executable, "-m", "zoo.cli", "build", "gpt2-xl", "-o", str(weights)], check=True)
    weight_bytes = (weights / "model.safetensors").stat().st_size
    figures = {"model": spec.name, "fp32_weight_gb": round(weight_bytes / 1e9, 2)}
    bf16 = ["--lora-base", "bfloat16", "--amp", "bf16"]
    recompute = ["--checkpoint-activations"]
    for name, extra in (("float32 base", ["--amp", "off"]), ("float32 base, checkpointed", ["--amp", "off", *recompute]),
                        ("bfloat16 base", bf16), ("bfloat16 base, checkpointed", [*bf16, *recompute])):
        run = tmp_path / name.replace(" ", "-").replace(",", "")
        _, seconds, rss = timed([sys.executable, "-m", "zoo.cli", "train", "gpt2-xl", "--weights", str(weights),
                                 "--data", str(TEXT), "-o", str(run), "--lora", "8", "--seq-len", "256",
                                 "--batch-size", "1", "--max-steps", "3", "--eval-every", "1000",
                                 "--eval-tokens", "256", "--val-fraction", "0.001", *extra])
        figures[name] = {"peak_rss_gb": round(rss * 2**30 / 1e9, 2), "ratio_to_fp32_weights": round(rss * 2**30 / weight_bytes, 2),
                         "seconds": round(seconds, 1)}
        shutil.rmtree(run)  # 12 GB each: the base and the merged weights
    report("lora-xl", figures)


def test_fsdp_memory_against_ddp(tmp_path):
    """gpt2-medium (random weights) on 2 processes, --seq-len 256, a few steps: the peak resident
    memory of one process with fsdp against ddp (also with the allocator setting fsdp runs use,
    zoo.training.loop.return_freed_memory), and each plan's estimate beside it."""
    figures = {}
    for name, strategy, allocator in (("ddp", "ddp", []), ("ddp, allocator as fsdp's", "ddp", ["env", "MALLOC_MMAP_THRESHOLD_=131072"]),
                                      ("fsdp", "fsdp", [])):
        run = tmp_path / name.replace(" ", "-").replace(",", "").replace("'", "")
        _, seconds, rss = timed([*allocator, sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                 "-m", "zoo.cli", "train", "gpt2-medium", "--data", str(TEXT), "-o", str(run),
                                 "--seq-len", "256", "--batch-size", "2", "--max-steps", "4", "--eval-every", "1000",
                                 "--eval-tokens", "256", "--val-fraction", "0.001", "--strategy", strategy])
        planned = subprocess.run([sys.executable, "-m", "zoo.cli", "train", "gpt2-medium", "--data", str(TEXT),
                                  "--seq-len", "256", "--batch-size", "2", "--plan", "2"],
                                 capture_output=True, text=True, check=True).stdout
        estimate = float(next(line.split()[6] for line in planned.splitlines() if line.startswith(strategy + " ")))
        train = metrics(run, "train")
        figures[name] = {"peak_rss_gb_a_process": round(rss * 2**30 / 1e9, 2), "plan_gib": estimate,
                         "tokens_per_s": train[-1]["tokens_per_second"], "seconds": round(seconds, 1)}
    fsdp = figures["fsdp"]["peak_rss_gb_a_process"]
    figures["ratio_peak_rss"] = round(fsdp / figures["ddp"]["peak_rss_gb_a_process"], 2)
    figures["ratio_peak_rss_same_allocator"] = round(fsdp / figures["ddp, allocator as fsdp's"]["peak_rss_gb_a_process"], 2)
    report("fsdp", figures)


def test_activation_checkpointing_memory_against_time(tmp_path):
    """GPT-2 Small (random weights), batch 4 x 256, bf16: --checkpoint-activations against not."""
    figures = {}
    for name, extra in (("stored", []), ("checkpointed", ["--checkpoint-activations"])):
        run = tmp_path / name
        _, seconds, rss = timed([sys.executable, "-m", "zoo.cli", "train", "gpt2", "--data", str(TEXT), "-o", str(run),
                                 "--seq-len", "256", "--batch-size", "4", "--max-steps", "24",
                                 "--eval-every", "1000", "--eval-tokens", "256", "--val-fraction", "0.001", *extra])
        train = metrics(run, "train")[1:]
        figures[name] = {"peak_rss_gb": round(rss * 2**30 / 1e9, 2),
                         "tokens_per_s": round(sum(r["tokens_per_second"] for r in train) / len(train), 1)}
    figures["ratio_peak_rss"] = round(figures["checkpointed"]["peak_rss_gb"] / figures["stored"]["peak_rss_gb"], 2)
    figures["ratio_tokens_per_s"] = round(figures["checkpointed"]["tokens_per_s"] / figures["stored"]["tokens_per_s"], 2)
    report("checkpointing", figures)
