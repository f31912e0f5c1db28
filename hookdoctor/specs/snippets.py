"""Copy-paste snippets for a GradCAMSpec: plain code a user can read and keep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hookdoctor.errors import InputError
from hookdoctor.specs.cam_family import resolve_method
from hookdoctor.specs.wrappers import Float32Maps, ScoreModel, grid_view, score_model_of

if TYPE_CHECKING:
    from hookdoctor.specs.gradcam import GradCAMSpec

BACKENDS = ("pytorch-grad-cam", "captum", "torchcam")


def _reshape_function(spec: GradCAMSpec, *, float32: bool = False) -> list[str]:
    """The reshape_transform as code; ``float32`` adds the cast numpy needs for bfloat16 layers."""
    layout = spec.layout
    if len(layout.grid) != 2:
        return []  # video (NCTHW) needs none; signals go through _spec_snippet
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


def _call_lines(model: ScoreModel) -> tuple[list[str], str]:
    """How the pasted ScoreModel calls the model: the image alone, or among the other inputs."""
    template = model.call_template
    if template is None:
        return [], "self.model(x)"
    slot = template.image_slot
    # AblationCAM and ScoreCAM run the model on copies of one image: the inputs held fixed
    # come in as many copies (ModelInput.for_batch).
    repeat = "v.repeat(len(x), *[1] * (v.dim() - 1)) if torch.is_tensor(v) and v.dim() and len(v) == 1 else v"
    held = "# a batch of copies (AblationCAM, ScoreCAM): the other inputs too"
    if isinstance(slot, str):
        return [
            "            kwargs = dict(self.inputs)",
            f"            if len(x) != len(kwargs[{slot!r}]):  {held}",
            f"                kwargs = {{k: {repeat} for k, v in kwargs.items()}}",
            f"            kwargs[{slot!r}] = x",
        ], "self.model(**kwargs)"
    return [
        "            args = list(self.inputs)",
        f"            if len(x) != len(args[{slot}]):  {held}",
        f"                args = [{repeat} for v in args]",
        f"            args[{slot}] = x",
    ], "self.model(*args)"


def _eager_model(spec: GradCAMSpec) -> str:
    """The expression for the module pytorch-grad-cam must run: inside a torch.compile wrapper, the eager one."""
    marker = "_orig_mod."
    if marker not in spec.layer_name:
        return "model"
    return "model." + spec.layer_name[: spec.layer_name.rindex(marker) + len(marker) - 1]


def _score_wrapper(spec: GradCAMSpec) -> tuple[list[str], str]:
    model = score_model_of(spec.model)
    eager = _eager_model(spec)
    if not isinstance(model, ScoreModel):
        return [], eager
    cast = ".float()" if model.float_scores else ""
    prepare, call = _call_lines(model)
    expression = model.selector.expression(call) + cast
    inputs = model.call_template is not None
    lines = [
        "class ScoreModel(torch.nn.Module):",
        f"    # Grad-CAM needs the score tensor: {spec.score}",
        *(["    # .float(): the score is bfloat16, and pytorch-grad-cam makes numpy arrays of it"] if cast else []),
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
            f"            return logits['x']{cast}  # the logit before the final softmax/sigmoid",
            "",
        ]
    else:
        lines += [f"            return {expression}", ""]
    return lines, f"ScoreModel({eager}, example_input)" if inputs else f"ScoreModel({eager})"


def _module_name(spec: GradCAMSpec, module: object) -> str:
    score_model = score_model_of(spec.model)
    assert isinstance(score_model, ScoreModel)
    for name, candidate in score_model.model.named_modules():
        if candidate is module:
            return name
    return "?"


def _has_inputs(spec: GradCAMSpec) -> bool:
    """True when the model takes other inputs besides the explained image."""
    score_model = score_model_of(spec.model)
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
    score_model = score_model_of(spec.model)
    if spec.task != "classification":
        return f"The {spec.task} score keeps what it read off the example input; spec.model holds it."
    if getattr(score_model, "pre_activation_function", None):
        return "spec.model returns the input of the final softmax/sigmoid call (the logit)."
    if spec.input_kind in ("spectrogram", "signal") or spec.layout.transposed:
        return f"spec.model and spec.reshape_transform handle the {spec.input_kind} input's axes."
    return None


def _grid(spec: GradCAMSpec) -> str:
    """The grid as the snippets' comments write it: ``H, W``, or ``T, H, W`` for video."""
    return ", ".join(str(g) for g in spec.grid)


