"""`xscreen export`'s ORT-vs-torch verdict: flat bound for plain models, max and p99 bounds for LA models."""

from xscreen.commands.export import LA_VERIFY_MAX, LA_VERIFY_P99, VERIFY_ATOL, disagreement


def test_plain_models_keep_the_flat_bound():
    assert disagreement({"cls_logits": (VERIFY_ATOL / 2, 1e-6)}, uses_la=False) is None
    assert "over 0.001" in disagreement({"cls_logits": (1.07e-3, 8.8e-5)}, uses_la=False)


def test_la_models_allow_a_rare_mask_flip_but_not_a_broad_error():
    # one element of 417,520 at 1.07e-3 with p99 8.8e-5: a ReLU mask flipped in the LA backward pass
    assert disagreement({"bbox_reg": (1.07e-3, 8.8e-5), "cls_logits": (2e-5, 1e-6)}, uses_la=True) is None
    assert "LA model" in disagreement({"bbox_reg": (LA_VERIFY_MAX * 2, 1e-5)}, uses_la=True)
    assert "LA model" in disagreement({"bbox_reg": (1e-3, LA_VERIFY_P99 * 2)}, uses_la=True)
