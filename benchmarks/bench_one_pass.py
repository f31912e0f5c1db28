"""What inspect() costs next to one forward+backward, measured side by side.

For each model, in a fresh subprocess:

* time: rounds alternate one forward+backward (``loss.backward()`` on the top logit, as a
  user's Grad-CAM does) and one ``hookdoctor.inspect(model, x)`` with default methods, in
  the same process, so machine load hits both alike. The ratio inspect / forward+backward
  is reported as the minimum and the median over rounds (minimum of each step's times,
  and the median of the per-round ratios).
* peak memory: in two more fresh subprocesses, the growth of the peak resident set size
  (ru_maxrss) over the model's own footprint during one forward+backward and during one
  inspect; their ratio is reported.
* memory kept: the resident set size after 30 inspect() calls, minus after the first.

Run: python benchmarks/bench_one_pass.py [--rounds 5] [--calls 30] [--models resnet50,vit_b_16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

MODELS = {
    "tv_resnet50": "torchvision.models.resnet50(weights=None)",
    "tv_vit_b_16": "torchvision.models.vit_b_16(weights=None)",
    "tv_swin_t": "torchvision.models.swin_t(weights=None)",
    "tv_convnext_tiny": "torchvision.models.convnext_tiny(weights=None)",
    "timm_vit_b_16": "timm.create_model('vit_base_patch16_224', pretrained=False)",
    "hf_vit_base": "transformers.ViTForImageClassification(transformers.ViTConfig())",
}

_SETUP = textwrap.dedent(
    """
    import gc, json, resource, statistics, sys, time
    import torch, torchvision, transformers, timm, hookdoctor
    torch.manual_seed(0)
    model = {build}.eval()
    if hasattr(model, "heads"):  # torchvision ViT: weights=None zero-initialises the head
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.randn(1, 3, 224, 224)

    def forward_backward():
        out = model(x)
        out = getattr(out, "logits", out)
        out[0, out[0].argmax()].backward()
        model.zero_grad(set_to_none=True)

    def inspect():
        hookdoctor.inspect(model, x)

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    """
)

_TIME = textwrap.dedent(
    """
    forward_backward(); inspect()  # warm-up: lazy imports, allocator pools
    fb, ins = [], []
    for _ in range({rounds}):
        start = time.perf_counter(); forward_backward(); fb.append(time.perf_counter() - start)
        start = time.perf_counter(); inspect(); ins.append(time.perf_counter() - start)
    print(json.dumps({{"fb": fb, "inspect": ins}}))
    """
)

_PEAK = textwrap.dedent(
    """
    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    {step}()
    print(json.dumps({{"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base}}))
    """
)

_KEPT = textwrap.dedent(
    """
    inspect(); gc.collect()
    first = rss_mb()
    for _ in range({calls} - 1):
        inspect()
    gc.collect()
    print(json.dumps({{"kept_mb": rss_mb() - first}}))
    """
)


def _run(model: str, body: str) -> dict[str, object]:
    code = _SETUP.format(build=MODELS[model]) + body
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(model: str, rounds: int, calls: int) -> dict[str, float]:
    times = _run(model, _TIME.format(rounds=rounds))
    fb, ins = times["fb"], times["inspect"]
    assert isinstance(fb, list) and isinstance(ins, list)
    ratios = [i / f for f, i in zip(fb, ins, strict=True)]
    peak_fb = _run(model, _PEAK.format(step="forward_backward"))["peak_mb"]
    peak_inspect = _run(model, _PEAK.format(step="inspect"))["peak_mb"]
    kept = _run(model, _KEPT.format(calls=calls))["kept_mb"]
    assert isinstance(peak_fb, float) and isinstance(peak_inspect, float) and isinstance(kept, float)
    return {
        "fb_s": min(fb),
        "inspect_s": min(ins),
        "ratio_min": min(ins) / min(fb),
        "ratio_median": statistics.median(ratios),
        "peak_fb_mb": peak_fb,
        "peak_inspect_mb": peak_inspect,
        "kept_mb": kept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    print(
        "| model | fwd+bwd (min) | inspect (min) | ratio min / median | peak fwd+bwd | peak inspect | peak ratio "
        f"| kept after {args.calls} calls |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models.split(","):
        try:
            m = measure(model, args.rounds, args.calls)
        except subprocess.CalledProcessError as exc:
            print(f"| {model} | failed: {(exc.stderr.strip().splitlines() or ['?'])[-1][:80]} |", flush=True)
            continue
        peak_ratio = m["peak_inspect_mb"] / max(m["peak_fb_mb"], 1.0)
        print(
            f"| {model} | {m['fb_s']:.2f} s | {m['inspect_s']:.2f} s | {m['ratio_min']:.2f}x / "
            f"{m['ratio_median']:.2f}x | +{m['peak_fb_mb']:.0f} MB | +{m['peak_inspect_mb']:.0f} MB | "
            f"{peak_ratio:.2f}x | {m['kept_mb']:+.1f} MB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
