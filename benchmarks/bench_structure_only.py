"""Structure-only inspect of 1-billion-parameter ViTs: time and peak memory, and the verdicts it gives.

For each giant model, in a fresh subprocess (so the peak resident set size is this
measurement's own): import, build on the meta device (``with torch.device("meta")``),
``hookdoctor.inspect(model, input_shape=..., structure_only=True)``. Reported: the
parameter count, the build and inspect times, the peak RSS of the whole process (imports
included) and the RSS after imports, the CPU time of the process for build and inspect (what
the work costs, whatever else the machine runs), and what a full-size inspect would need according
to the memory guard's estimate.

Then the verdicts: a full inspect of a small model of the same family (random weights,
real values) and the structure-only inspect of the giant should name the same recommended
layer and the same rollout sites, up to the block index (the small model has fewer
blocks): the first norm of the last block, every block's attention, the same query.

Also the command line end to end (``hookdoctor inspect MODEL --structure-only --json``),
imports included.

Run: python benchmarks/bench_structure_only.py [--models timm_vit_giant,hf_dinov2_giant] [--skip-cli]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import textwrap
import time

GIANTS = {
    # name: (build expression under torch.device("meta"), input shape, small model of the family, its input)
    "timm_vit_giant": (
        "timm.create_model('vit_giant_patch14_224', pretrained=False)",
        (1, 3, 224, 224),
        "timm.create_model('vit_giant_patch14_224', pretrained=False, depth=2, embed_dim=64, num_heads=2, img_size=56)",
        (1, 3, 56, 56),
    ),
    "hf_dinov2_giant": (
        "transformers.Dinov2ForImageClassification(transformers.Dinov2Config(hidden_size=1536, "
        "num_hidden_layers=40, num_attention_heads=24, mlp_ratio=4, use_swiglu_ffn=True, image_size=518, "
        "patch_size=14))",
        (1, 3, 518, 518),
        "transformers.Dinov2ForImageClassification(transformers.Dinov2Config(hidden_size=64, "
        "num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, use_swiglu_ffn=True, image_size=56, "
        "patch_size=14))",
        (1, 3, 56, 56),
    ),
}
CLI = {"timm_vit_giant": "timm:vit_giant_patch14_224"}

_GIANT = textwrap.dedent(
    """
    import json, resource, time
    t0 = time.perf_counter()
    import torch, timm, transformers, hookdoctor
    from hookdoctor.model.memory import MemoryEstimate, activation_bytes, available_bytes, gib, parameter_bytes
    from hookdoctor.model.inputs import resolve_input
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1, c1 = time.perf_counter(), time.process_time()
    with torch.device("meta"):
        model = {build}.eval()
    t2, c2 = time.perf_counter(), time.process_time()
    report = hookdoctor.inspect(model, input_shape={shape}, structure_only=True)
    t3, c3 = time.perf_counter(), time.process_time()
    count, size = parameter_bytes(model)
    meta_input = resolve_input(model, None, {shape})
    estimate = MemoryEstimate(count, size, activation_bytes(model, meta_input.call))
    print(json.dumps(dict(
        parameters=count, imports_s=t1 - t0, build_s=t2 - t1, inspect_s=t3 - t2,
        build_cpu_s=c2 - c1, inspect_cpu_s=c3 - c2,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss_after_imports_mb=rss_imports,
        full_size_estimate=gib(estimate.total), weights=gib(estimate.weight_bytes),
        available=gib(available_bytes(torch.device("cpu")) or 0),
        gradcam=report.gradcam.layer_name if report.gradcam else None,
        rollout=list(report.rollout.layer_names) if report.rollout else None,
        query=report.rollout.query if report.rollout else None,
        codes=sorted({{d.code for d in report.diagnostics}}),
    )))
    """
)

_SMALL = textwrap.dedent(
    """
    import json
    import torch, timm, transformers, hookdoctor
    torch.manual_seed(0)
    model = {build}.eval()
    report = hookdoctor.inspect(model, input_shape={shape})
    print(json.dumps(dict(
        gradcam=report.gradcam.layer_name if report.gradcam else None,
        rollout=list(report.rollout.layer_names) if report.rollout else None,
        query=report.rollout.query if report.rollout else None,
        codes=sorted({{d.code for d in report.diagnostics}}),
    )))
    """
)


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _blocks(value: object) -> object:
    """Block indices masked: `blocks.39.norm1` and `blocks.1.norm1` both read `blocks.N.norm1`."""
    if isinstance(value, list):
        return sorted(set(_blocks(v) for v in value))  # type: ignore[arg-type]
    return re.sub(r"\.\d+\.", ".N.", value) if isinstance(value, str) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(GIANTS))
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args()
    for name in args.models.split(","):
        build, shape, small_build, small_shape = GIANTS[name]
        giant = _run(_GIANT.format(build=build, shape=shape))
        small = _run(_SMALL.format(build=small_build, shape=small_shape))
        print(f"## {name}: {giant['parameters'] / 1e9:.2f} B parameters, input {shape}")
        print(
            f"build {giant['build_s']:.2f} s + structure-only inspect {giant['inspect_s']:.2f} s "
            f"= {giant['build_s'] + giant['inspect_s']:.2f} s wall, "
            f"{giant['build_cpu_s'] + giant['inspect_cpu_s']:.2f} s CPU (build {giant['build_cpu_s']:.2f} + inspect "
            f"{giant['inspect_cpu_s']:.2f}; imports {giant['imports_s']:.2f} s wall); "
            f"peak RSS {giant['peak_rss_mb']:.0f} MB (after imports {giant['rss_after_imports_mb']:.0f} MB)"
        )
        print(
            f"a full-size inspect would need about {giant['full_size_estimate']} "
            f"({giant['weights']} of weights); available now: {giant['available']}"
        )
        same = {key: _blocks(giant[key]) == _blocks(small[key]) for key in ("gradcam", "rollout", "query")}
        print(
            f"structure-only giant: gradcam {giant['gradcam']}, rollout {len(giant['rollout'] or [])} sites, "
            f"query {giant['query']}, codes {giant['codes']}"
        )
        print(
            f"full inspect, small:  gradcam {small['gradcam']}, rollout {len(small['rollout'] or [])} sites, "
            f"query {small['query']}, codes {small['codes']}"
        )
        print(f"same verdicts (block index masked): {same}")
        if name in CLI and not args.skip_cli:
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "hookdoctor", "inspect", CLI[name], "--structure-only", "--json"],
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            print(
                f"CLI `hookdoctor inspect {CLI[name]} --structure-only --json`: exit {done.returncode}, "
                f"{wall:.2f} s wall, imports included"
            )
        print()


if __name__ == "__main__":
    main()
