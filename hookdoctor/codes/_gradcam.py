"""Codes for the model's output and head (HD0xx), the hook site (HD1xx), gradient
flow (HD2xx), layout (HD3xx) and layer naming (HD4xx): the Grad-CAM side."""

from __future__ import annotations

from hookdoctor.codes._code import Code, Template

_MODEL = "model output"
_SITE = "hook site"
_GRAD = "gradient flow"
_LAYOUT = "layout"
_NAMING = "naming"

# Sentences that several variants of a code share.
_CHOOSE_A_RUNNING_MODULE = "Choose a module that runs; the report lists each module with its call count."
_ROUTES_ONE_CALL = (
    "The spec's .model routes call {index} alone through an identity module, the spec's .layer, so the library "
    "hooks that call and nothing else."
)
_HOOK_ON_THE_PATH = "Hook a layer on the path from the input to the score."
_NO_GRADIENT_FIX = "Hook a layer before the last token-mixing (attention) step, such as the last block's first norm."


_READ_THE_LAYER_FINDINGS = "Read the layer findings; hookdoctor explain HD203."
_NEGATIVE_EVIDENCE_FIX = (
    "Explain the predicted class or the negative score, or read the signed map; hookdoctor explain HD204."
)
_TASK = "Task: {task}, because {why}; the explained score (spec.model(x)[:, k]) is {score}."


def _final_activation_call(*, saturated: bool) -> Template:
    """HD004 for a softmax/sigmoid called as a function at the end of the forward."""
    return Template(
        "The model's forward ends in a {function} call (F.{function} / torch.{function}, seen in the autograd "
        f"graph){', saturated at 1.0' if saturated else ''}; its gradient {'vanishes' if saturated else 'is damped'}"
        ", so the logit before it is explained instead.",
        "The spec's .model returns the input of that call; explain logits, not probabilities.",
    )


def _final_activation_module(*, saturated: bool) -> Template:
    """HD004 for an nn.Softmax / nn.Sigmoid module at the end of the model."""
    return Template(
        f"The model ends in `{{layer}}` (softmax/sigmoid){', saturated at 1.0' if saturated else ''}; its gradient "
        f"{'vanishes' if saturated else 'is damped'}, so the logit before it is explained instead.",
        "The spec's .model returns the input of that module; explain logits, not probabilities.",
    )


def _three_d(kind: str, shape: str, view: str) -> Template:
    """HD015 for a 3-D input of ``kind``."""
    return Template(
        f"The explained input is a 3-D {kind} {shape}; pytorch-grad-cam 1.5.7 takes only 4-D and 5-D inputs and "
        "fails on it.",
        f"Pass spec.as_backend_input(x) (the {view} view) to pytorch-grad-cam; spec.model accepts it. Captum "
        "takes x itself.",
    )


_PICKS = " (the path from the score picks them with {picks})"
_INSTEAD = "; the spec uses `{spec_layer}` instead"


def _cut_off(via: str = "", instead: str = "") -> Template:
    """HD201: no gradient reaches the patch tokens, optionally naming the picks and the spec's layer."""
    return Template(
        "No gradient reaches the {grid} patch tokens of {layers}: after {them} the classifier reads only the "
        f"prefix token(s){via}, so Grad-CAM there is all zeros{instead}.",
        _NO_GRADIENT_FIX,
    )

