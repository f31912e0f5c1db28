"""Copy-paste snippets for a GradCAMSpec: plain code a user can read and keep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hookdoctor.errors import InputError

if TYPE_CHECKING:
    from hookdoctor.specs.gradcam import GradCAMSpec

BACKENDS = ("pytorch-grad-cam", "captum")


def _reshape_function(spec: GradCAMSpec, *, float32: bool = False) -> list[str]:
    """The reshape_transform as code; ``float32`` adds the cast numpy needs for bfloat16 layers."""
    layout = spec.layout
    h, w = layout.grid
    cast = ".float()" if float32 else ""
    cast_note = ["    # .float(): pytorch-grad-cam makes numpy arrays of the maps, and numpy has no bfloat16"]
    if layout.kind == "NHWC":
        return [
            "def reshape_transform(t):",
            "    # channels-last [B, H, W, C] -> [B, C, H, W]",
            *(cast_note if float32 else []),
            f"    return t.permute(0, 3, 1, 2){cast}",
            "",
        ]
    if layout.kind == "tokens":
        p = layout.prefix_tokens
        return [
            "def reshape_transform(t):",
            f"    # drop {p} prefix token(s), lay the {h * w} patch tokens on the {h}x{w} grid, channels first",
            *(cast_note if float32 else []),
            f"    return t[:, {p}:, :].reshape(t.shape[0], {h}, {w}, t.shape[-1]).permute(0, 3, 1, 2){cast}",
            "",
        ]
    if float32:
        return ["def reshape_transform(t):", *cast_note, "    return t.float()", ""]
    return []


def _eager_model(spec: GradCAMSpec) -> str:
    """The expression for the module pytorch-grad-cam must run: inside a torch.compile wrapper, the eager one."""
    marker = "_orig_mod."
    if marker not in spec.layer_name:
        return "model"
    return "model." + spec.layer_name[: spec.layer_name.rindex(marker) + len(marker) - 1]


def _score_wrapper(spec: GradCAMSpec) -> tuple[list[str], str]:
    from hookdoctor.specs.gradcam import ScoreModel

    model = spec.model
    eager = _eager_model(spec)
    if not isinstance(model, ScoreModel):
        return [], eager
    cast = ".float()" if model.float_scores else ""
    expression = model.selector.expression("self.model(x)") + cast
    lines = [
        "class ScoreModel(torch.nn.Module):",
        f"    # Grad-CAM needs the score tensor: {spec.score}",
        *(["    # .float(): the score is bfloat16, and pytorch-grad-cam makes numpy arrays of it"] if cast else []),
        "    def __init__(self, model):",
        "        super().__init__()",
        "        self.model = model",
        "",
        "    def forward(self, x):",
        "        with torch.enable_grad():  # frozen models and no_grad callers still get layer gradients",
        "            x = x if x.requires_grad else x.detach().requires_grad_(True)",
    ]
    if model.pre_activation is not None:
        lines += [
            "            logits = {}",
            f"            final = dict(self.model.named_modules())[{_module_name(spec, model.pre_activation)!r}]",
            "            handle = final.register_forward_pre_hook(lambda m, args: logits.update(x=args[0]))",
            "            try:",
            "                self.model(x)",
            "            finally:",
            "                handle.remove()",
            f"            return logits['x']{cast}  # the logit before the final softmax/sigmoid",
            "",
        ]
    else:
        lines += [f"            return {expression}", ""]
    return lines, f"ScoreModel({eager})"


def _module_name(spec: GradCAMSpec, module: object) -> str:
    from hookdoctor.specs.gradcam import ScoreModel

    assert isinstance(spec.model, ScoreModel)
    for name, candidate in spec.model.model.named_modules():
        if candidate is module:
            return name
    return "?"


def gradcam_snippet(spec: GradCAMSpec, backend: str) -> str:
    if backend not in BACKENDS:
        raise InputError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    from hookdoctor.specs.gradcam import Float32Maps

    wrapper, model_expr = _score_wrapper(spec)
    reshape = _reshape_function(spec)
    lines = ["import torch"]
    if backend == "pytorch-grad-cam":
        reshape = _reshape_function(spec, float32=isinstance(spec.reshape_transform, Float32Maps))
        eager = _eager_model(spec)
        compiled = []
        if eager != "model":
            compiled = [f"# {eager}: the eager module; a compiled backward cannot run twice (retain_graph)"]
        lines += [
            "from pytorch_grad_cam import GradCAM",
            "from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget",
            "",
            *reshape,
            *wrapper,
            f"layer = dict(model.named_modules())[{spec.layer_name!r}]",
            *compiled,
            f"cam = GradCAM(model={model_expr}, target_layers=[layer],"
            f" reshape_transform={'reshape_transform' if reshape else 'None'})",
            "with torch.enable_grad():  # it backpropagates from the score outside the model: also under no_grad",
            "    heatmap = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])"
            "  # [B, H_in, W_in], in [0, 1]",
        ]
        return "\n".join(lines) + "\n"
    lines += [f"from captum.attr import LayerAttribution{'' if reshape else ', LayerGradCam'}", ""]
    if reshape:
        lines += [
            "import hookdoctor",
            "",
            f"# Captum reads dim 1 as channels; the spec routes `{spec.layer_name}` through a",
            f"# [B, C, {spec.grid[0]}, {spec.grid[1]}] view so that LayerGradCam sees a grid.",
            "spec = hookdoctor.inspect(model, x, methods=('gradcam',)).gradcam",
            "gradcam = spec.captum()",
        ]
    else:
        lines += [
            *wrapper,
            f"layer = dict(model.named_modules())[{spec.layer_name!r}]",
            f"gradcam = LayerGradCam({model_expr}, layer)",
        ]
    lines += [
        f"attribution = gradcam.attribute(x, target=class_index, relu_attributions=True)"
        f"  # [B, 1, {spec.grid[0]}, {spec.grid[1]}]",
        "heatmap = LayerAttribution.interpolate(attribution, tuple(x.shape[-2:]), interpolate_mode='bilinear')",
    ]
    return "\n".join(lines) + "\n"