def _inspect_call(spec: GradCAMSpec) -> str:
    """The call that gets the spec back: on the input it was checked on, for the same call of a shared module."""
    given = "example_input" if _has_inputs(spec) or spec.task != "classification" else "x"
    named = f", layer={spec.layer_name!r}" if spec.call_index is not None else ""
    return f"hookdoctor.inspect(model, {given}, methods=('gradcam',){named})"


def _spec_snippet(spec: GradCAMSpec, backend: str, why: str, method: str) -> str:
    lines = ["import hookdoctor"]
    if backend == "pytorch-grad-cam":
        lines += [
            "import torch",
            f"from pytorch_grad_cam import {method}",
            "from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget",
        ]
    lines += [
        "",
        f"# {why}",
        f"report = {_inspect_call(spec)}",
        "spec = report.gradcam",
    ]
    if backend == "pytorch-grad-cam":
        shown = "spec.as_backend_input(x)" if spec.input_kind in ("spectrogram", "signal") else "x"
        kwargs = "" if method == "GradCAM" else repr(method)
        lines += [
            f"cam = {method}(**spec.pytorch_grad_cam_kwargs({kwargs}))",
            "with torch.enable_grad():  # it backpropagates from the score outside the model: also under no_grad",
            f"    heatmap = cam(input_tensor={shown}, targets=[ClassifierOutputTarget(report.target)])"
            "  # in [0, 1], the input's size",
        ]
    elif backend == "torchcam":
        lines += ["cam = spec.torchcam()", *_torchcam_use(spec, "report.target")]
    else:
        lines += [f"attribution = spec.captum().attribute(x, target=report.target)  # [B, 1, {_grid(spec)}]"]
    return "\n".join(lines) + "\n"


def _method_lines(
    spec: GradCAMSpec, method: str, model_expr: str, reshape: list[str], layer_lines: list[str], layer: str
) -> tuple[list[str], list[str], list[str]]:
    """(imports, reshape definition, construction lines) that build ``cam`` for one pytorch-grad-cam class.

    ``layer_lines`` find the hooked module and ``layer`` names it: ``layer`` itself, or for
    a per-call spec ``routed.call``, the identity through which ``model_expr`` (the router)
    passes that call alone. Every method's helper takes the router and its identity as it
    would take a model and its layer.
    """
    imports = [f"from pytorch_grad_cam import {method}"]
    if method in ("AblationCAM", "ShapleyCAM"):
        # Both wrap the layer's layout in hookdoctor's helpers, which need the geometry as an object;
        # a bfloat16 layer's maps are cast for numpy by Float32Maps around it, as in the kwargs.
        geometry = spec.layout.transform()
        cast = isinstance(spec.reshape_transform, Float32Maps)
        transform = "reshape_transform" if geometry is not None else "None"
        definition = [f"reshape_transform = {geometry!r}", ""] if geometry is not None else []
        imports += ["from hookdoctor import ReshapeTransform"] if geometry is not None else []
        imports += ["from hookdoctor.specs.wrappers import Float32Maps"] if cast else []
        maps = f"Float32Maps({'' if geometry is None else transform})" if cast else transform
        if method == "AblationCAM":
            imports.append("from hookdoctor.specs.ablation import AblationModel, GridAblationLayer")
            return imports, definition, [
                *layer_lines,
                "# An ablation layer that ablates channels of the layer's [B, C, H, W] view, whatever its layout;",
                "# AblationModel applies it by a hook, so AblationCAM never swaps a module into `model`.",
                f"ablation_layer = GridAblationLayer({transform})",
                f"cam = AblationCAM(model=AblationModel({model_expr}, {layer}, ablation_layer),"
                f" target_layers=[{layer}],",
                f"                  reshape_transform={maps}, ablation_layer=ablation_layer, batch_size=32)",
            ]
        imports.append("from hookdoctor.specs.cam_family import SecondOrderModel")
        return imports, definition, [
            *layer_lines,
            "# ShapleyCAM differentiates twice: SecondOrderModel runs attention with the math kernel (the fused",
            "# ones have no double backward) and hooks the layer as a [B, C, H, W] grid (ShapleyCAM would skip",
            "# reshape_transform for the activations it weighs).",
            f"second_order = SecondOrderModel({model_expr}, {layer}, {transform})",
            "cam = ShapleyCAM(model=second_order, target_layers=[second_order.target_layer],"
            f" reshape_transform={'Float32Maps()' if cast else 'None'})",
        ]
    lines = [
        *layer_lines,
        f"cam = {method}(model={model_expr}, target_layers=[{layer}],"
        f" reshape_transform={'reshape_transform' if reshape else 'None'})",
    ]
    if method == "ScoreCAM":
        lines.append("cam.batch_size = 16  # ScoreCAM runs one forward pass per channel, this many at a time")
    return imports, reshape, lines


