"""The Flax BERT against the PyTorch reference (bert_tiny fixture), dropout, bf16 and remat."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from hybrid_jax.convert import bert as convert_bert
from hybrid_jax.models.bert import BertConfig, BertEncoder, attention_with_dropout


@pytest.fixture(scope="module")
def hf_config(fixtures_dir):
    return json.loads((fixtures_dir / "bert_tiny" / "config.json").read_text())


@pytest.fixture(scope="module")
def config(hf_config):
    return BertConfig.from_hf(hf_config)


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return dict(np.load(fixtures_dir / "bert_tiny" / "arrays.npz"))


@pytest.fixture(scope="module")
def variables(fixtures_dir, config):
    state = load_file(str(fixtures_dir / "bert_tiny" / "model.safetensors"))
    return convert_bert.convert_state_dict(state, config).variables


def key(seed):
    # rbg keys: dropout masks from the default threefry keys take seconds to compile on CPU.
    return jax.random.key(seed, impl="rbg")


def apply(model, variables, *args, train=False, seed=None):
    """Jitted ``model.apply`` (eager op-by-op dispatch is several times slower on 2 CPU cores)."""
    rngs = {} if seed is None else {"dropout": key(seed)}
    return _jit_apply(model)(variables, *args, train=train, rngs=rngs)


@functools.cache
def _jit_apply(model):
    return jax.jit(model.apply, static_argnames="train")


def inputs(reference):
    return reference["input_ids"], reference["attention_mask"], reference["token_type_ids"]


def test_config_from_hf(hf_config, config):
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (64, 2, 16)
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.1
    tuned = BertConfig.from_hf(hf_config, dropout=0.2)
    assert tuned.hidden_dropout_prob == tuned.attention_probs_dropout_prob == 0.2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "silu"}, "hidden_act='silu' is not supported"),
        ({"model_type": "roberta"}, "only BERT"),
        ({"position_embedding_type": "relative_key"}, "only 'absolute'"),
        ({"num_attention_heads": 5}, "not a multiple"),
    ],
)
def test_config_rejects_what_it_cannot_compute(hf_config, change, message):
    with pytest.raises(ValueError, match=message):
        BertConfig.from_hf({**hf_config, **change})


def test_parameter_names_mirror_hf(variables):
    params = variables["params"]
    assert params["embeddings"]["word_embeddings"]["embedding"].shape == (2000, 64)
    assert params["encoder"]["layer_1"]["attention"]["self"]["query"]["kernel"].shape == (64, 64)
    assert params["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"].shape == (64, 128)
    assert set(params["encoder"]["layer_0"]["output"]["LayerNorm"]) == {"scale", "bias"}
    assert set(params["pooler"]["dense"]) == {"kernel", "bias"}


def test_matches_pytorch_reference(config, variables, reference):
    # All positions are compared, padded ones too: BERT computes them (masks keys, not queries).
    out = apply(BertEncoder(config, add_pooling_layer=True), variables, *inputs(reference))
    # Measured on XLA:CPU: 1.2e-6 (hidden, values up to 4.6) and 3.6e-7 (pooler): float32 rounding.
    np.testing.assert_allclose(out["last_hidden_state"], reference["last_hidden_state"], rtol=0, atol=5e-6)
    np.testing.assert_allclose(out["pooler_output"], reference["pooler_output"], rtol=0, atol=2e-6)
    assert out["last_hidden_state"].dtype == jnp.float32


def test_padded_keys_are_ignored(config, variables, reference):
    ids, mask, types = inputs(reference)
    noisy = np.where(mask == 1, ids, 7)  # change only the padded tokens
    model = BertEncoder(config)
    clean = apply(model, variables, ids, mask, types)["last_hidden_state"]
    other = apply(model, variables, noisy, mask, types)["last_hidden_state"]
    valid = mask.astype(bool)
    np.testing.assert_allclose(other[valid], clean[valid], atol=1e-6)
    unmasked = apply(model, variables, noisy, np.ones_like(mask), types)
    assert np.abs(unmasked["last_hidden_state"][valid] - clean[valid]).max() > 1e-2


def test_dropout_attention_path_equals_fused_attention():
    # Training uses an explicit softmax (for dropout on the probabilities); at rate 0 it must equal
    # jax.nn.dot_product_attention, mask semantics included; at rate 0.5 it must drop something.
    q, k, v = np.random.default_rng(1).normal(size=(3, 2, 10, 4, 16)).astype(np.float32)
    mask = (np.arange(10)[None, :] < np.array([10, 6])[:, None])[:, None, None, :]
    explicit = jax.jit(attention_with_dropout, static_argnames="rate")
    fused = jax.jit(jax.nn.dot_product_attention)(q, k, v, mask=mask)
    np.testing.assert_allclose(explicit(q, k, v, mask, rate=0.0, rng=None), fused, atol=1e-6)
    dropped = explicit(q, k, v, mask, rate=0.5, rng=key(0))
    assert np.abs(dropped - fused).max() > 0.1
    v_masked = v.copy()
    v_masked[1, 6:] = 1e3  # padded keys of row 1 must not leak in, with dropout too
    np.testing.assert_allclose(
        explicit(q, k, v_masked, mask, rate=0.5, rng=key(0))[1], dropped[1], atol=1e-5
    )


def test_train_mode_dropout_is_deterministic_given_the_rng(config, variables, reference):
    model = BertEncoder(
        dataclasses.replace(config, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    )

    def run(seed):
        return apply(model, variables, *inputs(reference), train=True, seed=seed)[
            "last_hidden_state"
        ]

    eval_out = apply(model, variables, *inputs(reference))["last_hidden_state"]
    np.testing.assert_array_equal(run(0), run(0))
    assert np.abs(run(0) - run(1)).max() > 1e-3
    assert np.abs(run(0) - eval_out).max() > 1e-3
    with pytest.raises(Exception, match="dropout"):
        apply(model, variables, *inputs(reference), train=True)


def test_dropout_override_zero_makes_train_equal_eval(hf_config, variables, reference):
    model = BertEncoder(BertConfig.from_hf(hf_config, dropout=0.0))
    train = apply(model, variables, *inputs(reference), train=True, seed=0)
    np.testing.assert_allclose(
        train["last_hidden_state"], reference["last_hidden_state"], atol=1e-5
    )


def test_bfloat16_compute_is_close_and_keeps_float32_params(config, variables, reference):
    model = BertEncoder(config, dtype=jnp.bfloat16, add_pooling_layer=True)
    out = apply(model, variables, *inputs(reference))
    assert out["last_hidden_state"].dtype == jnp.float32  # LayerNorm output, as under autocast
    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 %) and the hidden states reach
    # 4.6; measured against the float32 PyTorch reference: max 0.0136, mean 0.0024, pooler 0.0084.
    error = np.abs(out["last_hidden_state"] - reference["last_hidden_state"])
    assert error.mean() < 0.005 and error.max() < 0.03, (error.mean(), error.max())
    assert 0 < np.abs(out["pooler_output"] - reference["pooler_output"]).max() < 0.02
    ids = jnp.zeros((1, 4), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, train=False))["params"]
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_remat_gives_the_same_values_and_gradients(config, variables, reference):
    def loss(params, remat):
        out = BertEncoder(config, remat=remat).apply(
            {"params": params}, *inputs(reference), train=True, rngs={"dropout": key(3)}
        )
        return jnp.sum(out["last_hidden_state"][:, 0] ** 2)

    params = {k: v for k, v in variables["params"].items() if k != "pooler"}
    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    plain, remat = grad(params, False), grad(params, True)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(remat[1]), jax.tree.leaves(plain[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_token_type_ids_default_to_zero(config, variables, reference):
    ids, mask, _ = inputs(reference)
    model = BertEncoder(config)
    implicit = apply(model, variables, ids, mask)["last_hidden_state"]
    explicit = apply(model, variables, ids, mask, np.zeros_like(ids))["last_hidden_state"]
    np.testing.assert_array_equal(implicit, explicit)
