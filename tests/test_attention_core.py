"""Attention capture on small custom models: GQA, masks, scale, folded heads, failures, wrappers;
and the rollout arithmetic itself."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures.attention_checks import assert_probabilities, assert_rollout, assert_untouched, snapshot
from fixtures.attention_models import CrossBlockViT, FoldedHeadsViT, GQAViT, RaisingViT
from hookdoctor.attention import (
    analyse_attention,
    capture_attention,
    find_attention_sites,
    rollout_map,
    rollout_matrix,
)
from hookdoctor.errors import InputError
from hookdoctor.model.inputs import ModelInput

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_gqa_masked_scaled_sdpa_matches_the_eager_computation():
    model, eager = GQAViT().eval(), GQAViT(eager=True).eval()
    eager.load_state_dict(model.state_dict())
    spec, diagnostics = analyse_attention(model, ModelInput((X,)))
    assert spec is not None, diagnostics
    assert (spec.prefix_tokens, spec.grid, spec.heads, spec.kinds) == (1, (4, 4), (4, 4), ("sdpa", "sdpa"))
    with torch.no_grad():
        attentions = spec.capture(model, X)
        eager(X)
        reference = [block.last_probs for block in eager.blocks]
    assert_probabilities(attentions, 2, (2, 4, 17, 17))
    for mine, theirs in zip(attentions, reference, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)
        assert mine[..., -1].abs().max() == 0  # the masked key gets no weight
    with torch.no_grad():
        assert torch.allclose(model(X), eager(X), atol=1e-6)


def test_heads_folded_into_the_batch_are_unfolded():
    sites = find_attention_sites(FoldedHeadsViT().eval(), ModelInput((X,)))
    assert [(s.module, s.kind, s.heads, s.batch, s.query_tokens) for s in sites] == [
        ("blocks.0", "softmax", 4, 2, 17),
        ("blocks.1", "softmax", 4, 2, 17),
    ]


def test_sites_ignore_a_softmax_over_class_scores():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(2), torch.nn.Softmax(dim=1))
    assert find_attention_sites(model, ModelInput((X,))) == []


def test_class_attention_between_blocks_is_refused():
    spec, diagnostics = analyse_attention(CrossBlockViT().eval(), ModelInput((X,)))
    assert spec is None
    assert [(d.code, d.layer) for d in diagnostics] == [("HD513", "blocks.1")]


def test_a_forward_that_raises_leaves_the_model_as_found():
    model = RaisingViT().eval()
    spec, _ = analyse_attention(GQAViT().eval(), ModelInput((X,)))
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="on purpose"):
        spec.capture(model, X)
    with pytest.raises(RuntimeError, match="on purpose"):
        find_attention_sites(model, ModelInput((X,)))
    assert_untouched(before, model)


def test_train_mode_is_reported_and_capture_runs_in_eval_then_restores():
    model = GQAViT().train()
    spec, diagnostics = analyse_attention(model, ModelInput((X,)))
    assert "HD509" in {d.code for d in diagnostics}
    with torch.no_grad():
        assert_probabilities(spec.capture(model, X), 2, (2, 4, 17, 17))
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("wrap", ["compile", "dataparallel"])
def test_wrapped_models_are_captured_through_the_inner_module(wrap):
    from hookdoctor.model.unwrap import unwrap

    model = GQAViT().eval()
    wrapped = torch.compile(model) if wrap == "compile" else torch.nn.DataParallel(model)
    inner, prefix, _ = unwrap(wrapped)
    spec, diagnostics = analyse_attention(inner, ModelInput((X,)), name_prefix=prefix)
    expected = "_orig_mod.blocks.0" if wrap == "compile" else "module.blocks.0"
    assert spec.layer_names[0] == expected
    assert (wrap == "compile") == ("HD511" in {d.code for d in diagnostics})
    assert expected in dict(wrapped.named_modules())
    before = snapshot(model)
    with torch.no_grad():
        assert_probabilities(spec.capture(wrapped, X), 2, (2, 4, 17, 17))
        assert_probabilities(spec.capture(model, X), 2, (2, 4, 17, 17))
    assert_untouched(before, model)


def test_capturing_context_collects_during_user_forwards_and_cleans_up():
    model = GQAViT().eval()
    before = snapshot(model)
    with capture_attention(model) as record:
        model(X)
        model(X)
    assert len(record.attentions) == 4 and all(record.on_path)
    assert_untouched(before, model)
    with torch.no_grad():
        model(X)
    assert len(record.attentions) == 4  # nothing recorded after the block


def test_spec_serialises_and_its_snippet_is_python():
    spec, _ = analyse_attention(GQAViT().eval(), ModelInput((X,)))
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["layer_names"] == ["blocks.0", "blocks.1"] and data["grid"] == [4, 4]
    compile(spec.code(), "<snippet>", "exec")


def test_short_snippet_of_the_compact_report_runs():
    model = GQAViT().eval()
    spec, _ = analyse_attention(model, ModelInput((X,)))
    short = spec.code(own_forward=False)
    assert spec.code().startswith(short) and "capturing" not in short
    namespace: dict = {"model": model, "x": X}
    exec(compile(short, "<snippet>", "exec"), namespace)
    assert len(namespace["attentions"]) == 2
    assert namespace["heatmap"].shape == (X.shape[0], 4, 4)


def test_rollout_of_identity_attention_reads_only_the_query_token():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    matrix = rollout_matrix([eye, eye])
    assert torch.allclose(matrix, torch.eye(5).expand(1, 5, 5))
    cls_map = rollout_map([eye], prefix_tokens=1, grid=(2, 2), query="cls")
    assert torch.equal(cls_map, torch.zeros(1, 2, 2))


def test_rollout_adds_the_residual_and_renormalises():
    uniform = torch.full((1, 1, 3, 3), 1 / 3)
    matrix = rollout_matrix([uniform])
    expected = (torch.full((3, 3), 1 / 3) + torch.eye(3)) / 2
    assert torch.allclose(matrix[0], expected)
    assert torch.allclose(rollout_matrix([uniform, uniform]).sum(-1), torch.ones(1, 3))


def test_rollout_queries_and_fusions():
    torch.manual_seed(0)
    attention = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
    pool = torch.softmax(torch.randn(2, 3, 1, 5), dim=-1)
    for query, extra in (("cls", {}), ("mean", {}), ("pool", {"pool": pool})):
        for fusion in ("mean", "max", "min"):
            out = rollout_map(
                [attention],
                prefix_tokens=1,
                grid=(2, 2),
                query=query,
                head_fusion=fusion,
                discard_ratio=0.3,
                **extra,
            )
            assert_rollout(out, 2, (2, 2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"head_fusion": "median"}, "head_fusion"), ({"discard_ratio": 1.0}, "discard_ratio")],
)
def test_bad_rollout_arguments_say_what_to_pass(kwargs, match):
    spec, _ = analyse_attention(GQAViT().eval(), ModelInput((X,)))
    with pytest.raises(InputError, match=match):
        spec.rollout(GQAViT().eval(), X, **kwargs)


def test_train_mode_can_be_passed_by_a_caller_that_already_switched_to_eval():
    _, diagnostics = analyse_attention(GQAViT().eval(), ModelInput((X,)), was_training=True)
    assert "HD509" in {d.code for d in diagnostics}