CODES = (
    Code(
        "HD001", "output-not-a-tensor", _MODEL, "info",
        "The model returns a ModelOutput, tuple or dict, not a logits tensor.",
        """pytorch-grad-cam takes the argmax of whatever the model returns and zips your targets
with it; Captum reads `output.shape`. A Hugging Face `ImageClassifierOutput` fails with
"'ImageClassifierOutput' object has no attribute 'cpu'", and with explicit targets the zip
walks the output's keys ("'str' object has no attribute 'shape'"). A tuple `(aux, main)`
with batch 1 silently explains the auxiliary head.

Fix: give the attribution library a thin wrapper whose forward returns the logits tensor.
The spec's `.model` is that wrapper (it returns `.logits`, or the named field / index), so
`GradCAM(**spec.pytorch_grad_cam_kwargs())` and `spec.captum()` work unchanged.""",
        applies="spec",
        # Fields: structure (what the model returns), expression (how the score is read from it,
        # e.g. "output.logits").
        templates={
            "default": Template(
                "The model returns {structure}; attribution libraries need the score tensor {expression}.",
                "The spec's .model is a wrapper that returns it; pass spec.model, not the raw model, to the library.",
            ),
        },
    ),
    Code(
        "HD002", "several-heads", _MODEL, "warning",
        "The model returns several score tensors; one of them was chosen.",
        """A model that returns `(logits, aux_logits)` or a dict of heads gives the attribution
libraries a choice they make silently: pytorch-grad-cam pairs target i with head i, so
batch 1 explains the first head (often the auxiliary one) and batch 2 fails with "grad can
be implicitly created only for scalar outputs".

hookdoctor picks the `logits` field when there is one, otherwise the first 2-D tensor, and
says which. If you meant another head, name it: `hookdoctor.inspect(model, x, output=1)` for
a tuple index, `output="main"` for a dict key or ModelOutput field (`--output` on the
command line); the spec's `.model` then returns that head.""",
        # Fields: expression (the head explained, e.g. "output[0]"), others (the heads passed over, ", "-joined).
        templates={
            "default": Template(
                "The model returns several score tensors; {expression} was explained and {others} passed over.",
                "If you meant another head, name it: inspect(..., output=KEY_OR_INDEX) (--output on the command line).",
            ),
        },
    ),
    Code(
        "HD003", "zero-initialised-head", _MODEL, "warning",
        "The classifier head's weights are all zero, so every gradient is zero.",
        """torchvision's `VisionTransformer(weights=None)` initialises `heads.head` to zeros; a
freshly built model of this kind has a score that does not depend on the image at all,
and every Grad-CAM map is exactly zero, whatever the layer. This is a property of the
weights, not of the layer: a trained model has a non-zero head.

hookdoctor judges the layers with a surrogate score (a fixed random projection of the
head's input), which has the same structure as the real score. Load trained weights, or
re-initialise the head, before reading any map from this model.""",
        # Fields: layer (the head).
        templates={
            "default": Template(
                "The head `{layer}` has all-zero weights, so the score's gradient is zero for every layer; layers were "
                "judged with a surrogate score instead.",
                "Load trained weights (or re-initialise the head) before reading any map from this model.",
            ),
        },
    ),
    Code(
        "HD004", "saturated-output", _MODEL, "warning",
        "The model ends in a softmax or sigmoid that is saturated, so gradients vanish.",
        """When the model's own forward applies softmax or sigmoid, a confident prediction puts
the probability at 1.0 in float32 and its gradient at about 1e-17. pytorch-grad-cam then
divides by (max + 1e-7) and the map comes out black.

Explain the logit, not the probability: the spec's `.model` returns the input of the
final softmax/sigmoid, so its gradients are those of the pre-activation score. This holds
for an `nn.Softmax` / `nn.Sigmoid` module and for `F.softmax(...)` / `torch.sigmoid(...)`
called at the end of `forward`: the autograd graph shows the latter (the score's node is
`SoftmaxBackward0` or `SigmoidBackward0`), and the spec's `.model` takes the input of that
call.""",
        applies="spec",
        # "function": the forward ends in F.softmax/torch.sigmoid-style call (function: "softmax" or
        # "sigmoid"); "module": in an nn.Softmax/nn.Sigmoid module (layer). "*_saturated" when the
        # probability is saturated (a warning; the others are info: pass severity="info").
        templates={
            "function": _final_activation_call(saturated=False),
            "function_saturated": _final_activation_call(saturated=True),
            "module": _final_activation_module(saturated=False),
            "module_saturated": _final_activation_module(saturated=True),
        },
    ),
    Code(
        "HD005", "gradients-disabled", _MODEL, "info",
        "Gradients would not reach the layer: parameters are frozen or grad mode is off.",
        """pytorch-grad-cam registers its gradient hook only when the layer's output requires
grad, and skips it silently otherwise. A fully frozen model (or a call under
`torch.no_grad()` / `inference_mode`) fails with "element 0 of tensors does not require
grad"; a frozen backbone with a trainable head fails later with "'NoneType' object has no
attribute 'shape'".

The spec's `.model` runs with grad enabled and makes its input require grad, so every
activation on the way to the score carries a gradient without unfreezing any parameter.""",
        applies="spec",
        # "frozen": the parameters up to the layer are frozen; "grad_mode_off": grad mode was off.
        templates={
            "frozen": Template(
                "The output of `{layer}` would not require grad (its parameters up to this layer are frozen); "
                "pytorch-grad-cam would skip its gradient hook.",
                "The spec's .model enables grad and makes its input require grad.",
            ),
            "grad_mode_off": Template(
                "The output of `{layer}` would not require grad (grad mode was off); pytorch-grad-cam would skip its "
                "gradient hook.",
                "The spec's .model enables grad and makes its input require grad.",
            ),
        },
    ),
    Code(
        "HD006", "nondeterministic-forward", _MODEL, "warning",
        "Two forward passes on the same input gave different scores, in eval mode.",
        """Something random runs at inference: ViTMAE's random masking (it shuffles tokens with
fresh noise even with mask_ratio=0 and in eval mode), dropout called as
`F.dropout(x, training=True)`, Monte-Carlo dropout, stochastic depth left on. Every
attribution map then changes from call to call, and the activations pytorch-grad-cam stores
belong to a different pass than the one you look at; for ViTMAE the token order no longer
matches the image grid.

Make the forward deterministic before explaining it: pass the masking noise explicitly
(ViTMAE: `noise=torch.arange(L).expand(B, L)`, `mask_ratio=0`), or use dropout modules
that respect `eval()`.""",
        templates={
            "default": Template(
                "The forward pass draws random numbers in eval mode (the global random number generator advanced): "
                "something random runs at inference, so every map changes from call to call.",
                "Make the forward deterministic (fixed masking noise, dropout that respects eval()) before "
                "explaining it; hookdoctor explain HD006.",
            ),
        },
    ),
    Code(
        "HD007", "shuffled-token-order", _MODEL, "warning",
        "The forward shuffles the image's tokens at random: layers after the shuffle do not follow the image.",
        """ViTMAE's random masking draws fresh noise on every call (in eval mode, and even with
`mask_ratio=0`), sorts it, and gathers the patch tokens in that order. Every layer after
the gather holds the patches in a different order on every call: a reshape to the patch
grid draws them in the wrong places, rollout mixes up patches, and maps change from call
to call. hookdoctor sees it as a forward that draws random numbers and an index-driven
gather computed from the image.

Keep the patch order: for ViTMAE pass sorted noise,
`model(pixel_values=x, noise=torch.arange(num_patches).expand(batch, -1))`, with
`config.mask_ratio = 0.0`; or explain a `ViTModel` loaded from the same weights. Layers
before the shuffle (the patch embedding) still work.""",
        # "default": found by inspect for the whole model; "rollout": found while judging rollout
        # (fields: model, the model's class name).
        templates={
            "default": Template(
                "The token order is shuffled: the forward draws random numbers and gathers the image's tokens by an "
                "index made from them (as ViTMAE's random masking does, even with mask_ratio=0), so every layer after "
                "the gather holds the patches in a new order on each call and no map from it follows the image.",
                "Keep the patch order: pass sorted noise (ViTMAE: model(pixel_values=x, noise=torch.arange(num_patches)"
                ".expand(batch, -1)) with config.mask_ratio=0.0), or explain a layer before the shuffle; hookdoctor "
                "explain HD007.",
            ),
            "rollout": Template(
                "{model} shuffles the image's tokens at random before its attention layers (a gather by an index drawn "
                "from random noise, as ViTMAE's masking does), so the rows of every attention matrix are patches in a "
                "new order on each call and a rollout reshaped to the patch grid puts them in the wrong places.",
                "Keep the patch order (ViTMAE: pass noise=torch.arange(num_patches).expand(batch, -1) with "
                "config.mask_ratio=0.0) and inspect again; hookdoctor explain HD007.",
            ),
        },
    ),
    Code(
        "HD010", "segmentation-score", _MODEL, "info",
        "A segmentation model: class k's score is its logits summed over the pixels predicted as k.",
        """A segmentation model returns a per-pixel class map `[B, K, H, W]` (torchvision FCN and
DeepLabV3 as `{"out": ...}`, Segformer as `ModelOutput.logits`, a UNet as a plain tensor).
pytorch-grad-cam takes the argmax of the model's output along its last axis and Captum needs
a `[B, N]` output for `target=`, so the raw model fails in both: pytorch-grad-cam cannot take
the `{"out": ...}` dict (or the argmax is a map of indices), and Captum's `target=k`
indexes a row of pixels.

The spec's `.model` returns `[B, K]`: column k is class k's logits summed over the pixels
predicted as k on the example input - the score of pytorch-grad-cam's
`SemanticSegmentationTarget(k, mask)` - so `ClassifierOutputTarget(k)` and Captum's
`target=k` explain class k's region. `report.target` is the class predicted on the most
pixels. The masks belong to the example input: inspect again for another image.""",
        applies="spec",
        # Fields (as for HD011, HD012, HD014): task, why (why this task was chosen), score (what the
        # explained score is).
        templates={
            "default": Template(
                _TASK,
                "Use spec.model and ClassifierOutputTarget(k) (or Captum's target=k) for class k; the masks are those "
                "of "
                "the example input, so inspect again for another image.",
            ),
        },
    ),
    Code(
        "HD011", "embedding-score", _MODEL, "info",
        "An embedding model: the score is the cosine similarity to a reference embedding.",
        """A model without class scores (timm `num_classes=0`, `global_pool=''` feature maps, CLIP's
`image_embeds`, a backbone's `pooler_output`) returns an embedding. Explaining its largest
dimension, as attribution libraries do by default with the argmax, explains a coordinate
that means nothing; explaining the similarity of the example to its own embedding gives a
constant 1 with zero gradient.

The spec's `.model` returns `[B, 1]`: the cosine similarity of the embedding (averaged over
positions when it is a feature map or a token sequence) to a reference embedding - the
score of pytorch-grad-cam's `SimilarityToConceptTarget`. Pass `reference=` (the embedding of
your concept, or of the image you compare to) to explain what you mean. Without one,
hookdoctor judges the layers with a fixed, seeded random direction (a warning): the layers
it recommends are the same, but the map explains no concept of yours. `report.target` is 0.""",
        applies="spec",
        # Fields: task, why, score. "default": no reference= was given (a warning: pass
        # severity="warning"); "reference": the user's reference embedding.
        templates={
            "default": Template(
                _TASK,
                "Pass reference= (the embedding of your concept or reference input) so that the map explains "
                "similarity "
                "to it; report.target is 0, the only column.",
            ),
            "reference": Template(
                _TASK, "Use spec.model and target 0: the map explains the similarity to your reference."
            ),
        },
    ),
    Code(
        "HD012", "detection-score", _MODEL, "info",
        "A detection model: each column is the class score of one detection of the example input.",
        """torchvision detectors (Faster R-CNN, RetinaNet, FCOS in eval mode) return a list of dicts
with `boxes`, `labels` and `scores`. Neither pytorch-grad-cam's default targets nor Captum
can index that; pytorch-grad-cam's tutorial writes a `FasterRCNNBoxScoreTarget` by hand.

The spec's `.model` returns `[B, N]`, one column per detection kept on the example input:
column k is the class score of the detection that matches example detection k (same label,
IoU above 0.5 - `FasterRCNNBoxScoreTarget`'s matching, without its IoU term, so the score is
the class score alone), and 0 when none matches. `ClassifierOutputTarget(k)` and Captum's
`target=k` explain detection k; `report.target` is 0, the top-scoring detection. The
detections belong to the example input: inspect again for another image.""",
        applies="spec",
        # Fields: task, why, score.
        templates={
            "default": Template(
                _TASK,
                "Use spec.model and ClassifierOutputTarget(k) for example detection k (report.target is the "
                "top-scoring "
                "one); the detections are those of the example input, so inspect again for another image.",
            ),
        },
    ),
    Code(
        "HD013", "no-detection", _MODEL, "error",
        "The detector kept no detection on the example input, so there is nothing to explain.",
        """A detector with random weights (hookdoctor builds models without weights unless asked),
or an input with nothing on it, scores every box below the model's threshold
(torchvision's `box_score_thresh`, 0.05 by default), and returns empty lists. There is no
detection whose score could be explained, and a map of "no detection" has no gradient.

Pass an example input on which the model detects something (a real image, trained
weights: `--pretrained`), or build the model with a lower threshold
(`fasterrcnn_mobilenet_v3_large_fpn(..., box_score_thresh=0.0)`) to judge its layers.""",
        # "default": nothing detected; "no_gradient": detections whose scores carry no gradient.
        templates={
            "default": Template(
                "The detector kept no detection on the example input (every box scored below its threshold), so "
                "there is no detection whose score could be explained.",
                "Pass an example input on which the model detects something (a real image and trained weights), or "
                "build the model with a lower box_score_thresh (torchvision: box_score_thresh=0.0).",
            ),
            "no_gradient": Template(
                "The detector's scores carry no gradient, so no layer's map can be computed from them.",
                "Run the detector with gradients enabled (no torch.no_grad around its heads) and explain its "
                "classification scores.",
            ),
        },
    ),
    Code(
        "HD014", "image-text-logits", _MODEL, "info",
        "An image-text model: the image-text logits (logits_per_image) are explained.",
        """CLIP-style models (`transformers.CLIPModel`, SigLIP) return both towers' embeddings and
their similarity: `logits_per_image` `[images, texts]`. The embeddings are not scores: their
largest dimension means nothing, yet a plain "first 2-D tensor" rule picks one of them.

hookdoctor explains `logits_per_image`: column k is the image's logit against text k, so
`ClassifierOutputTarget(k)` and Captum's `target=k` explain which image regions match text
k. Give the texts as `input_ids` (and `attention_mask`) beside `pixel_values` in a dict
example input; `explain=` names the entry the map covers (by default the only
floating-point image). Without an example input, hookdoctor builds two fixed token
sequences to judge the layers with.""",
        applies="spec",
        # Fields: task, why, score.
        templates={
            "default": Template(
                _TASK,
                "Use spec.model and ClassifierOutputTarget(k) for text k; pass the texts you want as input_ids in the "
                "example input (explain= names the image entry).",
            ),
        },
    ),
    Code(
        "HD015", "three-dimensional-input", _LAYOUT, "info",
        "A 3-D input (spectrogram or signal): pytorch-grad-cam needs it as a 4-D view.",
        """pytorch-grad-cam 1.5.7 sizes its map from a 4-D (`[B, C, H, W]`) or 5-D input and raises
"Invalid input_tensor shape. Only 2D or 3D images are supported." for a spectrogram
`[B, T, F]` (AST) or a signal `[B, C, L]` (a 1-D CNN); its Grad-CAM also takes only 4-D and
5-D activations, so a 1-D convolution's `[B, C, L]` fails ("Invalid grads shape").

`spec.as_backend_input(x)` returns the 4-D view (`[B, 1, T, F]`, `[B, C, 1, L]`); the spec's
`.model` drops that axis again before calling the model, and its `reshape_transform` shows a
`[B, C, L]` layer as `[B, C, 1, L]`. Captum takes `x` itself: `spec.captum().attribute(x,
target=...)` is `[B, 1, *spec.grid]`.""",
        applies="spec",
        # One variant per 3-D input kind.
        templates={
            "spectrogram": _three_d("spectrogram", "[B, T, F]", "[B, 1, T, F]"),
            "signal": _three_d("signal", "[B, C, L]", "[B, C, 1, L]"),
        },
    ),
    Code(
        "HD101", "unknown-layer", _NAMING, "error",
        "No module has exactly this name.",
        """hookdoctor looks layers up by their exact dotted name, as `model.named_modules()` spells
it. Substring or prefix matching (`'layer3' in name`, `startswith('blocks.1')`) selects
several modules at once (`blocks.1`, `blocks.10`, `blocks.11`) and pytorch-grad-cam
silently averages their maps.

Library updates rename modules: transformers 5 moved `vit.encoder.layer.N` to
`vit.layers.N`; a hard-coded recipe then hooks nothing. Use one of the suggested names, or
let hookdoctor recommend a layer.""",
        # Fields: layer, the name asked for; matches ("close_matches"), the close names, each in backticks.
        templates={
            "default": Template(
                "No module is named exactly `{layer}`.",
                "Use the exact dotted name from model.named_modules(); hookdoctor never matches substrings.",
            ),
            "close_matches": Template(
                "No module is named exactly `{layer}`. Close matches: {matches}.",
                "Use the exact dotted name from model.named_modules(); hookdoctor never matches substrings.",
            ),
        },
    ),
    Code(
        "HD102", "never-called", _SITE, "error",
        "The module exists but never ran during the forward pass.",
        """A hook on a module that the forward pass does not call never fires: pytorch-grad-cam
then fails with "'NoneType' object has no attribute 'shape'", Captum with "Forward hook
did not obtain any outputs". This happens with heads used only in training, branches
switched off by the configuration, and modules built but left unused.

Choose a module that runs: the report lists every module with its call count.""",
        # "default": a module that never runs; "container": a ModuleList/ModuleDict (kind: its class
        # name). For one call NAME#k of a module (module, index = k): "call_never_runs" when the
        # module never runs, "call_after_only_one" when it runs once, "call_after_last" when it runs
        # `calls` times (last = calls - 1).
        templates={
            "default": Template(
                "`{layer}` never runs in the forward pass, so a hook on it never fires.",
                _CHOOSE_A_RUNNING_MODULE,
            ),
            "container": Template(
                "`{layer}` is a {kind}: it holds modules but never runs itself, so a hook on it never fires.",
                "Hook one of its entries (`{layer}.0` ... ) or a layer inside one.",
            ),
            "call_never_runs": Template(
                "`{module}` never runs per forward pass, so its call {index} never happens and a hook on it would "
                "never fire.",
                _CHOOSE_A_RUNNING_MODULE,
            ),
            "call_after_only_one": Template(
                "`{module}` runs once per forward pass, so its call {index} never happens and a hook on it would "
                "never fire.",
                "Name a call that happens (`{module}#0`); calls count from 0 in execution order.",
            ),
            "call_after_last": Template(
                "`{module}` runs {calls} times per forward pass, so its call {index} never happens and a hook on it "
                "would never fire.",
                "Name a call that happens (`{module}#0` to `{module}#{last}`); calls count from 0 in execution order.",
            ),
        },
    ),
    Code(
        "HD103", "called-several-times", _SITE, "error",
        "The module runs more than once per forward pass, so its hooks fire on every call.",
        """torchvision's `BasicBlock` calls `self.relu` twice; shared encoders and siamese
networks call the same module on several inputs. pytorch-grad-cam keeps the first call,
Captum and torchcam the last, and the map of one call is stretched over the whole image.

Hook a module that runs once, such as the block that contains the reused module. Where
the call you mean has no such module (the query branch of a siamese encoder, the last step
of a recurrent block, one stage of a weight-tied decoder), name the call: `NAME#k` is call
k of NAME, counting from 0 (`--layer enc#1`, `inspect(..., layer="enc#1")`,
`report.check_layer("enc#1")`). Its spec has `call_index == k`; its `.model` routes that
call's output alone through an identity module, which is its `.layer`, so pytorch-grad-cam
and Captum hook exactly that call, and `spec.code()` writes the routing out. hookdoctor
recommends such a spec itself when the best layer runs several times, and says which call
and why (for a two-view model: the call that sees the explained input).""",
        # "default" (error): a module judged as a whole that runs `calls` times (last = calls - 1).
        # "per_call" (info, with severity="info"): one call NAME#k is recommended (module, calls,
        # index = k); "per_call_chosen" adds why that call was chosen (why).
        templates={
            "default": Template(
                "`{layer}` runs {calls} times per forward pass; pytorch-grad-cam would use the first call and Captum "
                "the last.",
                "Hook a module that runs once, such as the block that contains it, or one call of it: `{layer}#k` "
                "(k from 0 to {last}) gives a spec that routes that call alone.",
            ),
            "per_call": Template(
                "`{module}` runs {calls} times per forward pass and a hook on it fires on every call "
                "(pytorch-grad-cam keeps the first, Captum the last).",
                _ROUTES_ONE_CALL,
            ),
            "per_call_chosen": Template(
                "`{module}` runs {calls} times per forward pass and a hook on it fires on every call "
                "(pytorch-grad-cam keeps the first, Captum the last); the spec explains call {index}: {why}.",
                _ROUTES_ONE_CALL,
            ),
        },
    ),
    Code(
        "HD104", "tuple-output", _SITE, "error",
        "The module returns a tuple, so hooks receive a tuple instead of a tensor.",
        """Hugging Face `SwinLayer`, attention modules and many transformer blocks return
`(hidden_states, attentions, ...)`. pytorch-grad-cam fails with "'tuple' object has no
attribute 'cpu'"; a reshape that unpacks element 0 gets activations but the gradient
hook is skipped silently; Captum raises "Given input is not a torch.Tensor".

Hook the tensor-producing module inside it (for example its last norm) or a following
layer whose output is a plain tensor.""",
        # Fields: structure, what the layer returns (e.g. "tuple(Tensor[1, 197, 768], None)").
        templates={
            "default": Template(
                "`{layer}` returns {structure}, not a tensor; pytorch-grad-cam fails on it and its gradient hook "
                "would be skipped.",
                "Hook the tensor-producing module inside it, or the next module whose output is a plain tensor.",
            ),
        },
    ),
    Code(
        "HD105", "overwritten-in-place", _SITE, "error",
        "A later in-place operation overwrites this module's output.",
        """`out += identity` or a `ReLU(inplace=True)` after the layer rewrites the very tensor the
hook stored. On CPU, pytorch-grad-cam's `.cpu().detach()` is an alias, so the activation
it uses is the post-in-place one while the gradient belongs to the pre-in-place value: the
map looks plausible and is wrong (correlation 0.78 on resnet18's `bn2`). torchcam aliases
on every device.

Hook a module whose output is not modified in place, typically the enclosing block.""",
        templates={
            "default": Template(
                "A later in-place operation rewrites the output of `{layer}`, so the stored activation is not the one "
                "the gradient belongs to.",
                "Hook a module whose output is not modified in place, such as the enclosing block.",
            ),
        },
    ),
    Code(
        "HD201", "no-gradient-to-patches", _GRAD, "error",
        "No gradient reaches the image tokens of this layer: the score reads only the prefix tokens after it.",
        """In a ViT whose classifier reads only the CLS token, everything after the last attention
step works on the CLS token alone: the gradient of the score with respect to every patch
token of the last block's output (or of the final norm) is exactly zero, so Grad-CAM there
is all zeros (IoU 0, Pearson NaN). This is not an architecture incompatibility.

Hook a layer before the last token-mixing step: the last block's first norm (timm
`blocks[-1].norm1`, Hugging Face `layers[-1].layernorm_before`, torchvision
`encoder.layers[-1].ln_1`). A ViT that averages its patch tokens is fine at the block
output.""",
        # Fields: grid ("14x14"), layers (the layers named, each in backticks, joined by " and "),
        # them ("it" for one layer, "them" for several); picks (the pick operations on the score's
        # path, "picked*" variants); spec_layer (the layer the spec uses instead, "*instead" variants,
        # for the dead layers listed up front).
        templates={
            "default": _cut_off(),
            "picked": _cut_off(via=_PICKS),
            "instead": _cut_off(instead=_INSTEAD),
            "picked_instead": _cut_off(via=_PICKS, instead=_INSTEAD),
        },
    ),
    Code(
        "HD202", "not-on-score-path", _GRAD, "error",
        "The module runs, but the score does not depend on its output.",
        """An auxiliary head, a branch whose result is discarded, or a tensor detached on the way
to the logits: the hook fires but no gradient arrives. pytorch-grad-cam fails with
"'NoneType' object has no attribute 'shape'", torchcam says "not connected".

Hook a layer on the path from the input to the explained score.""",
        # "no_grad_mode": the layer runs under no_grad/inference_mode; "not_used": the score does not
        # depend on its output; "zero_gradient": the score's gradient at it is zero everywhere.
        templates={
            "no_grad_mode": Template(
                "`{layer}` runs with gradients disabled inside the model's forward (torch.no_grad or inference_mode), "
                "so no gradient can reach it.",
                "Remove the no_grad / inference_mode around this part of the model's forward.",
            ),
            "not_used": Template(
                "`{layer}` runs, but the explained score does not depend on its output.",
                _HOOK_ON_THE_PATH,
            ),
            "zero_gradient": Template(
                "The explained score's gradient at `{layer}` is zero everywhere.",
                _HOOK_ON_THE_PATH,
            ),
        },
    ),
    Code(
        "HD203", "no-working-layer", _GRAD, "error",
        "No layer of this model gives a working Grad-CAM map on the example input.",
        """The candidates are the layers outside the attention internals that run once (or one
call of a shared module), return a plain tensor laid out over the image and receive
gradient from the score. hookdoctor searched all of them, latest first, each output tensor
once: the cheap check first (the Grad-CAM map from the probe's own gradients must be
finite and not constant), then the locality test (the input gradient of a probe cell must
peak at that cell). None passed both. The finding names the candidates tried and why each
failed; layers that failed an earlier check (never ran, ran several times, a tuple, no
gradient, no grid) were not candidates, and the layer table shows their codes.

Check the findings for the layers you expected to work; if the model's score does not
depend on the image (a zero head, a constant output), fix that first.""",
        # "no_score_gradient": the score itself carries none; "input_gradient_zero": the score does not
        # depend on the image; "nothing_works": no candidate layer; "nothing_works_tried": count
        # candidates tried, tried (the first few as "`name` (why, CODE)", "; "-joined, then ", and N
        # more" when some are left out).
        templates={
            "no_score_gradient": Template(
                "The model's score carries no gradient: its forward computes it with gradients disabled "
                "(torch.no_grad / inference_mode) or detaches it.",
                "Remove the no_grad, inference_mode or .detach() from the model's forward path to the score.",
            ),
            "input_gradient_zero": Template(
                "The explained score has no gradient with respect to the input image: the forward does not use the "
                "image, or runs the path from it under torch.no_grad / torch.inference_mode, or detaches it.",
                "Check the model's head and weights (a constant score has nothing to explain), and remove the no_grad, "
                "inference_mode or .detach() between the image and the score.",
            ),
            "nothing_works": Template(
                "No layer gives a working Grad-CAM map on this input: no layer runs once, returns a plain tensor laid "
                "out over the image, receives gradient from the score and lies outside the attention internals (the "
                "layer table says which check each one fails).",
                _READ_THE_LAYER_FINDINGS,
            ),
            "nothing_works_tried": Template(
                "No layer gives a working Grad-CAM map on this input. Tried every candidate ({count}), latest first: "
                "{tried}.",
                _READ_THE_LAYER_FINDINGS,
            ),
        },
    ),
    Code(
        "HD204", "negative-evidence-only", _GRAD, "warning",
        "At this layer the explained class has only negative evidence: Grad-CAM's ReLU leaves nothing.",
        """Grad-CAM keeps the positive part of `sum_c w_c A_c`. When every cell of that sum is
negative for the explained class - a class the model scores low, a single-logit binary
model explained as "class 0", or random weights - the map is exactly zero after the ReLU,
and pytorch-grad-cam shows a black image. The layer itself is fine.

Explain the class the model predicts, explain the negative score
(`BinaryClassifierOutputTarget(0)` for a single-logit model), or look at the signed map
(Captum: `relu_attributions=False`). hookdoctor recommends the next layer whose map is
not empty for this class and says so.""",
        # Fields: target (the class explained); spec_layer ("instead": the layer the spec uses).
        templates={
            "default": Template(
                "Grad-CAM at `{layer}` is all zeros for class {target}: the layer holds only negative evidence for it.",
                _NEGATIVE_EVIDENCE_FIX,
            ),
            "instead": Template(
                "Grad-CAM at `{layer}` is all zeros for class {target}: the layer holds only negative evidence for it; "
                "the spec uses `{spec_layer}` instead.",
                _NEGATIVE_EVIDENCE_FIX,
            ),
        },
    ),
    Code(
        "HD205", "no-second-order-gradient", _GRAD, "error",
        "ShapleyCAM needs the second derivative of the score at the layer, and this model has none.",
        """ShapleyCAM weighs each channel by its gradient minus half a Hessian-vector product:
it differentiates the layer's gradient once more. Every operation between the layer and
the score then needs a double backward. Custom autograd functions marked
`@once_differentiable` (fused CUDA kernels, deformable convolution and attention, many
memory-efficient activations) do not have one, and pytorch-grad-cam fails with "trying
to differentiate twice a function that was marked with @once_differentiable" or
"derivative for ... is not implemented".

Fused scaled-dot-product attention is not one of these cases: its CPU flash kernel has no
double backward, but the math kernel has, and the spec's ShapleyCAM kwargs run the model
under `sdpa_kernel(SDPBackend.MATH)`. hookdoctor checks the second derivative once on an
input of the example's shape before it hands out ShapleyCAM kwargs.

Use a first-order method on this layer (GradCAM, HiResCAM, GradCAMElementWise), hook a
layer after that operation, or replace it by one with a double backward (torchvision's
`deform_conv2d`, for example, has none).""",
        # Fields: failure, the operation whose double backward failed. Raised as MethodUnsupportedError
        # (message and fix in one sentence) by ShapleyCAM's kwargs.
        templates={
            "default": Template(
                "ShapleyCAM cannot run on `{layer}`: it needs the second derivative of the score at this layer, and "
                "the "
                "model's backward is not differentiable again ({failure}).",
                "Use GradCAM, HiResCAM or GradCAMElementWise, which need first-order gradients only, hook a layer "
                "after "
                "that operation, or replace it by one with a double backward; hookdoctor explain HD205.",
            ),
        },
    ),
    Code(
        "HD301", "token-layout", _LAYOUT, "info",
        "The layer's output is a token sequence [B, T, C], which needs a reshape to [B, C, H, W].",
        """Grad-CAM needs channels in dim 1 and the image grid in dims 2 and 3. Given
`[B, T, C]`, pytorch-grad-cam raises "Invalid grads shape", while torchcam and Captum
silently treat tokens as channels and return a one-dimensional "map" over the embedding.

The spec's `reshape_transform` drops the prefix tokens, reshapes the rest to the (H, W)
grid and permutes to `[B, C, H, W]`; `spec.captum()` applies the same view for Captum.""",
        applies="spec",
        # Fields: prefix (prefix tokens), cells (h * w), channels, h, w.
        templates={
            "default": Template(
                "`{layer}` outputs tokens [B, {prefix}+{cells}, {channels}], not a [B, C, H, W] map.",
                "The spec's reshape_transform drops {prefix} prefix token(s), reshapes to {h}x{w} and permutes to "
                "[B, C, H, W].",
            ),
        },
    ),
    Code(
        "HD302", "prefix-tokens", _LAYOUT, "info",
        "The sequence starts with several non-patch tokens (CLS, distillation, registers).",
        """`vit_reshape_transform` and most tutorials drop exactly one token. DeiT-distilled has
two prefix tokens (CLS and distillation); DINOv2 with registers has 1 + 4. A wrong count
either fails to reshape or, when the counts happen to match a grid, scrambles the map
silently.

The spec drops the number of prefix tokens found in the model (`num_prefix_tokens`, its
token parameters, the configuration) and confirmed by a locality probe.""",
        applies="spec",
        # Fields: prefix (prefix tokens).
        templates={
            "default": Template(
                "`{layer}` has {prefix} prefix tokens (CLS plus distillation or register tokens), not one.",
                "The spec drops exactly {prefix} tokens before reshaping.",
            ),
        },
    ),
    Code(
        "HD303", "non-square-grid", _LAYOUT, "info",
        "The map's grid is not square; height comes first.",
        """Reshape helpers that assume a square grid (`int(sqrt(T))`, a fixed 14 x 14) fail on a
non-square input, or - worse - reshape a 4 x 8 grid as 8 x 4 without error (correlation
0.48 with the correct map).

The spec's grid is (H, W) from the input size and the layer's stride, height first.""",
        applies="spec",
        # Fields: h, w.
        templates={
            "default": Template(
                "The map of `{layer}` is {h}x{w} (height x width), not square.",
                "The spec reshapes to ({h}, {w}), height first.",
            ),
        },
    ),
    Code(
        "HD304", "channels-last", _LAYOUT, "info",
        "The layer's output is channels-last [B, H, W, C].",
        """timm Swin (since 0.9), torchvision Swin `features` and ConvNeXt block internals keep
activations as `[B, H, W, C]`. Every attribution library takes any 4-D tensor as
`[B, C, H, W]`: H becomes the channels and the map is drawn over (W, C), plausible and
wrong (correlation 0.0 with the right map). The `channels_last` memory format alone is
harmless.

The spec's `reshape_transform` permutes the output to `[B, C, H, W]`.""",
        applies="spec",
        # Fields: h, w, channels.
        templates={
            "default": Template(
                "`{layer}` outputs channels-last [B, {h}, {w}, {channels}]; every library would read {h} as the "
                "channel count.",
                "The spec's reshape_transform permutes it to [B, C, H, W].",
            ),
        },
    ),
    Code(
        "HD305", "no-spatial-extent", _LAYOUT, "error",
        "The layer's output has no spatial grid (it comes after global pooling, or is a vector).",
        """A `[B, C, 1, 1]` or `[B, C]` tensor has a single location: min-max normalisation turns
the map into zeros (pytorch-grad-cam, torchcam) or one constant (Captum).

Hook the last layer before the pooling.""",
        # Fields: structure, what the layer outputs.
        templates={
            "default": Template(
                "`{layer}` outputs {structure}, which has no spatial grid to draw a map on.",
                "Hook the last layer before global pooling.",
            ),
        },
    ),
    Code(
        "HD306", "not-image-aligned", _LAYOUT, "error",
        "The layer's output cannot be laid out as a grid over the input image.",
        """Grad-CAM draws one value per spatial cell of the layer. A tensor whose dimensions do
not follow the input's geometry - attention scores `[B, heads, T, T]`, windows of a Swin
block, a resampled grid, a positional bias - gives a map that does not line up with the
image. A tensor of the right size can fail too: tokens in another order than image rows
(Hiera's mask units, shuffled tokens), a mirrored map, or two views summed. hookdoctor
checks every usable layer the same way for `check_layer`, `inspect(layer=...)` and the
recommendation: the input gradient of a probe cell must peak at that cell.

Hook a layer whose output is a grid (or a token sequence in raster order) that follows the
image.""",
        # "default": the output's dimensions follow no geometry of the input (structure, input: "224x224");
        # "not_from_image": the output needs no gradient; "other_input": call `index` of `module`
        # processes another input; "misaligned": the locality probe failed (layout, as described).
        templates={
            "default": Template(
                "`{layer}` outputs {structure}, whose dimensions do not follow the {input} input's geometry.",
                "Hook a layer whose output is a grid or a token sequence over the image.",
            ),
            "not_from_image": Template(
                "`{layer}` does not depend on the input image (its output needs no gradient even when the image does).",
                "Hook a layer computed from the image.",
            ),
            "other_input": Template(
                "Call {index} of `{module}` does not see the explained input: its output is not computed from it (it "
                "processes another input, such as the other view of a siamese model).",
                "Name the call of `{module}` that processes the explained input, or explain the other input.",
            ),
            "misaligned": Template(
                "The cells of `{layer}` ({layout}) do not line up with the input: the input gradient of a probe cell "
                "peaks elsewhere, so a map from it would be drawn in the wrong places (its tokens may be in another "
                "order than rows of the image: mask units, windows, or shuffled).",
                "Hook a layer whose cells follow the image in raster order, or pass the model's prefix-token count and "
                "grid if they are unusual.",
            ),
        },
    ),
    Code(
        "HD307", "coarse-alignment", _LAYOUT, "warning",
        "The layer's cells keep the image's order, but each one looks at much of the image.",
        """hookdoctor confirms that a layer's cells line up with the input. Where the autograd graph
shows which input position each cell holds, that settles it. Elsewhere it checks that the
input gradient of a corner cell peaks at that cell, and in some models it does not: a
layer that mixes tokens over a wide neighbourhood, in a way the graph cannot follow,
pulls every peak towards the centre. The cells still keep the image's order - no mirror,
no transposed grid - so the spec is handed out, but its map is coarser than the grid
suggests.

Prefer an earlier layer if you need sharp maps (`--layer`), or check the map on a batch
of two inputs.""",
        templates={
            "default": Template(
                "The cells of `{layer}` keep the image's order, but their input gradients peak more than a cell away "
                "from them: each cell looks at much of the image, so the map is coarse.",
                "Prefer an earlier layer for a sharper map (--layer), or check the map on a batch of two inputs.",
            ),
        },
    ),
    Code(
        "HD308", "grid-too-small-for-fem", _LAYOUT, "error",
        "FEM's k-sigma rule cannot keep any cell of a grid this small, so its map is all zeros.",
        """FEM (pytorch-grad-cam's `FEM`, default `k=2`) keeps, in each channel, the cells whose
activation exceeds the channel's mean by k standard deviations over the grid. On a grid
of n cells no value can exceed the mean by more than sqrt(n - 1) standard deviations (one
cell high, the others equal), so with n <= k^2 + 1 - a 2x2 grid, the last stage of a
ResNet on a small input - every channel is empty and FEM returns zeros, without an error.

Use a layer with a finer grid (an earlier layer, or a larger input: the grid grows with
it), pass a smaller `k` yourself, or use another method of the family on this layer.""",
        # Fields: k (FEM's k), cells, h, w, bound (sqrt(cells - 1)), needed (the fewest cells that work).
        # Raised as MethodUnsupportedError (message and fix in one sentence) by FEM's kwargs.
        templates={
            "default": Template(
                "FEM cannot give a map at `{layer}`: it keeps the cells whose activation exceeds the channel's mean by "
                "{k:g} standard deviations, and on a grid of {cells} cells ({h}x{w}) no cell can (at most "
                "sqrt({cells} - 1) = {bound:.2f}), so the map is all zeros.",
                "Use a layer with at least {needed} cells (an earlier layer, or a larger input), another method, or a "
                "smaller k with the plain kwargs (`FEM(**spec.pytorch_grad_cam_kwargs(), k=1)`); hookdoctor explain "
                "HD308.",
            ),
        },
    ),
    Code(
        "HD401", "several-target-layers", _NAMING, "warning",
        "Several target layers were given; their maps would be paired with each other's tensors.",
        """pytorch-grad-cam keeps activations and gradients in two plain lists and pairs them
with `target_layers` by position. A layer called twice, or one whose gradient does not
arrive, shifts the pairing and a layer's map is built from another layer's tensors.

Use one spec per layer; hookdoctor judges each named layer on its own.""",
        # Fields: count, how many layers were named.
        templates={
            "default": Template(
                "{count} target layers were named; pytorch-grad-cam would pair their maps by position.",
                "Use one spec per layer: each named layer is judged on its own below.",
            ),
        },
    ),
)
