#!/usr/bin/env python
"""Pretraining-step throughput of hf_mim's methods side by side, on encoders of the same size.

    python benchmarks/benchmark_methods.py --hidden_size 64 --layers 2 --heads 4 --patch_size 7 --image_size 56 \
        --batch_size 64 --steps 20 --num_threads 1
    python benchmarks/benchmark_methods.py --hidden_size 1024 --layers 24 --heads 16 --patch_size 14 \
        --image_size 224 --batch_size 64 --device cuda --dtype bfloat16

Each step: the method's full forward (teacher + student + heads, its own masks), backward, AdamW step, EMA update.
CAPI uses its predictor of `--predictor_layers` blocks at the encoder width; I-JEPA its narrow predictor
(`--ijepa_predictor_size` wide, `--predictor_layers` blocks). Prints img/s, ms/step (mean and median) and the
ratio to the first method. Timings on a shared or busy CPU are noisy: use --num_threads and trust the median.
"""

import argparse
import statistics
import time

import torch

from hf_mim import CapiConfig, CapiForPreTraining, IJepaConfig, IJepaForPreTraining


def build(method: str, args):
    common = dict(image_size=args.image_size, patch_size=args.patch_size, hidden_size=args.hidden_size,
                  num_hidden_layers=args.layers, num_attention_heads=args.heads, intermediate_size=4 * args.hidden_size)  # fmt: skip
    if method == "capi":
        config = CapiConfig(**common, decoder_hidden_size=args.hidden_size, decoder_num_hidden_layers=args.predictor_layers,
                            decoder_num_attention_heads=args.heads, decoder_intermediate_size=4 * args.hidden_size,
                            num_register_tokens=4, num_prototypes=args.num_prototypes, drop_path_rate=0.0,
                            prediction_subsampling=0.25)  # fmt: skip
        return CapiForPreTraining(config)
    config = IJepaConfig(**common, predictor_hidden_size=args.ijepa_predictor_size,
                         predictor_num_hidden_layers=args.predictor_layers, predictor_num_attention_heads=args.heads,
                         predictor_intermediate_size=4 * args.ijepa_predictor_size, min_keep=1)  # fmt: skip
    return IJepaForPreTraining(config)


def time_method(method: str, args, device, autocast_dtype) -> list[float]:
    torch.manual_seed(0)
    model = build(method, args).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    times = []
    for step in range(args.warmup_steps + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(images).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.996)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup_steps:
            times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="capi,ijepa")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--predictor_layers", type=int, default=2)
    parser.add_argument("--ijepa_predictor_size", type=int, default=32)
    parser.add_argument("--num_prototypes", type=int, default=64)
    parser.add_argument("--patch_size", type=int, default=7)
    parser.add_argument("--image_size", type=int, default=56)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--num_threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device)
    autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
    rows = {m: time_method(m, args, device, autocast_dtype) for m in args.methods.split(",")}
    first = next(iter(rows.values()))
    print(f"{'method':<8} {'img/s':>9} {'ms/step':>9} {'median':>9} {'ratio img/s':>12}")
    for method, times in rows.items():
        mean, median = statistics.mean(times), statistics.median(times)
        ratio = statistics.median(first) / median
        print(f"{method:<8} {args.batch_size / mean:>9.1f} {1000 * mean:>9.1f} {1000 * median:>9.1f} {ratio:>11.2f}x")


if __name__ == "__main__":
    main()
