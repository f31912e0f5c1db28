"""How much does hookdoctor.inspect cost, next to what users already run?

For each model, in a fresh subprocess per measurement (so peak memory is that step's own):
a forward pass, a forward + backward, torchinfo.summary, and inspect for Grad-CAM,
rollout and both. Prints a Markdown table; times are the median of --repeat runs after
one warm-up. Run: python benchmarks/bench_inspect.py [--repeat 3] [--models resnet50,vit_b_16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

MODELS = {
    "resnet50": "torchvision.models.resnet50(weights=None)",
    "vit_b_16": "torchvision.models.vit_b_16(weights=None)",
    "swin_t": "torchvision.models.swin_t(weights=None)",
    "hf_vit_base": "transformers.ViTForImageClassification(transformers.ViTConfig())",
    "timm_deit_small": "timm.create_model('deit_small_patch16_224', pretrained=False)",
}

STEPS = {
    "forward": "with torch.no_grad(): model(x)",
    "forward+backward": "out = model(x); out = getattr(out, 'logits', out); out[0, out[0].argmax()].backward(); "
    "model.zero_grad(set_to_none=True)",
    "torchinfo": "torchinfo.summary(model, input_data=x, verbose=0)",
    "inspect gradcam": "hookdoctor.inspect(model, x, methods=('gradcam',))",
    "inspect rollout": "hookdoctor.inspect(model, x, methods=('rollout',))",
    "inspect all": "hookdoctor.inspect(model, x)",
}

_RUNNER = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch, torchvision, transformers, timm, torchinfo, hookdoctor
    torch.manual_seed(0)
    model = {build}.eval()
    if hasattr(model, "heads"):  # torchvision ViT: weights=None zero-initialises the head
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.randn(1, 3, 224, 224)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range({repeat} + 1):
        start = time.perf_counter()
        {step}
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"times": times[1:], "peak_mb": (peak - base) / 1024}}))
    """
)


def measure(model: str, step: str, repeat: int) -> dict[str, float]:
    code = _RUNNER.format(build=MODELS[model], step=STEPS[step], repeat=repeat)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seconds": statistics.median(data["times"]), "peak_mb": data["peak_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    models = args.models.split(",")
    print("| model | " + " | ".join(STEPS) + " |")
    print("| --- |" + " --- |" * len(STEPS))
    for model in models:
        cells = []
        for step in STEPS:
            try:
                m = measure(model, step, args.repeat)
                cells.append(f"{m['seconds']:.2f} s / +{m['peak_mb']:.0f} MB")
            except subprocess.CalledProcessError as exc:
                cells.append("failed: " + (exc.stderr.strip().splitlines() or ["?"])[-1][:60])
        print(f"| {model} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
