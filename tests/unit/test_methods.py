"""Methods on their own: trainable sets, closed-form counts, disable and merge, bad targets."""

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from ftlab.errors import FTLabError
from ftlab.methods import Freeze, Full, LoRA
from ftlab.models import TinyBackbone, anatomy
from tests.conftest import TINY_BERT


@pytest.fixture
def llama(tiny_llama):
    return tiny_llama.load_model(AutoModelForCausalLM)


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_anatomy_of_llama_and_bert(llama) -> None:
    parts = anatomy(llama)
    assert parts.blocks_path == "model.layers" and len(parts.blocks) == 2
    assert parts.stem == ["model.embed_tokens.weight"]
    assert parts.top == ["model.norm.weight", "lm_head.weight"]
    bert = TinyBackbone(config=TINY_BERT, vocab_size=512).load_model(AutoModel)
    parts = anatomy(bert)
    assert parts.blocks_path == "encoder.layer" and len(parts.blocks) == 2
    assert all(n.startswith("embeddings.") for n in parts.stem)
    assert all(n.startswith("pooler.") for n in parts.top)


def test_full_trains_everything_and_is_idempotent(llama) -> None:
    method = Full()
    llama.requires_grad_(False)
    model = method.apply(method.apply(llama))
    assert trainable(model) == {n for n, _ in model.named_parameters()}


def test_freeze_trains_last_block_and_top(llama) -> None:
    model = Freeze(last_blocks=1, top=True).apply(llama)
    expected = {n for n, _ in llama.named_parameters() if n.startswith("model.layers.1.")}
    assert trainable(model) == expected | {"model.norm.weight", "lm_head.weight"}
    model = Freeze(last_blocks=0, top=False, patterns=[r"\.q_proj\."]).apply(llama)
    assert trainable(model) == {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"last_blocks": 5}, "last_blocks=5 but the model has 2 blocks"),
        ({"last_blocks": 0, "top": False}, "leaves no parameter trainable"),
        ({"patterns": ["nothing_here"]}, "'nothing_here' matches no parameter"),
    ],
)
def test_freeze_bad_choices(llama, kwargs, message) -> None:
    with pytest.raises(FTLabError, match=message):
        Freeze(**kwargs).apply(llama)


def test_lora_count_matches_closed_form(llama) -> None:
    # r·(d_in + d_out) per adapted linear layer. Tiny Llama: hidden 32, intermediate 64, 4 heads of 8,
    # 2 kv heads -> q 32->32, k 32->16, v 32->16, o 32->32, gate 32->64, up 32->64, down 64->32.
    r = 4
    per_layer = r * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + (32 + 64) + (32 + 64) + (64 + 32))
    model = LoRA(r=r).apply(llama)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * per_layer
    assert all(".lora_" in n for n in trainable(model))
    assert LoRA(r=r).apply(model) is model  # idempotent


def test_lora_disabled_gives_base_output_and_merge_matches(llama) -> None:
    base = copy.deepcopy(llama).eval()
    method = LoRA(r=4, target_modules=["q_proj", "v_proj"])
    model = method.apply(llama).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B starts at zero; make the adapter change the output
    ids = torch.randint(3, 500, (2, 12))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        adapted = model(input_ids=ids).logits
        with method.disabled(model) as ref:
            reference = ref(input_ids=ids).logits
        assert not torch.allclose(adapted, expected)
        assert torch.equal(reference, expected)
        merged = method.merge(model)(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_lora_unknown_targets_list_what_exists(llama) -> None:
    with pytest.raises(FTLabError, match=r"\['qkv'\] match no module of LlamaForCausalLM.*down_proj.*q_proj"):
        LoRA(target_modules=["q_proj", "qkv"]).apply(llama)


def test_methods_without_disable_say_so(llama) -> None:
    with pytest.raises(FTLabError, match="Full cannot switch itself off"), Full().disabled(llama):
        pass


def test_trainable_state_round_trip(llama, tiny_llama) -> None:
    method = LoRA(r=2)
    model = method.apply(llama)
    state = {k: torch.randn_like(v) for k, v in method.trainable_state_dict(model).items()}
    fresh = method.apply(tiny_llama.load_model(AutoModelForCausalLM))
    method.load_trainable_state_dict(fresh, state)
    for k, v in method.trainable_state_dict(fresh).items():
        assert torch.equal(v, state[k])
    with pytest.raises(FTLabError, match="1 unexpected"):
        method.load_trainable_state_dict(fresh, {**state, "extra.weight": torch.zeros(1)})
