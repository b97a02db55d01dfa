"""Training speed, memory and quality: TRL's SFTTrainer with its defaults vs domaintune, side by side.

    python bench/matmul_peak.py --threads 2 --write      # once per machine: the fp32 peak for MFU
    python bench/train_throughput.py --threads 2         # the measurement (about 20-30 min on 2 cores)
    python bench/train_throughput.py --quick             # a tiny run that only checks the script works

Both tools train the same model (the embedded SmolLM2-135M-Instruct, fp32 on CPU), the same LoRA
(r=16, alpha=32, dropout 0.05, every attention and MLP linear: the very `LoraConfig` domaintune
builds) for the same number of optimizer steps with the same learning rate, schedule (linear
decay, no warm-up: TRL's default), clipping and seed. Each runs in its own subprocess, one after
the other (never in parallel), so its peak RSS (`os.wait4` of that child) is its own; a third
subprocess then computes the validation loss of both adapters and of the base model the same way:
domaintune's `validation_loss` (mean next-token loss over answer tokens) over the same records.

Data (written to OUT/data): long-tailed chat lengths built from the bundled ICD-10-CM rows. Each
conversation strings together k real rows as k user/assistant turns, k drawn from a Pareto
distribution (alpha 1.1) capped at --max-turns: about half are single rows (~60-85 tokens), the
longest ~1,000 tokens (20 turns). Validation conversations use rows held out from training.
Both tools get the same token ids and the same loss mask (domaintune's encoding: every assistant
turn trained, prompts not): TRL receives them as a pre-tokenized dataset with `labels`, so the
comparison is of the training machinery, not of two tokenizations.

TRL runs with SFTConfig defaults except lr, batch size, steps, seed, `max_length` (--max-len),
`bf16=False`, `report_to=[]` and `save_strategy="no"`: no packing, no padding-free batches (each
batch padded to its longest row) and gradient checkpointing on, as TRL 1.x defaults are.
domaintune runs with its defaults (packing without padding, logits only at answer tokens, no
gradient checkpointing), its packed rows sized so a step holds about as many conversations as
TRL's batch (--batch-size).

Counting, the same for both (a forward pre-hook on the decoder, training mode only):
* tokens = non-padding tokens fed to the model; tokens/s = tokens / time of the optimizer steps
  (data collation included; validation and checkpoints excluded).
* FLOPs = flops_per_token (`train/summary.py`: 4·N + 2·N_trainable, N without the embedding
  lookup) x tokens + attention 12·layers·(heads·head_dim)·L² per conversation of L tokens (PaLM's
  convention, no causal discount; padding and recomputation are not counted). MFU = FLOPs / time /
  the fp32 matmul peak stored by bench/matmul_peak.py (or --peak-gflops).
Outputs: OUT/results.json and OUT/results.md (a markdown table), also printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "embedded"
PARETO_ALPHA = 1.1
# --quick: 3.4-3.9 min measured end to end on the 2 cores shared with other jobs (load average ~5),
# 2.1 min of CPU time; less on a quiet machine.
QUICK = {"steps": 2, "train": 8, "val": 4, "max_turns": 3, "batch_size": 2}


# ---- data ----------------------------------------------------------------------------------------

def conversation(rows: list[dict], turns: int, rng: random.Random) -> dict:
    """One chat of `turns` user/assistant exchanges, each a distinct dataset row."""
    picked = rng.sample(rows, turns)
    return {"messages": [m for row in picked for m in row["messages"]]}


def make_data(out: Path, n_train: int, n_val: int, max_turns: int, seed: int) -> tuple[Path, Path]:
    """Write train.jsonl and val.jsonl of long-tailed conversations; rows never shared between them."""
    from domaintune.api import bundled_dataset

    rows = [json.loads(line) for line in bundled_dataset().read_text(encoding="utf-8").splitlines() if line]
    rng = random.Random(seed)
    rng.shuffle(rows)
    held = max(max_turns * 2, len(rows) // 7)
    pools = {"val": rows[:held], "train": rows[held:]}
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n in (("train", n_train), ("val", n_val)):
        chats = [conversation(pools[split], min(max_turns, int(rng.paretovariate(PARETO_ALPHA))), rng)
                 for _ in range(n)]
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


# ---- shared by the children ----------------------------------------------------------------------

def chat_parts() -> tuple[Any, Any]:
    """The embedded model's tokenizer and chat template."""
    from domaintune.models.load import load_tokenizer
    from domaintune.models.templates import get_template

    tokenizer = load_tokenizer(MODEL)
    return tokenizer, get_template("auto", tokenizer)


