"""The encoder-decoder: cached decoding, padding, learning, sizes and input checks."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from genrec.trainer.model import (
    Dropout,
    GenerativeRecommender,
    ModelConfig,
    count_parameters,
    flops_per_example,
)

LEVELS, K, D = 3, 16, 4


def tiny_model(debug: bool = False, **overrides) -> GenerativeRecommender:
    torch.manual_seed(0)
    config = ModelConfig.preset(
        "tiny",
        num_levels=LEVELS,
        codebook_size=K,
        dedup_size=D,
        dropout=0.0,
        max_history_items=8,
        **overrides,
    )
    return GenerativeRecommender(config, debug).eval()


def random_items(generator: torch.Generator, *shape: int) -> torch.Tensor:
    levels = torch.randint(0, K, (*shape, LEVELS), generator=generator)
    dedup = torch.randint(0, D, (*shape, 1), generator=generator)
    return torch.cat([levels, dedup], dim=-1)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Histories of 5, 3 (left-padded) and 1 (right-padded) items, plus targets."""
    generator = torch.Generator().manual_seed(1)
    history = random_items(generator, 3, 5)
    history[1, :2] = -1
    history[2, 1:] = -1
    return history, random_items(generator, 3)


def cached_logits(model: GenerativeRecommender, history, target, user=None) -> list:
    cache = model.init_cache(*model.encode(history, user))
    steps = []
    for step in range(LEVELS + 1):
        steps.append(model.decode_step(cache, target[:, :step]))
    return steps


@pytest.mark.parametrize("buckets", [0, 10])
def test_cached_decoding_matches_teacher_forcing(buckets):
    model = tiny_model(num_user_buckets=buckets)
    history, target = padded_batch()
    user = torch.tensor([3, 14, 15]) if buckets else None
    with torch.no_grad():
        full = model(history, target, user)
        steps = cached_logits(model, history, target, user)
    for step, logits in enumerate(steps):
        size = D if step == LEVELS else K
        assert logits.shape == (3, size)
        torch.testing.assert_close(logits, full[:, step, :size], atol=1e-5, rtol=0)
    assert torch.isinf(full[:, LEVELS, D:]).all()


def test_decode_step_extends_the_cache_by_one_position():
    model = tiny_model()
    history, target = padded_batch()
    with torch.no_grad():
        cache = model.init_cache(*model.encode(history))
        model.decode_step(cache, target[:, :0])
        cross = cache.cross_k[0]
        model.decode_step(cache, target[:, :1])
    assert cache.length == 2
    assert cache.cross_k[0] is cross


def test_selected_beams_decode_like_their_users_rows():
    model = tiny_model()
    history, target = padded_batch()
    other = target.clone()
    other[:, 0] = (other[:, 0] + 1) % K
    options = torch.stack([target, other], dim=1)
    index = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        cache = model.init_cache(*model.encode(history))
        model.decode_step(cache, target[:, :0])
        two = cache.select_beams(torch.zeros(3, 2, dtype=torch.long))
        model.decode_step(two, options[:, :, :1].flatten(0, 1))
        picked = two.select_beams(index)
        chosen = options.gather(1, index[..., None].expand(-1, -1, LEVELS + 1))
        logits = model.decode_step(picked, chosen[:, :, :2].flatten(0, 1))
        full = torch.stack([model(history, o)[:, 2, :K] for o in (target, other)], dim=1)
    expected = full.gather(1, index[..., None].expand(-1, -1, K)).flatten(0, 1)
    assert picked.beams == 3 and picked.cross_k[0] is cache.cross_k[0]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_extra_padding_items_change_nothing():
    model = tiny_model()
    history, target = padded_batch()
    pad = torch.full((3, 2, LEVELS + 1), -1)
    with torch.no_grad():
        plain = model(history, target)
        padded = model(torch.cat([pad, history, pad], dim=1), target)
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=0)


