"""Bottleneck adapters (sequential, parallel, hybrid) on Llama, BERT and GPT-2 layouts: identity at start,
disable gives the base exactly, idempotent apply, trainable sets, closed-form counts, gradients, bad layouts."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, BertConfig, GPT2Config, LlamaConfig

from ftlab.errors import FTLabError
from ftlab.methods.adapter_hybrid import AdapterHybrid
from ftlab.methods.adapter_parallel import AdapterParallel
from ftlab.methods.adapter_sequential import AdapterSequential
from ftlab.methods.bottleneck import Bottleneck, BottleneckMethod, ParallelResidualWrap, ParallelWrap
from ftlab.models import TinyBackbone
from tests.conftest import TINY_BERT

METHODS = [AdapterSequential, AdapterParallel, AdapterHybrid]
PER_BLOCK = {AdapterSequential: 2, AdapterParallel: 1, AdapterHybrid: 3}  # adapters inserted per block


@pytest.fixture(scope="session")
def tiny_bert() -> TinyBackbone:
    return TinyBackbone(config=TINY_BERT, vocab_size=512)


@pytest.fixture(params=["llama", "bert"])
def model(request: pytest.FixtureRequest, tiny_llama: TinyBackbone, tiny_bert: TinyBackbone) -> nn.Module:
    if request.param == "llama":
        return tiny_llama.load_model(AutoModelForCausalLM)
    return tiny_bert.load_model(AutoModel)


IDS = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))


def run(model: nn.Module) -> torch.Tensor:
    """Logits (causal LM) or last hidden states (encoder): the first output either way."""
    return model(input_ids=IDS)[0]


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def adapter_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".adapter." in n}


def perturb(model: nn.Module) -> None:
    """Up-projections start at zero; give them weights so the adapters change the output."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.up.weight.normal_(0, 0.5)
                m.up.bias.normal_(0, 0.5)


@pytest.mark.parametrize("method_class", METHODS)
def test_identity_at_start_and_disabled_is_the_base(model: nn.Module, method_class: type[BottleneckMethod]) -> None:
    base = copy.deepcopy(model).eval()
    method = method_class(size=4)
    adapted = method.apply(model).eval()
    with torch.no_grad():
        expected = run(base)
        assert torch.equal(run(adapted), expected)  # zero up-projection: bit-identical at step 0
        perturb(adapted)
        changed = run(adapted)
        assert not torch.allclose(changed, expected)
        with method.disabled(adapted) as ref:
            assert torch.equal(run(ref), expected)
        assert torch.equal(run(adapted), changed)  # the adapters are back on after the context


@pytest.mark.parametrize("method_class", METHODS)
def test_apply_is_idempotent_and_trains_adapters_only(model: nn.Module, method_class: type[BottleneckMethod]) -> None:
    method = method_class(size=4)
    adapted = method.apply(model)
    shape = [(n, p.requires_grad) for n, p in adapted.named_parameters()]
    assert method.apply(adapted) is adapted
    assert [(n, p.requires_grad) for n, p in adapted.named_parameters()] == shape
    assert sum(isinstance(m, Bottleneck) for m in adapted.modules()) == 2 * PER_BLOCK[method_class]
    assert trainable(adapted) == adapter_names(adapted) == set(method.trainable_state_dict(adapted))


@pytest.mark.parametrize("method_class", METHODS)
def test_train_norms_adds_every_backbone_norm(model: nn.Module, method_class: type[BottleneckMethod]) -> None:
    adapted = method_class(size=4, train_norms=True).apply(model)
    norms = trainable(adapted) - adapter_names(adapted)
    if type(adapted).__name__.startswith("Llama"):
        # input_layernorm and post_attention_layernorm in 2 blocks, and the final model.norm.
        assert len(norms) == 5 and all(n.endswith("norm.weight") for n in norms)
        assert "model.norm.weight" in norms
    else:
        # BERT: embeddings.LayerNorm and, per block, attention.output.LayerNorm and output.LayerNorm (weight, bias).
        assert len(norms) == 10 and all(n.endswith(("LayerNorm.weight", "LayerNorm.bias")) for n in norms)


@pytest.mark.parametrize("method_class", METHODS)
def test_gradients_reach_adapters_only(model: nn.Module, method_class: type[BottleneckMethod]) -> None:
    adapted = method_class(size=4).apply(model).train()
    adapted.activation_checkpointing_enable()  # the wrappers live inside checkpointed blocks
    perturb(adapted)  # with a zero up-projection the down-projection's gradient would be exactly zero
    run(adapted).pow(2).mean().backward()
    for name, p in adapted.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


# Closed form: an adapter d -> r -> d has 2·d·r weights, r + d biases, and 2·d more with its LayerNorm.
BERT_BASE = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
LLAMA_1B = LlamaConfig(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8
)


