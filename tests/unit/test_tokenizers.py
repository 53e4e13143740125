import pytest
from transformers import AutoTokenizer

from ftlab.models.tokenizers import DEFAULT_CHAT_TEMPLATE, prepare_tokenizer


def test_missing_pad_token_and_template_are_filled_with_a_warning(tiny_llama, tmp_path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama.tokenizer_dir())
    tok.pad_token = None
    tok.chat_template = None
    with pytest.warns(UserWarning, match="no pad token; padding with eos"):
        prepare_tokenizer(tok, "tok")
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE


def test_bpe_tokenizer_is_built_once_and_cached(tiny_llama) -> None:
    assert tiny_llama.tokenizer_dir() == tiny_llama.tokenizer_dir()
    tok = tiny_llama.load_tokenizer()
    assert len(tok) == 512 and tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<s>", "</s>"]
