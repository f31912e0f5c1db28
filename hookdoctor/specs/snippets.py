"""Copy-paste snippets for a GradCAMSpec: plain code a user can read and keep."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hookdoctor.errors import InputError

if TYPE_CHECKING:
    from hookdoctor.specs.gradcam import GradCAMSpec, ScoreModel

BACKENDS = ("pytorch-grad-cam", "captum")


def _reshape_function(spec: GradCAMSpec) -> list[str]:
    layout = spec.layout
    if len(layout.grid) != 2:
        return []  # video (NCTHW) needs none; signals go through _spec_snippet
    h, w = layout.grid
    if layout.kind == "NHWC":
        return [
            "def reshape_transform(t):",
            "    # channels-last [B, H, W, C] -> [B, C, H, W]",
            "    return t.permute(0, 3, 1, 2)",
            "",
        ]
    if layout.kind == "tokens":
        p = layout.prefix_tokens
        return [
            "def reshape_transform(t):",
            f"    # drop {p} prefix token(s), lay the {h * w} patch tokens on the {h}x{w} grid, channels first",
            f"    return t[:, {p}:, :].reshape(t.shape[0], {h}, {w}, t.shape[-1]).permute(0, 3, 1, 2)",
            "",
        ]
    return []


def _score_model(spec: GradCAMSpec) -> Any:
    """The score model: ``spec.model``, or the model a per-call spec's router runs."""
    from hookdoctor.specs.gradcam import CallRouter

    return spec.model.score_model if isinstance(spec.model, CallRouter) else spec.model


def _call_lines(model: ScoreModel) -> tuple[list[str], str]:
    """How the pasted ScoreModel calls the model: the image alone, or among the other inputs."""
    template = model.call_template
    if template is None:
        return [], "self.model(x)"
    slot = template.image_slot
    if isinstance(slot, str):
        return ["            kwargs = dict(self.inputs)", f"            kwargs[{slot!r}] = x"], "self.model(**kwargs)"
    return ["            args = list(self.inputs)", f"            args[{slot}] = x"], "self.model(*args)"


def _score_wrapper(spec: GradCAMSpec) -> tuple[list[str], str]:
    from hookdoctor.specs.gradcam import ScoreModel

    model = _score_model(spec)
    if not isinstance(model, ScoreModel):
        return [], "model"
    prepare, call = _call_lines(model)
    expression = model.selector.expression(call)
    inputs = model.call_template is not None
    lines = [
        "class ScoreModel(torch.nn.Module):",
        f"    # Grad-CAM needs the score tensor: {spec.score}",
        f"    def __init__(self, model{', inputs' if inputs else ''}):",
        "        super().__init__()",
        "        self.model = model",
    ]
    if inputs:
        slot = model.call_template.image_slot if model.call_template is not None else 0
        lines.append(f"        self.inputs = inputs  # the inputs given to hookdoctor.inspect; x replaces [{slot!r}]")
    lines += [
        "",
        "    def forward(self, x):",
        "        with torch.enable_grad():  # frozen models and no_grad callers still get layer gradients",
        "            x = x if x.requires_grad else x.detach().requires_grad_(True)",
        *prepare,
    ]
    if model.pre_activation is not None:
        lines += [
            "            logits = {}",
            f"            final = dict(self.model.named_modules())[{_module_name(spec, model.pre_activation)!r}]",
            "            handle = final.register_forward_pre_hook(lambda m, args: logits.update(x=args[0]))",
            "            try:",
            f"                {call}",
            "            finally:",
            "                handle.remove()",
            "            return logits['x']  # the logit before the final softmax/sigmoid",
            "",
        ]
    else:
        lines += [f"            return {expression}", ""]
    return lines, "ScoreModel(model, example_input)" if inputs else "ScoreModel(model)"


def _module_name(spec: GradCAMSpec, module: object) -> str:
    from hookdoctor.specs.gradcam import ScoreModel

    score_model = _score_model(spec)
    assert isinstance(score_model, ScoreModel)
    for name, candidate in score_model.model.named_modules():
        if candidate is module:
            return name
    return "?"


def _has_inputs(spec: GradCAMSpec) -> bool:
    """True when the model takes other inputs besides the explained image."""
    score_model = _score_model(spec)
    return getattr(score_model, "call_template", None) is not None


def _call_router(spec: GradCAMSpec) -> list[str]:
    """The per-call routing (``CallRouter``) written out: one call of a shared module, alone."""
    if spec.call_index is None:
        return []
    return [
        "class OneCall(torch.nn.Module):",
        f"    # `{spec.module_name}` runs several times per forward pass and a hook on it fires on every call.",
        "    # During each forward, this passes the output of call `index` (from 0) alone through",
        "    # self.call, an identity: a hook on self.call sees that call and nothing else.",
        "    def __init__(self, model, module, index):",
        "        super().__init__()",
        "        self.model = model",
        "        self.call = torch.nn.Identity()",
        "        self.index = index",
        "        self.__dict__['module'] = module  # part of model already, not a second submodule",
        "",
        "    def forward(self, x):",
        "        count = [0]",
        "",
        "        def route(module, args, output):",
        "            count[0] += 1",
        "            return self.call(output) if count[0] - 1 == self.index else None",
        "",
        "        handle = self.module.register_forward_hook(route)  # removed after this forward",
        "        try:",
        "            out = self.model(x)",
        "        finally:",
        "            handle.remove()",
        "        if count[0] <= self.index:",
        "            raise RuntimeError(f'call {self.index} never happened: the module ran {count[0]} time(s)')",
        "        return out",
        "",
    ]