def encoded(spec: dict, split: str, tokenizer: Any, template: Any) -> list:
    """A split's examples, encoded by domaintune (token ids plus answer-only labels) for both tools."""
    from domaintune.train.data import encode_split, load_split

    examples, _ = encode_split(load_split(Path(spec["data"]) / f"{split}.jsonl"), tokenizer, template,
                               spec["max_len"])
    return examples


def lora_options(spec: dict):
    from domaintune.config import LoraOptions

    return LoraOptions(r=spec["r"], alpha=spec["alpha"], dropout=spec["dropout"], target_modules="all-linear")


class TokenMeter:
    """Counts what the decoder is fed in training mode: real tokens, padded slots, conversation lengths."""

    def __init__(self, model: Any) -> None:
        self.tokens = self.slots = self.examples = self.sum_sq = 0
        model.get_decoder().register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        lengths = conversation_lengths(ids, kwargs.get("attention_mask"), kwargs.get("position_ids"))
        self.slots += ids.numel()
        self.tokens += sum(lengths)
        self.examples += len(lengths)
        self.sum_sq += sum(n * n for n in lengths)

    def as_dict(self) -> dict[str, int]:
        return {"tokens": self.tokens, "slots": self.slots, "examples": self.examples, "sum_sq_len": self.sum_sq}


def conversation_lengths(ids: Any, mask: Any, positions: Any) -> list[int]:
    """Lengths of the conversations in a batch: padded rows by their mask, packed rows by position resets."""
    if mask is not None:
        return [int(n) for n in mask.sum(dim=1).tolist()]
    if positions is None:
        return [ids.shape[1]] * ids.shape[0]
    lengths = []
    for row in positions:
        starts = (row == 0).nonzero().flatten().tolist() + [row.shape[0]]
        lengths += [b - a for a, b in zip(starts, starts[1:])]
    return lengths


def model_facts(model: Any) -> dict[str, int]:
    """FLOPs per token (`train/summary.py`) and the attention width, for the MFU formula."""
    from domaintune.train.summary import flops_per_token

    config = model.config.get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {"flops_per_token": flops_per_token(model), "layers": config.num_hidden_layers,
            "attn_width": config.num_attention_heads * head_dim}


# ---- the children --------------------------------------------------------------------------------

def child_trl(spec: dict) -> dict:
    """Train with TRL's SFTTrainer, defaults for padding, packing and checkpointing; save the adapter."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from domaintune.methods.lora import lora_config, v5_names_as_given
    from domaintune.models.load import load_model

    torch.set_num_threads(spec["threads"])
    tokenizer, template = chat_parts()
    examples = encoded(spec, "train", tokenizer, template)
    data = Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})
    model = load_model(MODEL)
    meter, clock = TokenMeter(model), step_clock()
    args = SFTConfig(output_dir=str(Path(spec["work"]) / "trl"), max_steps=spec["steps"], seed=spec["seed"],
                     per_device_train_batch_size=spec["batch_size"], learning_rate=spec["lr"],
                     max_length=spec["max_len"], bf16=False, report_to=[], save_strategy="no")
    with v5_names_as_given():
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=lora_config(model, lora_options(spec)), callbacks=[clock])
    trainer.train()
    adapter = Path(spec["work"]) / "trl" / "adapter"
    trainer.model.save_pretrained(str(adapter))
    settings = {k: getattr(args, k) for k in ("packing", "padding_free", "gradient_checkpointing",
                                              "per_device_train_batch_size", "lr_scheduler_type", "warmup_steps")}
    return {"seconds": clock.seconds, "steps": trainer.state.global_step, "adapter": str(adapter),
            "settings": settings, **meter.as_dict(), **model_facts(trainer.model)}


def step_clock() -> Any:
    """A transformers callback timing the start of training to the end of the last optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start

    return StepClock()


