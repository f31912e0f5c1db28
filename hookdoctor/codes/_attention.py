"""Codes for attention capture and rollout (HD5xx)."""

from __future__ import annotations

from hookdoctor.codes._code import Code, Template

_ATTN = "attention"

# Sentences that several variants of a code share.
_SDPA_CONFIG = (
    "{layer}{more} run torch's scaled_dot_product_attention (config._attn_implementation={implementation!r}), "
    "which never materialises the attention probabilities, so "
)
_SDPA_CONFIG_FIX = (
    "Nothing to change: the spec captures the probabilities by computing softmax(q·kᵀ·scale + mask) beside each "
    "scaled_dot_product_attention call, leaving the model's outputs unchanged; for your own code, {switch} makes "
    "output_attentions work."
)
_NOT_ONE_MATRIX = "Rollout multiplies one T x T attention matrix per layer, but in {model} "
_RAW_ATTENTION_INSTEAD = "Use Grad-CAM, or raw attention of a single layer via hookdoctor.attention.capture_attention."

CODES = (
    Code(
        "HD501", "fused-attention-hides-probabilities", _ATTN, "info",
        "The attention runs through a fused kernel, so its probabilities are never materialised.",
        """transformers 5.x and recent 4.x default to `sdpa`, timm to `fused_attn=True`; both call
`torch.nn.functional.scaled_dot_product_attention`, which returns only the attended
values. `output_attentions=True` then gives an empty tuple (transformers 5) or `None`
(4.x, for the tuple or per layer; 4.x BEiT re-runs that call eager instead), hooks on
`attn_drop` fire zero times, and rollout over an empty list is all zeros or NaN - often
with no warning (SigLIP never warns, transformers warns once per process).

The spec captures the probabilities without switching the implementation: it watches each
`scaled_dot_product_attention` call and computes `softmax(q k^T * scale + mask)` beside it,
so the model's outputs stay exactly what they were.""",
        applies="spec",
        # Fields: layer (the first fused site), more (" and N more" when there are others, else "").
        # "sdpa_config": a transformers model whose config selects SDPA (implementation, its value;
        # switch, how to select eager in the installed version), "sdpa_config_4x" the same under
        # transformers 4.x; "fused_attn": timm modules with fused_attn=True; "default": any other.
        templates={
            "sdpa_config": Template(
                _SDPA_CONFIG + "output_attentions=True returns an empty tuple () and a rollout over it is all zeros or "
                "NaN.",
                _SDPA_CONFIG_FIX,
            ),
            "sdpa_config_4x": Template(
                _SDPA_CONFIG + "output_attentions=True returns None in their place (a few 4.x models, such as BEiT, "
                "re-run "
                "that call eager instead) and a rollout over it fails or is all zeros.",
                _SDPA_CONFIG_FIX,
            ),
            "fused_attn": Template(
                "{layer}{more} have fused_attn=True and call scaled_dot_product_attention, which never materialises "
                "the "
                "probabilities, so forward hooks on attn_drop fire zero times and a rollout over what they collect is "
                "empty.",
                "Nothing to change: the spec computes softmax(q·kᵀ·scale + mask) beside each call; for your own hooks "
                "set m.fused_attn = False on every attention module (timm.layers.set_fused_attn only affects models "
                "built afterwards).",
            ),
            "default": Template(
                "{layer}{more} compute attention with scaled_dot_product_attention, which never materialises the "
                "probabilities, so hooks cannot read them.",
                "Nothing to change: the spec computes softmax(q·kᵀ·scale + mask) beside each call.",
            ),
        },
    ),
    Code(
        "HD502", "attention-weights-not-returned", _ATTN, "info",
        "nn.MultiheadAttention is called with need_weights=False, so it returns no weights.",
        """torchvision's `EncoderBlock` calls `self_attention(x, x, x, need_weights=False)`: the
weights slot of the output is `None`. With `need_weights=True` the default
`average_attn_weights=True` averages the heads into `[B, T, T]`.

The spec's capture forces `need_weights=True, average_attn_weights=False` for the duration
of the call only, and reads `[B, heads, T, T]`.""",
        applies="spec",
        # Fields: more (" and N more" when there are others, else "").
        templates={
            "default": Template(
                "{layer}{more} (nn.MultiheadAttention) are called with need_weights=False, so a hook on them gets None "
                "instead of attention weights (need_weights=True alone averages the heads).",
                "Nothing to change: the spec's capture asks for need_weights=True, average_attn_weights=False for the "
                "duration of its own call only.",
            ),
        },
    ),
    Code(
        "HD503", "attention-setting-misleads", _ATTN, "warning",
        "A setting looks as if it enabled attention output, but the module still runs fused.",
        """`config.attn_implementation = "eager"` (no underscore) and `Config(output_attentions=True)`
change nothing in transformers; `timm.layers.set_fused_attn(False)` after the model was
built changes nothing either, because each module copied the flag at construction. The
effective setting is the one each attention module uses at call time, which hookdoctor
reads module by module.

Nothing to do for the spec (it captures either way); to switch for your own code, set
`model.set_attn_implementation("eager")` (transformers; before it existed, load with
`from_pretrained(..., attn_implementation="eager")`) or `m.fused_attn = False` on every
timm attention module.""",
        # Fields: claims (the settings found, "; "-joined), more (" and N more" or ""), switch (how to
        # select eager attention in the installed transformers).
        templates={
            "default": Template(
                "{claims} suggests eager attention, but {layer}{more} still run fused scaled_dot_product_attention "
                "when "
                "called.",
                "Trust the effective setting: the spec captures either way; to switch for your own code use {switch} "
                "(transformers) or m.fused_attn = False on each timm attention module.",
            ),
        },
    ),
    Code(
        "HD504", "no-class-token-query", _ATTN, "info",
        "The head does not read a CLS token; rollout takes its query from the pooling instead.",
        """Rollout reads the row of the token the classifier looks at. A ViT with global average
pooling, BEiT's mean pooling or a SigLIP attention-pool head has no such token: row 0 is a
patch, and the map explains that patch.

The spec takes the query from what the head reads: the mean over patch rows for average
pooling, the pooling attention for an attention-pool head.""",
        applies="spec",
        # Fields: model (class name); pool ("pool": the attention-pooling module). "mean": the head
        # averages the patch tokens.
        templates={
            "mean": Template(
                "The head of {model} reads the mean of the patch tokens, not a CLS token, so rollout row 0 would "
                "explain a patch or an unused token.",
                "Nothing to change: the spec takes the rollout query from the mean of the patch tokens.",
            ),
            "pool": Template(
                "The head of {model} reads the attention-pooling head {pool}, not a CLS token, so rollout row 0 would "
                "explain a patch or an unused token.",
                "Nothing to change: the spec takes the rollout query from the attention-pooling head {pool}.",
            ),
        },
    ),
    Code(
        "HD505", "prefix-tokens-in-attention", _ATTN, "info",
        "The sequence has several non-patch tokens (CLS, distillation, registers).",
        """Rollout code that slices `[0, 1:]` and reshapes to a square keeps the distillation
token or the registers in the map, or fails to reshape.

The spec removes the number of prefix tokens found in the model before reshaping to the
(H, W) grid of the input.""",
        applies="spec",
        # Fields: prefix (prefix tokens), grid ("14x14"), kept (prefix - 1).
        templates={
            "default": Template(
                "The attention of {layer} runs over {prefix} prefix tokens (CLS, distillation or registers) before the "
                "{grid} patch grid, so slicing [1:] would keep {kept} of them.",
                "Nothing to change: the spec removes {prefix} prefix tokens before reshaping.",
            ),
        },
    ),
    Code(
        "HD506", "window-attention", _ATTN, "error",
        "The model attends within local windows (Swin); rollout over the whole image is meaningless.",
        """Window attention mixes tokens only inside each window (and shifted windows), and the
token count changes from stage to stage when patches are merged: there is no single
T x T matrix per layer to multiply. transformers returns one tensor per stage, and the
products people compute from them do not describe the image.

Use Grad-CAM (hookdoctor recommends a layer) or a method meant for hierarchical models.""",
        # Fields: more (" and N more" or ""), windows (windows per call), tokens (per window), batch.
        templates={
            "default": Template(
                "{layer}{more} attend within local windows ({windows} windows of {tokens} tokens for a batch of "
                "{batch}), so there is no image-wide token-to-token matrix to roll out.",
                "Use Grad-CAM (hookdoctor recommends a layer), or look at per-window attention maps only.",
            ),
        },
    ),
    Code(
        "HD507", "channel-attention", _ATTN, "error",
        "The model's softmax runs over channels, not over tokens; there is no token-to-token map.",
        """XCiT's cross-covariance attention and DaViT's channel attention compute a softmax over
a `[heads, d, d]` matrix of feature channels. Hooks named `attn.softmax` capture it, and
rollout over it produces a matrix that has nothing to do with image positions.

Use Grad-CAM, or rollout over the model's token-attention blocks only where it has them.""",
        # Fields: more (" and N more" or ""), channels (the softmax matrix's side).
        templates={
            "default": Template(
                "{layer}{more} apply softmax over a {channels}x{channels} matrix of feature channels, not over image "
                "tokens, so rollout through them does not describe image positions.",
                "Use Grad-CAM on this model; attention rollout needs token-to-token attention in every block.",
            ),
        },
    ),
    Code(
        "HD508", "no-attention", _ATTN, "error",
        "The model computes no token-to-token attention; there is nothing to roll out.",
        """CNNs, ConvNeXt and MLP-Mixer mix spatial positions with convolutions or MLPs. Attention
rollout needs per-layer attention probabilities; a generic matcher either finds nothing
(an empty list, and a rollout of zeros) or hooks unrelated modules.

Use Grad-CAM: hookdoctor recommends a layer for this model.""",
        # Fields: model (class name).
        templates={
            "default": Template(
                "{model} computes no token-to-token attention (no scaled_dot_product_attention, attention softmax or "
                "nn.MultiheadAttention ran in its forward), so there is nothing to roll out.",
                "Use Grad-CAM on this model (methods=('gradcam',)); hookdoctor recommends a layer for it.",
            ),
        },
    ),
    Code(
        "HD509", "train-mode", _ATTN, "info",
        "The model is in training mode: attention dropout would change the probabilities.",
        """In `train()` mode attention dropout zeroes and rescales entries, so captured rows sum
to anything between 0.7 and 1.1 and differ from call to call.

The spec's capture runs the model in eval mode and restores the mode afterwards.""",
        applies="spec",
        # Fields: model (class name).
        templates={
            "default": Template(
                "{model} is in training mode: attention dropout would make captured rows sum to anything but 1.",
                "Nothing to change: the spec's capture runs in eval mode and restores the mode afterwards.",
            ),
        },
    ),
    Code(
        "HD510", "attention-off-gradient-path", _ATTN, "warning",
        "The captured attention is not on the gradient path; gradient-weighted rollout cannot use it.",
        """`nn.MultiheadAttention` returns a copy of its weights computed beside the value
product, so `autograd.grad(score, weights)` fails with "appears to not have been used in
the graph". Chefer-style or LeGrad methods need the attention that feeds `A @ V`.

Plain rollout works, and so does `spec.gradient_rollout(model, x)`: for the duration of
one forward it recomputes the layer's output as `out_proj(A @ V)` from the per-head
weights (the same values), which puts `A` on the gradient path. In your own code, do the
same: recompute `A @ V` from the captured attention, as torchcam's LeGrad does.""",
        templates={
            "default": Template(
                "The attention captured from {layer} is returned beside the value product, not on the gradient path, "
                "so "
                "gradient-weighted rollout (Chefer, LeGrad) gets no gradient.",
                "Plain rollout works; spec.gradient_rollout(model, x) recomputes A @ V from the captured attention for "
                "one forward, so gradient-weighted rollout works too.",
            ),
        },
    ),
    Code(
        "HD511", "compiled-model", _ATTN, "info",
        "The model is wrapped by torch.compile; hooks added after compilation would be ignored.",
        """`torch.compile` ignores forward hooks registered after the first compiled call
(pytorch/pytorch#117758): capture code that hooks the compiled wrapper gets zero maps.

hookdoctor hooks and runs the original module (`_orig_mod`).""",
        applies="spec",
        templates={
            "default": Template(
                "The model is wrapped by torch.compile: hooks added to the compiled wrapper after its first call would "
                "never fire.",
                "Nothing to change: the spec hooks and runs the original module (_orig_mod).",
            ),
        },
    ),
    Code(
        "HD512", "output-attentions-leaves-hooks", _ATTN, "info",
        "transformers 5 installs recording hooks on the first output_attentions=True call, and they stay.",
        """In transformers 5.x the first forward with `output_attentions=True` registers forward
hooks on every attention module to record their outputs, and never removes them: a
2-layer ViT goes from 0 to 4 hooks (4.x returns the attentions without hooks). Tools
that ask for attentions this way leave the user's model changed.

hookdoctor never takes that path: its capture places its own hooks inside a context and
removes them, and the model's hook dictionaries are checked to be unchanged.""",
        applies="spec",
    ),
    Code(
        "HD513", "irregular-attention", _ATTN, "error",
        "The model's attention is not one T x T matrix per layer over the same tokens; rollout is undefined.",
        """Rollout multiplies one token-to-token matrix per layer, so every layer must attend from
all tokens to the same tokens. Models that reduce keys (PVT's spatial-reduction attention),
change the token count between stages, insert class-attention blocks that attend from one
token only (CaiT), or drop and shuffle tokens (ViTMAE masking) give matrices that cannot be
chained, or a token count that no patch grid of the input explains.

Use Grad-CAM, or look at the raw attention of a single layer with
`hookdoctor.attention.capture_attention(model, [layer])`.""",
        # "reduced_keys": spatial-reduction attention (more, queries, keys); the three irregular
        # chains name the model (class name): "token_count_changes" (counts, ", "-joined),
        # "stray_attention" (the layer attends from `queries` to `keys` tokens), "no_self_attention";
        # "no_grid": no patch grid of the input (input: "224x224") explains `tokens` tokens.
        templates={
            "reduced_keys": Template(
                "{layer}{more} attend from {queries} tokens to {keys} keys pooled from them (spatial-reduction "
                "attention, as in PVT, Segformer and CvT): each layer's matrix is not token-to-token, so the layers "
                "cannot be multiplied into a rollout (the pooling that makes the keys is a learned convolution, not an "
                "attention to chain).",
                "Use Grad-CAM (hookdoctor recommends a layer outside the attention), or look at one layer's raw "
                "attention via hookdoctor.attention.capture_attention.",
            ),
            "token_count_changes": Template(
                _NOT_ONE_MATRIX + "the token count changes between layers ({counts}).", _RAW_ATTENTION_INSTEAD
            ),
            "stray_attention": Template(
                _NOT_ONE_MATRIX + "{layer} attends from {queries} to {keys} tokens between the self-attention blocks.",
                _RAW_ATTENTION_INSTEAD,
            ),
            "no_self_attention": Template(
                _NOT_ONE_MATRIX + "no layer attends from every token to every token.", _RAW_ATTENTION_INSTEAD
            ),
            "no_grid": Template(
                "The attention of {layer} runs over {tokens} tokens, which no patch grid of the {input} input "
                "explains.",
                "Use Grad-CAM; if the model drops or shuffles tokens (ViTMAE masking), disable that first.",
            ),
        },
    ),
    Code(
        "HD514", "rollout-not-applicable", _ATTN, "info",
        "Attention rollout does not apply: the model has no image-wide token attention, so only Grad-CAM "
        "is judged.",
        """With the default `methods="auto"` (`--method auto`), hookdoctor judges Grad-CAM on every
model and attention rollout only where the model computes token-to-token attention over the
image. CNNs, ConvNeXt and MLP-Mixer compute none (HD508), XCiT-style models attend over
channels (HD507), Swin-style models attend within local windows (HD506): rollout has nothing
to multiply there, and that is a fact about the model, not a failure. The report's `ok`
and the exit code then depend on Grad-CAM alone.

Ask for rollout by name (`methods=("rollout",)` or `"all"`, `--method rollout`) to see the
refusal itself, as an error that makes the report fail.""",
        applies="spec",
        # Fields: reason (the message of the refusal it stands for), refused_as (that refusal's code).
        templates={
            "default": Template(
                "{reason}",
                "Nothing to do: Grad-CAM alone is judged. Ask for rollout by name (methods=('rollout',), --method "
                "rollout) to see it refused as {refused_as}.",
            ),
        },
    ),
)