def gradcam_snippet(spec: GradCAMSpec, backend: str, method: str = "GradCAM") -> str:
    if backend not in BACKENDS:
        raise InputError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    method = resolve_method(method)
    if backend != "pytorch-grad-cam" and method != "GradCAM":
        raise InputError(
            f"The method {method} is a pytorch-grad-cam class; the {backend} snippet is Grad-CAM only. "
            "Use the pytorch-grad-cam backend for other CAM methods."
        )
    # The same checks as the kwargs: a method that cannot work raises its coded error here too.
    spec.pytorch_grad_cam_kwargs(method)
    why = _needs_the_spec(spec)
    if why is not None:
        return _spec_snippet(spec, backend, why, method)
    wrapper, model_expr = _score_wrapper(spec)
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
        reshape = _reshape_function(spec, float32=isinstance(spec.reshape_transform, Float32Maps))
        eager = _eager_model(spec)
        compiled = []
        if eager != "model":
            compiled = [f"# {eager}: the eager module; a compiled backward cannot run twice (retain_graph)"]
        imports, definition, construction = _method_lines(spec, method, model_expr, reshape, layer_lines, layer_expr)
        lines += [
            imports[0],
            "from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget",
            *imports[1:],
            "",
            *definition,
            *wrapper,
            *router,
            *compiled,
            *construction,
            "with torch.enable_grad():  # it backpropagates from the score outside the model: also under no_grad",
            "    heatmap = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])"
            "  # [B, H_in, W_in], in [0, 1]",
        ]
        return "\n".join(lines) + "\n"
    lines += _channels_first_lines(spec, backend, [*wrapper, *router, *layer_lines], model_expr, layer_expr)
    return "\n".join(lines) + "\n"


def _channels_first_lines(
    spec: GradCAMSpec, backend: str, plain: list[str], model_expr: str, layer_expr: str
) -> list[str]:
    """Captum's LayerGradCam or torchcam's GradCAM: plain code for a layer they read as it is, the spec otherwise.

    Both read dim 1 as channels; a token or channels-last layer needs the spec's
    ``[B, C, H, W]`` view (``CaptumAdapter``), which only ``spec.captum()`` and
    ``spec.torchcam()`` build. ``plain`` defines the score model, the router and the layer.
    """
    grid = _grid(spec)
    via_spec = grid_view(spec.layout) is not None
    if backend == "captum":
        imports = f"from captum.attr import LayerAttribution{'' if via_spec else ', LayerGradCam'}"
        library, view, name = "Captum", "so that LayerGradCam sees a grid", "gradcam"
        built = f"LayerGradCam({model_expr}, {layer_expr})"
        use = [
            f"attribution = gradcam.attribute(x, target=class_index, relu_attributions=True)  # [B, 1, {grid}]",
            "heatmap = LayerAttribution.interpolate(attribution, tuple(x.shape[2:]), "
            f"interpolate_mode={'trilinear' if len(spec.grid) == 3 else 'bilinear'!r})",
        ]
    else:
        imports = "from torchcam.methods import GradCAM"
        library, view, name = "torchcam", "and hands torchcam that view and the model that runs it", "cam"
        built = f"GradCAM({model_expr}, target_layer={layer_expr})"
        use = _torchcam_use(spec, "class_index")
    if not via_spec:
        return [imports, "", *plain, f"{name} = {built}", *use]
    return [
        imports,
        "",
        "import hookdoctor",
        "",
        f"# {library} reads dim 1 as channels; the spec routes `{spec.layer_name}` through a",
        f"# [B, C, {grid}] view {view}.",
        f"spec = {_inspect_call(spec)}.gradcam",
        f"{name} = spec.{backend}()",
        *use,
    ]


def _torchcam_use(spec: GradCAMSpec, target: str) -> list[str]:
    """The lines that run torchcam's extractor ``cam`` on ``x`` for class ``target`` and take its map."""
    return [
        "scores = cam.model(x)  # the forward torchcam's hooks watch",
        f"heatmap = cam(class_idx={target}, scores=scores)[0]  # [B, {_grid(spec)}], in [0, 1]",
        "cam.remove_hooks()",
    ]