def child_domaintune(spec: dict) -> dict:
    """Train with domaintune's `run_training`, defaults except the shared settings; the adapter is saved."""
    from domaintune.config import TrainConfig
    from domaintune.methods import get_method
    from domaintune.models.load import load_model, resolve_model
    from domaintune.train.data import load_split
    from domaintune.train.loop import run_training

    tokenizer, template = chat_parts()
    cfg = TrainConfig(max_steps=spec["steps"], learning_rate=spec["lr"], warmup_ratio=0.0, scheduler="linear",
                      weight_decay=0.0, max_grad_norm=1.0, max_len=spec["max_len"], batch_tokens=spec["batch_tokens"],
                      grad_accum=1, eval_every=spec["steps"], save_every=spec["steps"], keep_checkpoints=1,
                      early_stopping_patience=None, threads=spec["threads"], seed=spec["seed"],
                      method=lora_options(spec))
    model = load_model(MODEL)
    meter = TokenMeter(model)
    run_dir = Path(spec["work"]) / "domaintune"
    # No validation records: validation runs in the eval child, the same way for both tools.
    result = run_training(model, tokenizer, template, get_method("lora"), cfg.method,
                          load_split(Path(spec["data"]) / "train.jsonl"), [], cfg, run_dir,
                          json.dumps(spec), force=True, model_path=resolve_model(MODEL), progress=False)
    summary = result.summary
    return {"seconds": summary["train_seconds"], "steps": result.steps, "adapter": str(result.artifact),
            "settings": {"packing": cfg.packing, "batch_tokens": cfg.batch_tokens,
                         "gradient_checkpointing": cfg.gradient_checkpointing, "scheduler": cfg.scheduler},
            "summary_tokens": summary["train"]["tokens"], **meter.as_dict(), **model_facts(model)}


def child_eval(spec: dict) -> dict:
    """Validation loss of the base model and of each tool's adapter, by domaintune's `validation_loss`."""
    import torch

    from domaintune.methods.lora import load_peft
    from domaintune.models.load import load_model
    from domaintune.train.data import collate_rows, epoch_batches
    from domaintune.train.loop import validation_loss

    torch.set_num_threads(spec["threads"])
    tokenizer, template = chat_parts()
    examples = encoded(spec, "val", tokenizer, template)
    rows = epoch_batches(examples, 0, spec["seed"], True, spec["max_len"], 1)
    batches = collate_rows(examples, rows, True, tokenizer.pad_token_id)
    losses = {"base": validation_loss(load_model(MODEL), batches)}
    for tool, adapter in spec["adapters"].items():
        losses[tool] = validation_loss(load_peft(load_model(MODEL), Path(adapter)), batches)
    return {"val_loss": losses, "val_examples": len(examples), "val_tokens": sum(len(e) for e in examples)}


CHILDREN = {"trl": child_trl, "domaintune": child_domaintune, "eval": child_eval}


# ---- the parent ----------------------------------------------------------------------------------

