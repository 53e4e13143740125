"""Tokenizers: the default chat template, pad-token repair, and small BPE tokenizers built offline."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ftlab.errors import FTLabError
from ftlab.models.cache import cached_dir

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""Used when a tokenizer has no chat template. A user or system turn renders as
`<|role|>\\n{content}\\n`; an assistant turn as `<|assistant|>\\n{content}{eos}`, so the answer's
loss covers exactly its text and the EOS a model must learn to stop on. A prompt ends with
`<|assistant|>\\n`. The markers are plain text, so any tokenizer can encode them."""


def prepare_tokenizer(tok: PreTrainedTokenizerBase, source: str) -> PreTrainedTokenizerBase:
    """Give a tokenizer what training needs: a pad token and a chat template (warning on each)."""
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise FTLabError(f"tokenizer {source} has neither a pad token nor an eos token to pad with")
        warnings.warn(f"tokenizer {source} has no pad token; padding with eos ({tok.eos_token!r})", stacklevel=2)
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        warnings.warn(f"tokenizer {source} has no chat template; using ftlab's default template", stacklevel=2)
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return tok


def _texts(files: Iterable[Path]) -> Iterator[str]:
    """Yield the text of each file; for JSON lines, the string values of each row."""
    for path in files:
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    yield " ".join(v for v in json.loads(line).values() if isinstance(v, str))
        else:
            yield path.read_text(encoding="utf-8")


def build_bpe_tokenizer(corpus: list[Path], vocab_size: int) -> Path:
    """Train a byte-level BPE on local text files and save it as a Hugging Face tokenizer folder.

    Special tokens: `<pad>` (0), `<s>` (1, bos), `</s>` (2, eos); the default chat template is saved
    with it. The folder is cached by (file contents' names and sizes, vocab size).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    key = {"files": [(str(p), p.stat().st_size) for p in corpus], "vocab": vocab_size, "v": 2}

    def build(out: Path) -> None:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(_texts(corpus), trainer)
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
        tok.save_pretrained(str(out))

    return cached_dir("tokenizers", key, build)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return prepare_tokenizer(tok, path)
