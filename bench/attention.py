"""Benchmark of the training step's attention alone: forward + backward of softmax(Q K^T / 6) V on the shape of
an x4 training step at batch 16 and LR patch 48 (16 x 8 heads x 4 chunks of 576 tokens, head width 18).

Prints JSON: seconds per forward + backward (median of --runs) and the relative error of the output and of each
gradient against float64, for the fp32 and bf16 flash kernels (scaled_dot_product_attention) and for
esrt.bf16_attention with several group sizes (chunks per bf16 batched matmul).

    python bench/attention.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from esrt import bf16_attention as bf16_module
from esrt.model import ATTENTION_SCALE, sdpa_kernel
from esrt.runtime import tune_malloc

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--groups", default="1,2,4,8,16", help="chunks per group for esrt.bf16_attention")
    args = parser.parse_args()
    tune_malloc()  # as the trainer: otherwise every call page-faults its score buffers anew
    length = args.patch * args.patch // 4
    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(args.batch, 32, length, 18, generator=g) for _ in range(4))
    q, k = q * 1.5, k * 1.5  # scores of a few units, as in a trained model

    def run(attention: Attention, dtype: torch.dtype) -> list[torch.Tensor]:
        inputs = [t.to(dtype).clone().requires_grad_() for t in (q, k, v)]
        out = attention(*inputs)
        out.backward(grad.to(dtype))
        return [out.detach().double()] + [t.grad.double() for t in inputs if t.grad is not None]

    reference = run(sdpa_kernel, torch.float64)

    def measure(attention: Attention, dtype: torch.dtype) -> dict[str, object]:
        results = run(attention, dtype)  # warm-up
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            run(attention, dtype)
            times.append(time.perf_counter() - t)
        errors = [round(((a - b).norm() / b.norm()).item(), 5) for a, b in zip(results, reference, strict=True)]
        return {"seconds": round(statistics.median(times), 4), "relative_error_out_dq_dk_dv": errors}

    report: dict[str, object] = {
        "benchmark": f"attention fwd+bwd: ({args.batch}, 32, {length}, 18), threads {torch.get_num_threads()}",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "flash_fp32": measure(sdpa_kernel, torch.float32),
        "flash_bf16": measure(sdpa_kernel, torch.bfloat16),
    }
    for group in (int(x) for x in args.groups.split(",")):
        bf16_module.GROUP_SCORES = group * length * length
        report[f"bf16_products_group_{group}"] = measure(
            lambda a, b, c: bf16_module.bf16_attention(a, b, c, ATTENTION_SCALE), torch.bfloat16
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
