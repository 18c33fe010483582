"""Train the GLM-style decoder of model.py on Python's language reference (byte tokens), a few minutes on a CPU.

    python examples/03_glm_tiny/train.py                 # 4 minutes, writes trained.npz and trained.json
    python examples/03_glm_tiny/train.py --minutes 1 --out /tmp/glm

The model is model.py's ``GlmTiny`` at a larger toy size (TRAINED_CONFIG: 4 layers, hidden 96, 4 query / 2
key-value heads of 24, partial interleaved rotary, SwiGLU, untied LM head; ~0.38 M parameters); the text is
``corpus.py``'s training topics. Weights are stored as float16 (``trained.npz``, ~0.75 MB); ``trained.py``
loads them back as float32. The run is seeded; its wall-clock budget makes the step count depend on the
machine, so ``trained.json`` records the steps, the time and the held-out perplexity.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
from trained import TRAINED_CONFIG, glm_module  # noqa: E402


def heldout_perplexity(model, seq_len: int = 128) -> float:
    rows = torch.from_numpy(corpus.heldout_rows(seq_len))
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            batch = rows[start:start + 32]
            logits = model(batch)[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                     reduction="sum")
            total += float(loss)
            count += batch[:, 1:].numel()
    model.train()
    return math.exp(total / count)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget (default 4)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a busy 2-core machine 2 threads ran 15x slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE, help="folder for trained.npz and trained.json")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    stream = torch.from_numpy(corpus.train_stream().astype(np.int64))
    m = glm_module()
    model = m.GlmTiny(m.GlmTinyConfig(**TRAINED_CONFIG))
    m.init_weights(model, seed=args.seed, std=0.02)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params:,} parameters; {len(stream):,} training bytes; held-out ppl at init "
          f"{heldout_perplexity(model, args.seq_len):.2f}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    budget = args.minutes * 60
    start = time.perf_counter()
    step, warmup = 0, 100
    model.train()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            break
        frac = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        offsets = torch.from_numpy(rng.integers(0, len(stream) - args.seq_len - 1, size=args.batch))
        index = offsets[:, None] + torch.arange(args.seq_len + 1)[None, :]
        batch = stream[index]
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step:5d}  {elapsed:6.0f} s  lr {lr:.2e}  train loss {loss.item():.3f} "
                  f"(ppl {math.exp(loss.item()):.2f})", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    ppl = heldout_perplexity(model, args.seq_len)
    print(f"trained {step} steps in {seconds:.0f} s; held-out perplexity {ppl:.3f} per byte "
          f"({math.log2(ppl):.3f} bits/byte)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "trained.npz", **{k: v.detach().numpy().astype(np.float16)
                                                     for k, v in model.state_dict().items()})
    # the perplexity of the stored (float16-rounded) weights, which is what trained.py loads
    from trained import load_weights

    reloaded = load_weights(args.out / "trained.npz")
    stored_ppl = heldout_perplexity(reloaded, args.seq_len)
    info = {"config": TRAINED_CONFIG, "parameters": params, "steps": step, "seconds": round(seconds, 1),
            "seq_len": args.seq_len, "batch": args.batch, "lr": args.lr, "seed": args.seed, "threads": args.threads,
            "train_bytes": int(len(stream)), "heldout_bytes": int(len(corpus.heldout_stream())),
            "heldout_perplexity": round(stored_ppl, 4), "heldout_perplexity_float32": round(ppl, 4),
            "python": platform.python_version(), "torch": torch.__version__}
    (args.out / "trained.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {args.out / 'trained.npz'} (held-out perplexity of the float16 weights: {stored_ppl:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