def run_child(kind: str, spec: dict, work: Path) -> dict:
    """Run one child to completion; its result plus its own peak RSS (from `os.wait4`)."""
    spec_file, result_file, log_file = (work / f"{kind}.{name}" for name in ("spec.json", "result.json", "log"))
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--child", kind, "--spec", str(spec_file), "--result", str(result_file)]
    print(f"[{time.strftime('%H:%M:%S')}] {kind}: running (log {log_file})", flush=True)
    with open(log_file, "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{kind} child failed with exit code {child.returncode}; end of {log_file}:\n{tail}")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    result["peak_rss_bytes"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # Linux: KiB
    return result


def batch_tokens_for(data: Path, spec: dict) -> tuple[int, dict]:
    """Packed-row size giving ~batch_size conversations per row (at least the longest one), and length stats."""
    examples = encoded({**spec, "data": str(data)}, "train", *chat_parts())
    lengths = sorted(len(e) for e in examples)
    mean = sum(lengths) / len(lengths)
    stats = {"examples": len(lengths), "min": lengths[0], "median": lengths[len(lengths) // 2],
             "p90": lengths[int(0.9 * (len(lengths) - 1))], "max": lengths[-1], "mean": round(mean, 1)}
    return max(lengths[-1], round(spec["batch_size"] * mean)), stats


def peak_flops(threads: int, given_gflops: float | None) -> tuple[float | None, str]:
    """The fp32 peak to divide by: --peak-gflops, else the one bench/matmul_peak.py stored."""
    import torch

    from domaintune.models.load import domaintune_home
    from domaintune.train.summary import device_key, peak_flops_for

    return peak_flops_for(device_key(torch.device("cpu"), threads), given_gflops and given_gflops * 1e9,
                          domaintune_home())


def figures(result: dict, peak: float | None) -> dict:
    """tokens/s and MFU of one tool's child result."""
    speed = result["tokens"] / result["seconds"]
    flops = result["flops_per_token"] * result["tokens"] + 12 * result["layers"] * result["attn_width"] * \
        result["sum_sq_len"]
    return {"tokens_per_s": speed, "mfu": flops / result["seconds"] / peak if peak else None,
            "examples_per_step": result["examples"] / result["steps"],
            "padding_share": 1 - result["tokens"] / result["slots"]}


def markdown(report: dict) -> str:
    rows = ["| tool | non-padding tokens/s | peak RSS | final val loss | MFU | tokens | train time | "
            "conversations/step | padding |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for tool, r in report["tools"].items():
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        rows.append(f"| {tool} | {r['tokens_per_s']:.1f} | {r['peak_rss_bytes'] / 2**30:.2f} GiB | "
                    f"{r['val_loss']:.4f} | {mfu} | {r['tokens']:,} | {r['seconds']:.0f} s | "
                    f"{r['examples_per_step']:.1f} | {r['padding_share']:.0%} |")
    lines = ["\n".join(rows), f"\nbase model val loss: {report['base_val_loss']:.4f}"]
    if "ratios" in report:
        ratio = report["ratios"]
        lines.append(f"domaintune / TRL: tokens/s {ratio['tokens_per_s']:.2f}x, peak RSS {ratio['peak_rss']:.2f}x, "
                     f"val loss {ratio['val_loss_rel_diff']:+.2%}")
    lines.append(f"MFU peak: {report['peak_note']}")
    return "\n".join(lines) + "\n"


def run_all(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    make_data(out / "data", args.train, args.val, args.max_turns, args.seed)
    spec = {"data": str(out / "data"), "work": str(work), "steps": args.steps, "threads": args.threads,
            "batch_size": args.batch_size, "lr": args.lr, "max_len": args.max_len, "seed": args.seed,
            "r": 16, "alpha": 32, "dropout": 0.05}
    spec["batch_tokens"], lengths = batch_tokens_for(out / "data", spec)
    peak, note = peak_flops(args.threads, args.peak_gflops)
    load_before = os.getloadavg()
    results = {tool: run_child(tool, spec, work) for tool in args.tools}
    evaluation = run_child("eval", {**spec, "adapters": {t: r["adapter"] for t, r in results.items()}}, work)
    tools = {t: {**r, **figures(r, peak), "val_loss": evaluation["val_loss"][t]} for t, r in results.items()}
    report = {"spec": spec, "train_lengths": lengths, "val": {k: evaluation[k] for k in ("val_examples", "val_tokens")},
              "base_val_loss": evaluation["val_loss"]["base"], "peak_flops": peak, "peak_note": note,
              "load_average": {"before": load_before, "after": os.getloadavg()}, "quick": args.quick, "tools": tools}
    if {"trl", "domaintune"} <= tools.keys():
        ours, theirs = tools["domaintune"], tools["trl"]
        report["ratios"] = {"tokens_per_s": ours["tokens_per_s"] / theirs["tokens_per_s"],
                            "peak_rss": ours["peak_rss_bytes"] / theirs["peak_rss_bytes"],
                            "val_loss_rel_diff": ours["val_loss"] / theirs["val_loss"] - 1}
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
        epilog="examples:\n  python bench/train_throughput.py --threads 2\n  python bench/train_throughput.py --quick")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps for each tool (default 30)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for each child (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="conversations per step (TRL's default, 8)")
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate for both (default 2e-4)")
    parser.add_argument("--train", type=int, default=400, help="training conversations (default 400)")
    parser.add_argument("--val", type=int, default=60, help="validation conversations (default 60)")
    parser.add_argument("--max-turns", type=int, default=20,
                        help="most rows in one conversation (default 20: ~1k tokens)")
    parser.add_argument("--max-len", type=int, default=1024, help="longest example in tokens (default 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tools", nargs="+", default=["trl", "domaintune"], choices=["trl", "domaintune"],
                        help="which tools to run, in this order (default both)")
    parser.add_argument("--peak-gflops", type=float, help="fp32 peak to use for MFU instead of peak_flops.json")
    parser.add_argument("--out", default="out/train_throughput", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check that the script works")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.out = str(Path(args.out).with_name(Path(args.out).name + "_quick"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](json.loads(Path(args.spec).read_text(encoding="utf-8")))
        Path(args.result).write_text(json.dumps(result, indent=2), encoding="utf-8")
        return 0
    report = run_all(args)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = markdown(report)
    (out / "results.md").write_text(table, encoding="utf-8")
    print(table + f"\nwritten: {out / 'results.json'}, {out / 'results.md'}")
    if args.quick:
        print("--quick: a smoke run of the script, not a measurement; do not publish these figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
