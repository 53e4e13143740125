"""Parts that cannot work together are refused at setup, before the model loads, in one sentence."""

import sys

import pytest

from ftlab.batches import SFTBatch
from ftlab.errors import FTLabError
from ftlab.methods import Full, LoRA, PrefixTuning, PromptTuning, QLoRA
from ftlab.module import check_composition
from ftlab.objectives import SFT
from tests.conftest import REPO


class PackedSFTData:
    batch_type = SFTBatch
    packing = True


class ShardedStrategy:  # stands for Lightning's FSDP strategies by name
    pass


ShardedStrategy.__name__ = "FSDPStrategy"


@pytest.mark.parametrize("method", [PrefixTuning(), PromptTuning()])
def test_prompt_learning_refuses_packed_rows(method) -> None:
    with pytest.raises(FTLabError, match=f"method {method.name} cannot train on packed rows"):
        check_composition(method, SFT(), PackedSFTData(), strategy=None)
    check_composition(LoRA(), SFT(), PackedSFTData(), strategy=None)


def test_qlora_refuses_fsdp_by_name() -> None:
    with pytest.raises(FTLabError, match=r"QLoRA does not support sharded training \(FSDPStrategy\)"):
        check_composition(QLoRA(), SFT(), None, strategy=ShardedStrategy())


@pytest.mark.parametrize("method", [LoRA(), Full()])
def test_fsdp1_is_refused_with_a_pointer_to_the_fsdp2_config(method) -> None:
    """The method shards (supports_fsdp), so the refusal is about Lightning's FSDP1 strategy itself."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    assert method.supports_fsdp
    expected = (
        "ftlab shards with FSDP2: use strategy ModelParallelStrategy (experiments/base/trainer_fsdp.yaml), "
        "not FSDPStrategy"
    )
    with pytest.raises(FTLabError) as refused:
        check_composition(method, SFT(), None, strategy=FSDPStrategy())
    assert str(refused.value) == expected
    assert (REPO / "experiments" / "base" / "trainer_fsdp.yaml").is_file()  # the config it names exists
    check_composition(method, SFT(), None, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))


def test_qlora_without_bitsandbytes_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(FTLabError, match="QLoRA needs bitsandbytes, which cannot be imported here"):
        QLoRA().load_kwargs()


def test_qlora_needs_a_4bit_backbone(tiny_llama) -> None:
    from transformers import AutoModelForCausalLM

    with pytest.raises(FTLabError, match="QLoRA needs a backbone loaded in 4 bit"):
        QLoRA().apply(tiny_llama.load_model(AutoModelForCausalLM))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"quant_type": "int3"}, "quant_type must be nf4 or fp4"), ({"compute_dtype": "half_float"}, "not a torch dtype")],
)
def test_qlora_bad_options(kwargs, message) -> None:
    with pytest.raises(FTLabError, match=message):
        QLoRA(**kwargs)


def test_prompt_text_init_needs_text() -> None:
    with pytest.raises(FTLabError, match="init 'text' needs init_text"):
        PromptTuning(init="text")