def _needs_the_spec(spec: GradCAMSpec) -> str | None:
    """Why the snippet uses hookdoctor's spec objects rather than plain code, or None.

    A task's score keeps what it read off the example input (class masks, detections, the
    reference embedding) and a functional final activation needs its input intercepted;
    plain code would have to repeat all of it. Swapped and 1-D layouts are the spec's too.
    """
    score_model = _score_model(spec)
    if spec.task != "classification":
        return f"The {spec.task} score keeps what it read off the example input; spec.model holds it."
    if getattr(score_model, "pre_activation_function", None):
        return "spec.model returns the input of the final softmax/sigmoid call (the logit)."
    if spec.input_kind in ("spectrogram", "signal") or spec.layout.transposed:
        return f"spec.model and spec.reshape_transform handle the {spec.input_kind} input's axes."
    return None


def _spec_snippet(spec: GradCAMSpec, backend: str, why: str) -> str:
    given = "example_input" if _has_inputs(spec) or spec.task != "classification" else "x"
    grid = ", ".join(str(g) for g in spec.grid)
    named = f", layer={spec.layer_name!r}" if spec.call_index is not None else ""
    lines = ["import hookdoctor"]
    if backend == "pytorch-grad-cam":
        lines += [
            "from pytorch_grad_cam import GradCAM",
            "from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget",
        ]
    lines += [
        "",
        f"# {why}",
        f"report = hookdoctor.inspect(model, {given}, methods=('gradcam',){named})",
        "spec = report.gradcam",
    ]
    if backend == "pytorch-grad-cam":
        shown = "spec.as_backend_input(x)" if spec.input_kind in ("spectrogram", "signal") else "x"
        lines += [
            "cam = GradCAM(**spec.pytorch_grad_cam_kwargs())",
            f"heatmap = cam(input_tensor={shown}, targets=[ClassifierOutputTarget(report.target)])"
            "  # in [0, 1], the input's size",
        ]
    else:
        lines += [f"attribution = spec.captum().attribute(x, target=report.target)  # [B, 1, {grid}]"]
    return "\n".join(lines) + "\n"


def gradcam_snippet(spec: GradCAMSpec, backend: str) -> str:
    if backend not in BACKENDS:
        raise InputError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    why = _needs_the_spec(spec)
    if why is not None:
        return _spec_snippet(spec, backend, why)
    wrapper, model_expr = _score_wrapper(spec)
    reshape = _reshape_function(spec)
    router = _call_router(spec)
    if router:
        # The library gets the router as its model and the router's identity as its layer.
        layer_lines = [
            f"routed = OneCall({model_expr}, dict(model.named_modules())[{spec.module_name!r}], {spec.call_index})",
        ]
        model_expr, layer_expr = "routed", "routed.call"
    else:
        layer_lines = [f"layer = dict(model.named_modules())[{spec.layer_name!r}]"]
        layer_expr = "layer"
    lines = ["import torch"]
    if backend == "pytorch-grad-cam":
        lines += [
            "from pytorch_grad_cam import GradCAM",
            "from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget",
            "",
            *reshape,
            *wrapper,
            *router,
            *layer_lines,
            f"cam = GradCAM(model={model_expr}, target_layers=[{layer_expr}],"
            f" reshape_transform={'reshape_transform' if reshape else 'None'})",
            "heatmap = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])"
            "  # [B, H_in, W_in], in [0, 1]",
        ]
        return "\n".join(lines) + "\n"
    lines += [f"from captum.attr import LayerAttribution{'' if reshape else ', LayerGradCam'}", ""]
    if reshape:
        named = f", layer={spec.layer_name!r}" if spec.call_index is not None else ""
        given = "example_input" if _has_inputs(spec) else "x"
        lines += [
            "import hookdoctor",
            "",
            f"# Captum reads dim 1 as channels; the spec routes `{spec.layer_name}` through a",
            f"# [B, C, {', '.join(str(g) for g in spec.grid)}] view so that LayerGradCam sees a grid.",
            f"spec = hookdoctor.inspect(model, {given}, methods=('gradcam',){named}).gradcam",
            "gradcam = spec.captum()",
        ]
    else:
        lines += [
            *wrapper,
            *router,
            *layer_lines,
            f"gradcam = LayerGradCam({model_expr}, {layer_expr})",
        ]
    lines += [
        f"attribution = gradcam.attribute(x, target=class_index, relu_attributions=True)"
        f"  # [B, 1, {', '.join(str(g) for g in spec.grid)}]",
        "heatmap = LayerAttribution.interpolate(attribution, tuple(x.shape[2:]), "
        f"interpolate_mode={'trilinear' if len(spec.grid) == 3 else 'bilinear'!r})",
    ]
    return "\n".join(lines) + "\n"