@pytest.mark.parametrize(
    ("config", "model_class", "d", "layers"),
    [(BERT_BASE, AutoModel, 768, 12), (LLAMA_1B, AutoModelForCausalLM, 2048, 16)],
)
@pytest.mark.parametrize("method_class", METHODS)
def test_counts_match_closed_form(config, model_class, d: int, layers: int, method_class) -> None:
    with torch.device("meta"):  # shapes only: no memory for the backbone
        base = model_class.from_config(config)
    r = d // 16
    # BERT-base: r 48, 74,544 per adapter; sequential 1,788,960, parallel 894,528, hybrid 2,683,392.
    # Llama 2048: r 128, 526,464 per adapter; sequential 16,846,848, parallel 8,423,424, hybrid 25,270,272.
    per_adapter = 2 * d * r + r + d
    for layer_norm, extra in ((False, 0), (True, 2 * d)):
        adapted = method_class(layer_norm=layer_norm).apply(copy.deepcopy(base))
        count = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
        assert count == layers * PER_BLOCK[method_class] * (per_adapter + extra)
        assert next(m for m in adapted.modules() if isinstance(m, Bottleneck)).up.weight.is_meta


def test_gpt2_layout_and_reachable_modules() -> None:
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=512, n_positions=64))
    base = copy.deepcopy(gpt2).eval()
    mlp, proj = gpt2.transformer.h[0].mlp, gpt2.transformer.h[0].mlp.c_proj
    method = AdapterHybrid(size=4)
    adapted = method.apply(gpt2).eval()
    assert adapted.transformer.h[0].mlp.base_layer is mlp and mlp.c_proj.base_layer is proj
    assert trainable(adapted) == adapter_names(adapted)
    with torch.no_grad():
        assert torch.equal(run(adapted), run(base))
        perturb(adapted)
        assert not torch.allclose(run(adapted), run(base))
        with method.disabled(adapted):
            assert torch.equal(run(adapted), run(base))


def test_parallel_wrappers_compute_the_formula(tiny_llama: TinyBackbone, tiny_bert: TinyBackbone) -> None:
    torch.manual_seed(0)
    x, h = torch.randn(2, 5, 32), torch.randn(2, 5, 64)
    llama = tiny_llama.load_model(AutoModelForCausalLM)
    mlp = llama.model.layers[0].mlp
    wrap = ParallelWrap(mlp, Bottleneck(32, 4), scale=4.0)
    perturb(wrap)
    torch.testing.assert_close(wrap(x), mlp(x) + 4.0 * wrap.adapter(x))
    out = tiny_bert.load_model(AutoModel).eval().encoder.layer[0].output  # LayerNorm(dense(h) + x)
    wrap = ParallelResidualWrap(out, Bottleneck(32, 4), scale=4.0)
    perturb(wrap)
    expected = out.LayerNorm(out.dense(h) + wrap.adapter(x) * 4.0 + x)
    torch.testing.assert_close(wrap(h, x), expected)


def test_trainable_state_round_trip(tiny_llama: TinyBackbone) -> None:
    method = AdapterSequential(size=4, train_norms=True)
    model = method.apply(tiny_llama.load_model(AutoModelForCausalLM)).eval()
    state = {k: torch.randn_like(v) for k, v in method.trainable_state_dict(model).items()}
    method.load_trainable_state_dict(model, state)
    fresh = method.apply(tiny_llama.load_model(AutoModelForCausalLM)).eval()
    method.load_trainable_state_dict(fresh, method.trainable_state_dict(model))
    with torch.no_grad():
        assert torch.equal(run(fresh), run(model))


def test_also_train_adds_matching_parameters(tiny_bert: TinyBackbone) -> None:
    model = AdapterParallel(size=4, also_train=[r"^pooler\."]).apply(tiny_bert.load_model(AutoModel))
    assert trainable(model) - adapter_names(model) == {"pooler.dense.weight", "pooler.dense.bias"}
    with pytest.raises(FTLabError, match="also_train 'nothing_here' matches no parameter"):
        AdapterParallel(also_train=["nothing_here"]).apply(tiny_bert.load_model(AutoModel))


class ToyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.ffn = nn.Linear(32, 32), nn.Linear(32, 32)


class Toy(nn.Module):
    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([ToyBlock(), ToyBlock()])


@pytest.mark.parametrize("method_class", METHODS)
def test_unknown_layout_names_the_block(method_class: type[BottleneckMethod]) -> None:
    with pytest.raises(
        FTLabError, match=r"do not know where to go in block ToyBlock \(known: Llama.*self_attn\.o_proj"
    ):
        method_class().apply(Toy(SimpleNamespace(hidden_size=32)))
    with pytest.raises(FTLabError, match=r"Toy has no config\.hidden_size"):
        method_class().apply(Toy(SimpleNamespace()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size must be at least 1"),
        ({"reduction_factor": 0}, "reduction_factor must be at least 1"),
        ({"activation": "sparkle"}, "activation 'sparkle' is unknown"),
        ({"also_train": ["("]}, "also_train '\\(' is not a valid regular expression"),
    ],
)
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(FTLabError, match=message):
        AdapterSequential(**kwargs)


def test_reduction_too_large_for_the_model(tiny_llama: TinyBackbone) -> None:
    with pytest.raises(FTLabError, match="reduction_factor=64 leaves no bottleneck for hidden 32"):
        AdapterSequential(reduction_factor=64).apply(tiny_llama.load_model(AutoModelForCausalLM))