def test_tiny_model_overfits_a_tiny_dataset():
    model = tiny_model().train()
    generator = torch.Generator().manual_seed(2)
    history = random_items(generator, 16, 4)
    target = random_items(generator, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    accuracy, steps = 0.0, 0
    while accuracy < 1.0 and steps < 200:
        steps += 1
        loss = model.loss(history, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            accuracy = (model(history, target).argmax(-1) == target).float().mean().item()
    assert accuracy == 1.0, f"accuracy {accuracy:.3f} after {steps} steps, loss {loss.item():.3f}"


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_the_right_share_unbiased_and_seeded(p):
    dropout = Dropout(p)
    x = torch.ones(1000, 1003, requires_grad=True)  # odd size: the last random word is cut
    torch.manual_seed(0)
    out = dropout(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 3e-3
    assert torch.allclose(out[kept], torch.tensor(1 / (1 - p)), rtol=1e-4)
    assert abs(out.mean().item() - 1.0) < 5e-3
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # gradient: the same mask and scale
    torch.manual_seed(0)
    assert torch.equal(dropout(x), out)
    assert not torch.equal(dropout(x), out)
    assert dropout.eval()(x) is x


def test_preset_parameter_counts():
    small = ModelConfig.preset("small")
    assert GenerativeRecommender(small).num_parameters() == count_parameters(small)
    causal = ModelConfig.preset("small", encoder="causal")
    assert GenerativeRecommender(causal).num_parameters() == count_parameters(causal)
    assert small.inner_dim == 6 * 64
    assert 5_000_000 < count_parameters(small) < 7_000_000
    assert 90_000_000 < count_parameters(ModelConfig.preset("base")) < 110_000_000
    large = ModelConfig.preset("large")
    with torch.device("meta"):
        meta = GenerativeRecommender(large)
    assert meta.num_parameters() == count_parameters(large) >= 300_000_000


@pytest.mark.parametrize("overrides", [{}, {"num_user_buckets": 16}, {"ffn": "relu"}])
def test_flop_estimate_equals_torchs_count_of_a_training_step(overrides):
    """PyTorch's FlopCounterMode, run over one example's forward and backward (attention in
    its matmul form so that the scores are counted), finds exactly the estimate MFU uses."""
    model = tiny_model(**overrides).train()
    history = torch.randint(0, K, (1, 5, LEVELS + 1))
    history[..., LEVELS] = 0
    user = torch.tensor([3]) if model.config.num_user_buckets else None
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(history, torch.zeros(1, LEVELS + 1, dtype=torch.long), user)
        logits.masked_fill(logits.isinf(), 0).sum().backward()
    assert counter.get_total_flops() == model.flops_per_example(5)
    assert model.flops_per_example(5) == 3 * flops_per_example(model.config, 5, training=False)
    per_second = 100 * model.flops_per_example(5)
    assert model.mfu(100.0, 1e12, history_items=5) == pytest.approx(per_second / 1e12)


@pytest.mark.parametrize(
    ("history", "target", "message"),
    [
        (torch.zeros(2, 3, LEVELS), torch.zeros(2, LEVELS + 1), "history_codes must have shape"),
        (torch.zeros(2, 3, LEVELS + 1), torch.zeros(2, LEVELS), "target_codes must have shape"),
        (torch.full((2, 3, LEVELS + 1), K), torch.zeros(2, LEVELS + 1), "outside level 0"),
        (torch.zeros(2, 3, LEVELS + 1), torch.full((2, LEVELS + 1), D), "outside level 3"),
        (torch.zeros(2, 9, LEVELS + 1), torch.zeros(2, LEVELS + 1), "max_history_items"),
        (torch.full((2, 3, LEVELS + 1), -1), torch.zeros(2, LEVELS + 1), "at least one item"),
    ],
)
def test_bad_input_is_a_clear_error(history, target, message):
    """Shapes always; code values, padding and lengths in debug mode (host-device syncs)."""
    model = tiny_model(debug=True)
    with pytest.raises(ValueError, match=message):
        model(history.long(), target.long())


def test_partly_padded_item_and_float_codes_are_rejected():
    model = tiny_model(debug=True)
    history = padded_batch()[0]
    history[0, 0, 1] = -1
    with pytest.raises(ValueError, match="padding item"):
        model.encode(history)
    with pytest.raises(ValueError, match="int64"):
        tiny_model().encode(padded_batch()[0].float())
    with pytest.raises(ValueError, match=r"reads the users. ids: an int64 tensor of shape \[3\]"):
        tiny_model(num_user_buckets=4).encode(padded_batch()[0])


def test_value_checks_wait_for_debug_mode():
    """Without debug the forward pass reads no value back from the device (the IDs were
    checked where they entered: ItemCodes.load, read_shard); debug mode checks them."""
    history, target = padded_batch()
    target[0, 0] = K
    with torch.no_grad():
        assert tiny_model()(history, target).shape == (3, LEVELS + 1, K)
    with pytest.raises(ValueError, match="outside level 0"):
        tiny_model(debug=True)(history, target)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(d_model=128, num_heads=6, head_dim=None)
    with pytest.raises(ValueError, match="'preset' is unknown: 'huge'"):
        ModelConfig.preset("huge")
