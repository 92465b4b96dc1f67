"""The analytic FLOP count (hybrid_jax.flops): EfficientAT's published MACs, and exactly the dots
and convolutions of the model's own traced forward in every fusion mode."""
import dataclasses
import importlib
import math

import jax
import numpy as np
import pytest
from test_model import TINY_BERT, tiny_batch

from hybrid_jax import flops, plan, schema
from hybrid_jax.backend.policy import Policy
from hybrid_jax.models import fusion
from hybrid_jax.models.bert import BertConfig
from hybrid_jax.models.frontend import MelConfig
from hybrid_jax.models.retrieval import AudioSettings, PoolingSettings, RetrievalModel


def test_mn40_matches_efficientats_own_count():
    # EfficientAT's hook counter on mn40_as_ext, input 1 x 1 x 128 x 1000 (efficientat.md 2.8).
    assert flops.mobilenet_macs(4.0, 128, 1000, num_classes=flops.AUDIOSET_CLASSES) == 8_027_637_831
    # Its README's rounded figures for the smaller widths.
    assert round(flops.mobilenet_macs(1.0, 128, 1000, flops.AUDIOSET_CLASSES) / 1e9, 2) == 0.54
    assert round(flops.mobilenet_macs(0.4, 128, 1000, flops.AUDIOSET_CLASSES) / 1e9, 2) == 0.11


def test_bert_base_at_128_tokens_is_the_usual_11_billion_macs():
    base = BertConfig.from_hf(plan.HF_BERT_CONFIGS["bert-base-uncased"])
    # 12 layers x 128 tokens x (4 H^2 + 2 H I) + attention 2 x 128^2 x H per layer; biases on top.
    weights = 12 * 128 * (4 * 768**2 + 2 * 768 * 3072) + 12 * 2 * 128**2 * 768
    assert flops.bert_macs(base, 128, bias=False) == weights
    assert 11.1e9 < flops.bert_macs(base, 128) < 11.3e9


def test_clotho_late_pair_is_the_issues_182_gflop():
    config = importlib.import_module("configs.clotho_late").get_config()
    model, _ = plan.model_for(config.model, Policy("tpu"))
    count = flops.pair_flops(model, schema.num_samples(config.data.clip_seconds),
                             config.model.text.max_length, global_batch=128)
    # mn40 at 16.1 GFLOP per 10 s window x 3, bert-base 5.5 GFLOP x 2 texts, forward + backward,
    # plus the DFT-matmul front end TPUs run (forward only).
    assert count.cnn / 3 == pytest.approx(2 * 8_005_273_144)  # no classifier head
    assert count.text_query == pytest.approx(5.48e9, rel=1e-3)
    assert count.frontend == pytest.approx(5.32e9, rel=1e-3)
    assert count.training == pytest.approx(182.6e9, rel=1e-3)
    frozen = flops.pair_flops(dataclasses.replace(model, text_trainable=False), 960000, 32, 128)
    assert frozen.training == pytest.approx(count.training - 2 * (count.text_query + count.text_metadata))


def _macs(jaxpr) -> int:
    """MACs of the dot_generals and convolutions in a jaxpr, sub-jaxprs included."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
            free = [d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch)]
            total += math.prod(lhs) * math.prod(free)
        elif name == "conv_general_dilated":
            rhs, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
            out_feature = eqn.params["dimension_numbers"].rhs_spec[0]
            total += math.prod(out) * math.prod(rhs) // rhs[out_feature]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    assert name != "scan" and name != "while", "loops would need their trip count"
                    total += _macs(inner)
    return total


@pytest.mark.parametrize("mode,tokens,layers", [(m, "window", 1) for m in fusion.FUSION_MODES]
                         + [("late", "frame", 2), ("mid", "frame", 1), ("none", "window", 0)])
def test_count_equals_the_traced_forwards_dots_and_convolutions(mode, tokens, layers):
    # Native convolutions and the DFT-matmul STFT, so that every product is a dot or a conv
    # (the CPU's shifted sums and the FFT are not); clips of 2.5 windows, odd mel bands.
    model = RetrievalModel(
        audio=AudioSettings(width_mult=0.2, window_seconds=0.4, depthwise="native", stft="matmul",
                            mel=MelConfig(n_mels=40, n_fft=256, win_length=200, hop_length=100), tokens=tokens),
        text=dataclasses.replace(TINY_BERT, num_hidden_layers=2), fusion=mode, embed_dim=12,
        pooling=PoolingSettings(dim=24, num_layers=layers, num_heads=2, mlp_dim=40, max_len=64))
    batch = tiny_batch(clip_seconds=1.0)
    variables = jax.eval_shape(lambda: model.init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, batch, train=False))
    jaxpr = jax.make_jaxpr(lambda v, b: model.apply(v, b, train=False))(variables, batch)
    batch_size, samples = batch["audio"].shape
    count = flops.pair_flops(model, samples, batch["query_ids"].shape[1], global_batch=0, bias=False)
    assert count.forward * batch_size == 2 * _macs(jaxpr.jaxpr)
    assert (count.cnn > 0) == (mode != "metadata_only") and (count.text_metadata > 0) == (mode != "none")


def test_training_counts_the_backward_twice_for_trained_parts_only():
    count = flops.PairFlops(frontend=1.0, cnn=10.0, pooling=2.0, text_query=5.0, text_metadata=5.0,
                            heads=0.5, text_trainable=True)
    assert count.forward == 23.5
    assert count.training == 1.0 + 3 * 22.5
    frozen = dataclasses.replace(count, text_trainable=False)
    assert frozen.training == 1.0 + 10.0 + 3 * 12.5
    assert np.isclose(count.as_dict()["training"], count.training)
