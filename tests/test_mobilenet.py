"""MobileNetV3 (EfficientAT mn*): channel plans, layer equivalences, parity from the stored mel, train mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_jax.convert import efficientat as convert_efficientat
from hybrid_jax.convert.state_dict import read_state_dict
from hybrid_jax.models import audio_encoder, mobilenet

# From EfficientAT's width table: prefix -> (width, stem, "in/expanded/out" of the 15 blocks,
# last conv, head hidden, parameters with 527 classes).
WIDTH_TABLE = {
    "mn01": (0.1, 8, "8/8/8,8/8/8,8/8/8,8/8/8,8/16/8,8/16/8,8/24/8,8/24/8,8/24/8,8/24/8,8/48/16,16/64/16,16/64/16,16/96/16,16/96/16", 96, 128, 123783),
    "mn02": (0.2, 8, "8/8/8,8/16/8,8/16/8,8/16/8,8/24/8,8/24/8,8/48/16,16/40/16,16/40/16,16/40/16,16/96/24,24/136/24,24/136/32,32/192/32,32/192/32", 192, 256, 324695),
    "mn04": (0.4, 8, "8/8/8,8/24/16,16/32/16,16/32/16,16/48/16,16/48/16,16/96/32,32/80/32,32/72/32,32/72/32,32/192/48,48/272/48,48/272/64,64/384/64,64/384/64", 384, 512, 983599),
    "mn05": (0.5, 8, "8/8/8,8/32/16,16/40/16,16/40/24,24/64/24,24/64/24,24/120/40,40/104/40,40/96/40,40/96/40,40/240/56,56/336/56,56/336/80,80/480/80,80/480/80", 480, 640, 1431239),
    "mn06": (0.6, 16, "16/16/16,16/40/16,16/40/16,16/40/24,24/72/24,24/72/24,24/144/48,48/120/48,48/112/48,48/112/48,48/288/64,64/400/64,64/400/96,96/576/96,96/576/96", 576, 768, 1947583),
    "mn08": (0.8, 16, "16/16/16,16/48/24,24/56/24,24/56/32,32/96/32,32/96/32,32/192/64,64/160/64,64/144/64,64/144/64,64/384/88,88/536/88,88/536/128,128/768/128,128/768/128", 768, 1024, 3246647),
    "mn10": (1.0, 16, "16/16/16,16/64/24,24/72/24,24/72/40,40/120/40,40/120/40,40/240/80,80/200/80,80/184/80,80/184/80,80/480/112,112/672/112,112/672/160,160/960/160,160/960/160", 960, 1280, 4876831),
    "mn12": (1.2, 24, "24/24/24,24/80/32,32/88/32,32/88/48,48/144/48,48/144/48,48/288/96,96/240/96,96/224/96,96/224/96,96/576/136,136/808/136,136/808/192,192/1152/192,192/1152/192", 1152, 1536, 6836831),
    "mn14": (1.4, 24, "24/24/24,24/88/32,32/104/32,32/104/56,56/168/56,56/168/56,56/336/112,112/280/112,112/256/112,112/256/112,112/672/160,160/944/160,160/944/224,224/1344/224,224/1344/224", 1344, 1792, 9140807),
    "mn16": (1.6, 24, "24/24/24,24/104/40,40/112/40,40/112/64,64/192/64,64/192/64,64/384/128,128/320/128,128/296/128,128/296/128,128/768/176,176/1072/176,176/1072/256,256/1536/256,256/1536/256", 1536, 2048, 11710071),
    "mn20": (2.0, 32, "32/32/32,32/128/48,48/144/48,48/144/80,80/240/80,80/240/80,80/480/160,160/400/160,160/368/160,160/368/160,160/960/224,224/1344/224,224/1344/320,320/1920/320,320/1920/320", 1920, 2560, 17909287),
    "mn30": (3.0, 48, "48/48/48,48/192/72,72/216/72,72/216/120,120/360/120,120/360/120,120/720/240,240/600/240,240/552/240,240/552/240,240/1440/336,336/2016/336,336/2016/480,480/2880/480,480/2880/480", 2880, 3840, 39086367),
    "mn40": (4.0, 64, "64/64/64,64/256/96,96/288/96,96/288/160,160/480/160,160/480/160,160/960/320,320/800/320,320/736/320,320/736/320,320/1920/448,448/2688/448,448/2688/640,640/3840/640,640/3840/640", 3840, 5120, 68427303),
}


@pytest.mark.parametrize("prefix", sorted(WIDTH_TABLE))
def test_channel_plan_and_parameter_count(prefix):
    width, stem, blocks, last, hidden, params = WIDTH_TABLE[prefix]
    plan = mobilenet.channel_plan(width)
    assert convert_efficientat.WIDTHS[prefix] == width
    assert plan.stem == stem and plan.last_conv == last and plan.head_hidden == hidden
    assert ",".join(f"{b.inp}/{b.expanded}/{b.out}" for b in plan.blocks) == blocks
    counted = sum(int(np.prod(entry.shape)) for entry in convert_efficientat.key_map(width).values()
                  if entry.path[0] == "params")
    assert counted == params


@pytest.mark.parametrize("width", [0.1, 4.0])
def test_module_variables_match_the_plan(width):
    # Shape-only (no compute): the module's variables are exactly the converter's key map.
    module = mobilenet.MobileNetV3(width)
    mel = jax.ShapeDtypeStruct((1, 128, 1000), jnp.float32)
    variables = jax.eval_shape(lambda m: module.init(jax.random.key(0), m, train=False), mel)
    flat = {"/".join(k.key for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables)}
    expected = {"/".join(entry.path): entry.shape if entry.rule.axes is None
                else tuple(entry.shape[a] for a in entry.rule.axes)
                for entry in convert_efficientat.key_map(width).values()}
    assert flat == expected
    out = jax.eval_shape(lambda v, m: module.apply(v, m, train=False), variables, mel)
    channels = mobilenet.channel_plan(width).last_conv
    assert out["sequence"].shape == (1, 32, channels) and out["features"].shape == (1, channels)
    assert out["logits"].shape == (1, 527)


@pytest.mark.parametrize("frames", [310, 33, 1000, 1])
def test_any_length_rounds_up(frames):
    module = mobilenet.MobileNetV3(0.1, num_classes=0)
    mel = jax.ShapeDtypeStruct((2, 128, frames), jnp.float32)
    out = jax.eval_shape(lambda m: module.init_with_output(jax.random.key(0), m, train=False)[0], mel)
    assert set(out) == {"features", "sequence"}  # num_classes=0: no classifier
    assert out["sequence"].shape == (2, -(-frames // 32), 96)


@pytest.mark.parametrize("kernel_size,stride,height,width", [(3, 1, 9, 12), (3, 2, 10, 13), (5, 2, 7, 8), (5, 1, 6, 5)])
def test_shifted_depthwise_equals_native(kernel_size, stride, height, width):
    rng = np.random.default_rng(kernel_size * stride)
    x = jnp.asarray(rng.normal(size=(2, height, width, 6)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 1, 6)), jnp.float32)
    stem = kernel.reshape(kernel_size, kernel_size, 6, 1).transpose(0, 1, 3, 2)

    @jax.jit
    def both(x, kernel, stem):  # depthwise, and the single-input-channel stem on the same path
        return [(mobilenet.spatial_conv(x, kernel, stride, True, impl),
                 mobilenet.spatial_conv(x[..., :1], stem, stride, False, impl))
                for impl in ("native", "shifted", "fused")]

    (native, native_stem), *others = both(x, kernel, stem)
    for shifted, shifted_stem in others:  # the CPU and the TPU forms
        assert shifted.shape == native.shape == (2, -(-height // stride), -(-width // stride), 6)
        np.testing.assert_allclose(shifted, native, atol=1e-5)
        np.testing.assert_allclose(shifted_stem, native_stem, atol=1e-5)


def test_padding_is_symmetric_not_same():
    # Stride 2, pad (1, 1): output row o is centred on input row 2o, so the kernel's top row reads
    # row 2o - 1 (zero padding for o = 0). SAME would pad (0, 1) and read rows 0, 2, 4, 6.
    x = jnp.arange(8.0).reshape(1, 8, 1, 1)
    kernel = jnp.zeros((3, 3, 1, 1)).at[0, 1].set(1.0)  # picks the row above the centre
    for impl in ("shifted", "native", "fused"):
        out = jax.jit(mobilenet.spatial_conv, static_argnums=(2, 3, 4))(x, kernel, 2, True, impl)
        np.testing.assert_array_equal(out[0, :, 0, 0], [0.0, 1.0, 3.0, 5.0])


@pytest.fixture(scope="module")
def fixture_model(fixtures_dir):
    folder = fixtures_dir / "efficientat_mn04"
    state_dict = read_state_dict(folder / "state_dict.safetensors")
    return convert_efficientat.convert(state_dict, 0.4), dict(np.load(folder / "arrays.npz"))


@pytest.mark.parametrize("depthwise", ["shifted", "native", "fused"])
def test_network_from_stored_mel_matches_pytorch(fixture_model, depthwise):
    variables, arrays = fixture_model
    module = mobilenet.MobileNetV3(0.4, depthwise=depthwise)
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda v, m: module.apply(v, m, train=False))(variables, arrays["mel"])
    reference = arrays["embedding_sequence"]  # [B, C, F', T']
    # Ten times tighter than end to end: only the network's float32 rounding differs.
    np.testing.assert_allclose(out["logits"], arrays["logits"], rtol=0, atol=5e-5)
    atol = 1e-5 * np.abs(reference).max() + 1e-5
    np.testing.assert_allclose(out["sequence"], reference.mean(axis=2).transpose(0, 2, 1), rtol=0, atol=atol)
    np.testing.assert_allclose(out["features"], arrays["pooled_features"], rtol=0, atol=atol)


def test_folded_batch_norm_equals_unfolded(fixture_model):
    variables, _ = fixture_model
    block = mobilenet.InvertedResidual(mobilenet.channel_plan(0.4).blocks[11])  # expand, SE, residual
    unfolded = block.clone(fold_bn=False)
    block_variables = {c: variables[c]["features_12"] for c in variables}
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 10, 48)), jnp.float32)
    folded_out, unfolded_out = jax.jit(lambda v, x: (block.apply(v, x, train=False),
                                                    unfolded.apply(v, x, train=False)))(block_variables, x)
    np.testing.assert_allclose(folded_out, unfolded_out, atol=1e-5)


def test_batch_norm_train_mode_tracks_pytorch_statistics():
    bn = mobilenet.BatchNorm(3)
    variables = bn.init(jax.random.key(0), jnp.zeros((1, 1, 1, 3)), train=False)
    y = jnp.asarray(np.random.default_rng(1).normal(2.0, 3.0, size=(2, 4, 5, 3)), jnp.float32)
    out, updates = bn.apply(variables, y, train=True, mutable=["batch_stats"])
    flat = np.asarray(y).reshape(-1, 3)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.01 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.99 + 0.01 * flat.var(0, ddof=1), rtol=1e-5)
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-3)  # biased variance, eps 1e-3
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 3), expected, atol=1e-4)


def test_batch_norm_train_statistics_survive_a_large_mean():
    """The one-pass statistics (E[d], E[d^2]) are centred on the running mean: activations of mean
    500 and std 0.05 (E[y^2] = 250000.0025 in float32 would lose the variance entirely) still give
    the batch variance, once the running mean is near the batch mean, as it is in a trained net."""
    bn = mobilenet.BatchNorm(2)
    variables = bn.init(jax.random.key(0), jnp.zeros((1, 1, 1, 2)), train=False)
    variables = {"params": variables["params"],
                 "batch_stats": {"mean": jnp.asarray([499.9, -499.9]), "var": jnp.ones(2)}}
    rng = np.random.default_rng(3)
    y = np.stack([rng.normal(500.0, 0.05, size=(4, 6, 5)), rng.normal(-500.0, 0.05, size=(4, 6, 5))], -1)
    out, updates = bn.apply(variables, jnp.asarray(y, jnp.float32), train=True, mutable=["batch_stats"])
    flat = np.asarray(y, np.float32).astype(np.float64).reshape(-1, 2)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.99 + 0.01 * flat.var(0, ddof=1), rtol=1e-6)
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-3)
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 2), expected, atol=2e-3)


def test_train_mode_updates_batch_stats_and_uses_dropout():
    module = mobilenet.MobileNetV3(0.1)
    mel = jnp.asarray(np.random.default_rng(2).normal(size=(2, 128, 40)), jnp.float32)
    variables = mobilenet.random_variables(module)

    @jax.jit
    def train(variables, dropout_key):
        return module.apply(variables, mel, train=True, mutable=["batch_stats"],
                            rngs={"dropout": dropout_key})

    out, updates = train(variables, jax.random.key(1))
    again, _ = train(variables, jax.random.key(1))
    other, _ = train(variables, jax.random.key(2))
    np.testing.assert_array_equal(out["logits"], again["logits"])
    assert not np.allclose(out["logits"], other["logits"])  # dropout differs
    np.testing.assert_array_equal(out["sequence"], other["sequence"])  # dropout is in the head only
    before, after = variables["batch_stats"], updates["batch_stats"]
    # Every variance moves; a mean can stay 0 where the input is already batch-normalised and the
    # conv is linear (an expansion right after a projection BN), so check the stem's.
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
    assert all(v for path, v in jax.tree_util.tree_leaves_with_path(moved) if path[-1].key == "var")
    assert not np.allclose(before["features_0"]["bn"]["mean"], after["features_0"]["bn"]["mean"])
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: module.apply(v, mel, train=True, mutable=["batch_stats"]), variables)


def test_chunked_eval_pads_and_cuts_the_batch():
    import flax.linen as nn

    class PerExample(nn.Module):  # the network's eval interface, in miniature
        num_classes: int = 3

        def setup(self):
            self.conv, self.head = nn.Dense(4), nn.Dense(self.num_classes)

        def feature_maps(self, mel, *, train):
            return self.conv(mel.transpose(0, 2, 1))[:, :, None, :]  # [B, T, 1, C]

        def pool(self, x):
            return {"features": x.mean(axis=(1, 2)), "sequence": x.mean(axis=2)}

        def classify(self, features, *, train):
            return self.head(features)

        def __call__(self, mel, *, train):
            out = self.pool(self.feature_maps(mel, train=train))
            return out | {"logits": self.classify(out["features"], train=train)}

    module = PerExample()
    mel = jnp.asarray(np.random.default_rng(3).normal(size=(5, 6, 7)), jnp.float32)
    variables = module.init(jax.random.key(0), mel, train=False)
    whole = audio_encoder.apply_eval(module, variables, mel, eval_chunk=0)
    chunked = jax.jit(lambda v, m: audio_encoder.apply_eval(module, v, m, eval_chunk=2))(variables, mel)
    assert set(chunked) == {"features", "sequence", "logits"}
    for name in whole:  # 5 examples in chunks of 2: padded to 6, then cut back
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-6, atol=1e-6)
    assert audio_encoder.resolve_eval_chunk("auto") == (1 if jax.default_backend() == "cpu" else 0)


def test_bfloat16_compute_keeps_float32_parameters(fixture_model):
    variables, _ = fixture_model
    module = mobilenet.MobileNetV3(0.4, dtype=jnp.bfloat16)
    mel = jax.ShapeDtypeStruct((2, 128, 310), jnp.float32)
    out = jax.eval_shape(lambda v, m: module.apply(v, m, train=False), variables, mel)
    assert all(v.dtype == jnp.float32 for v in out.values())
    # Numerics on one block with SE and a residual: bf16 keeps ~3 significant digits.
    block_variables = {c: variables[c]["features_12"] for c in variables}
    plan = mobilenet.channel_plan(0.4).blocks[11]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 10, 48)), jnp.float32)
    full, half = jax.jit(lambda v, x: (
        mobilenet.InvertedResidual(plan).apply(v, x, train=False),
        mobilenet.InvertedResidual(plan, dtype=jnp.bfloat16).apply(v, x.astype(jnp.bfloat16), train=False),
    ))(block_variables, x)
    assert half.dtype == jnp.bfloat16
    assert jax.tree.leaves(block_variables)[0].dtype == np.float32
    # Measured: max error 0.85 % of the block's peak output (bf16 rounds to 2^-9 relative).
    np.testing.assert_allclose(half.astype(np.float32), full, atol=0.02 * np.abs(full).max())


def test_train_mode_gradients_equal_across_conv_implementations(monkeypatch):
    """The hand-written backward passes of the CPU path (shifted-sum depthwise, per-example
    pointwise kernel gradients) and of the TPU path (fused shifted sums for the stride-1 depthwise
    convs and the stem) give the whole network's training gradients of the native convolutions."""
    from hybrid_jax.backend import batch_sum

    # Take the per-example loops everywhere (by default only large activations do).
    monkeypatch.setattr(batch_sum, "PER_EXAMPLE_MIN_BYTES", 0)
    rng = np.random.default_rng(5)
    mel = jnp.asarray(rng.normal(size=(3, 64, 48)), jnp.float32)
    variables = mobilenet.random_variables(mobilenet.MobileNetV3(0.2, num_classes=0))

    def loss(params, impl):
        module = mobilenet.MobileNetV3(0.2, num_classes=0, depthwise=impl,
                                       precision=None if impl == "shifted" else "highest")
        out, _ = module.apply({**variables, "params": params}, mel, train=True,
                              mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out["sequence"]))

    grads = jax.jit(lambda p: [jax.grad(loss)(p, impl) for impl in ("shifted", "fused", "native")])
    *others, native = grads(variables["params"])
    flat_native = dict(jax.tree_util.tree_leaves_with_path(native))
    # Leaves that are zero in exact arithmetic (BN shifts right before another BN) carry only
    # float32 noise, so the tolerance is relative to the largest gradient of the network.
    overall = max(float(np.abs(g).max()) for g in flat_native.values())
    for impl, grad in zip(("shifted", "fused"), others):
        for path, g in jax.tree_util.tree_leaves_with_path(grad):
            np.testing.assert_allclose(g, flat_native[path], rtol=1e-3, atol=1e-5 * overall,
                                       err_msg=f"{impl} {jax.tree_util.keystr(path)}")
