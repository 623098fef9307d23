"""fastot inside sentence-transformers and the Hugging Face Trainer, checked against fastot's own loops and metrics.

- OT distillation: ``SentenceTransformerTrainer`` + ``OTDistillLoss`` + ``LengthGroupedBatchSampler`` and the HF
  ``OTDistillationTrainer`` train like ``fastot distill`` on the same pairs, batches, seed and optimizer settings:
  the same loss at every step and the same final weights (tiny BERTs without dropout, so nothing random remains);
  with another width the projection is trained and saved.
- Code-switching: ``CodeSwitchCollator`` feeds the HF ``Trainer`` as is, and ``code_switch`` switches what a
  ``CrossEncoderTrainer`` trains on; the batches the model sees equal the collator's own output at the same steps,
  the statistics reach the logs, and evaluation sees the text unswitched.
- Evaluation: sentence-transformers' ``InformationRetrievalEvaluator`` (``bitext_evaluator``) and
  ``CrossEncoderRerankingEvaluator`` against ``fastot.ir`` on the same models.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

pytest.importorskip("accelerate")
datasets = pytest.importorskip("datasets")
st_lib = pytest.importorskip("sentence_transformers")

import fastot  # noqa: E402
from fastot.integrations import hf  # noqa: E402
from fastot.integrations import sentence_transformers as fst  # noqa: E402
from fastot.ir.retrieval import evaluate_bitext  # noqa: E402
from fastot.train import DistillConfig, distill, load_tokenizer  # noqa: E402
from fastot.train.distill import epoch_batches, read_pairs  # noqa: E402

EN = ["the river flooded the market on monday", "farmers say the rains came late this year",
      "a doctor explained why the children were sick", "officials met traders at the river bank",
      "she bought bread milk and rice before noon", "children walk to school along the river",
      "the market sells water bread and milk", "rain fell on the roads and the schools",
      "the doctor met the farmers at the market", "water prices rose after the floods",
      "traders sold rice and bread at the bank", "the schools opened again on tuesday"]
SW = ["mto ulifurika soko jumatatu", "wakulima wanasema mvua ilikuja kuchelewa mwaka huu",
      "daktari alieleza kwa nini watoto waliugua", "maafisa walikutana na wafanyabiashara kando ya mto",
      "alinunua mkate maziwa na mchele kabla ya mchana", "watoto wanatembea shuleni kando ya mto",
      "soko linauza maji mkate na maziwa", "mvua ilinyesha barabarani na shuleni",
      "daktari alikutana na wakulima sokoni", "bei ya maji ilipanda baada ya mafuriko",
      "wafanyabiashara waliuza mchele na mkate benki", "shule zilifunguliwa tena jumanne"]
PAIRS = [("river", "mto"), ("market", "soko"), ("bread", "mkate"), ("milk", "maziwa"), ("water", "maji"),
         ("doctor", "daktari"), ("children", "watoto"), ("rain", "mvua"), ("school", "shule"), ("rice", "mchele")]


def _tiny_bert(folder, hidden: int = 32, seed: int = 0, head: bool = False) -> str:
    """A 2-layer BERT over MiniLM's vocabulary with no dropout (so a run is a pure function of its batches),
    saved with the tokenizer so that sentence-transformers can load it."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tok = load_tokenizer("tiny")
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=1)
    torch.manual_seed(seed)
    (BertForSequenceClassification if head else BertModel)(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _st_model(folder, max_length: int = 128):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    t = Transformer(str(folder), max_seq_length=max_length)
    return SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), "mean")], device="cpu")


def _bitext(tmp_path):
    path = tmp_path / "bitext.tsv"
    path.write_text("".join(f"{e}\t{s}\n" for e, s in zip(EN, SW)), encoding="utf-8")
    return str(path)


def _fastot_run(tmp_path, bitext, teacher, student=None, **kw):
    out = str(tmp_path / "fastot")
    opts = dict(bitext=bitext, lang="swa", output_dir=out, teacher=teacher, student=student, eval_split=None,
                batch_size=4, max_steps=5, lr=2e-3, warmup_steps=2, weight_decay=0.01, max_grad_norm=1.0, seed=0,
                progress=False, save_every=0, device="cpu", backend="torch")
    opts.update(kw)
    distill(DistillConfig(**opts))
    losses = [r["loss"] for r in map(json.loads, open(os.path.join(out, "log.jsonl"))) if "loss" in r]
    from transformers import AutoModel

    return losses, AutoModel.from_pretrained(os.path.join(out, "student")).state_dict()


def _train_args(cls, tmp_path, **kw):
    opts = dict(output_dir=str(tmp_path / "trainer"), max_steps=5, per_device_train_batch_size=4, learning_rate=2e-3,
                warmup_steps=2, weight_decay=0.01, max_grad_norm=1.0, seed=0, logging_steps=1, report_to=[],
                save_strategy="no", lr_scheduler_type="linear", optim="adamw_torch", use_cpu=True,
                disable_tqdm=True, dataloader_num_workers=0)
    opts.update(kw)
    return cls(**opts)


def _logged_losses(trainer) -> list[float]:
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


def _assert_same_weights(ours: dict, theirs: dict, atol=2e-5):
    assert ours.keys() <= theirs.keys() or theirs.keys() <= ours.keys()
    common = [k for k in ours if k in theirs and not k.startswith("pooler.")]
    assert len(common) > 10
    for k in common:
        torch.testing.assert_close(ours[k].float(), theirs[k].float(), atol=atol, rtol=1e-4, msg=k)


def test_st_trainer_with_ot_loss_trains_like_fastot_distill(tmp_path):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    folder = _tiny_bert(tmp_path / "tiny")
    bitext = _bitext(tmp_path)
    want, want_w = _fastot_run(tmp_path, bitext, folder)
    en, tgt = read_pairs(bitext, "swa", "train")
    teacher, student = _st_model(folder), _st_model(folder)
    loss = fst.OTDistillLoss(student, teacher, backend="torch")
    args = _train_args(SentenceTransformerTrainingArguments, tmp_path, batch_sampler=fst.LengthGroupedBatchSampler)
    trainer = SentenceTransformerTrainer(model=student, args=args, loss=loss,
                                         train_dataset=datasets.Dataset.from_dict({"en": en, "tgt": tgt}))
    trainer.train()
    got = _logged_losses(trainer)
    assert len(got) == len(want) == 5
    assert got == pytest.approx(want, abs=2e-4)  # the Trainer logs 4 decimals
    assert len(set(round(x, 4) for x in want)) > 1  # the weights moved between steps
    _assert_same_weights(want_w, student[0].auto_model.state_dict())
    frozen = _st_model(folder)[0].auto_model.state_dict()
    for k, v in teacher[0].auto_model.state_dict().items():
        assert torch.equal(v, frozen[k]), k  # the teacher did not train


def test_length_grouped_sampler_batches():
    """Each epoch's batches partition the rows (drop_last: only full batches), come in a new order each epoch and
    the same order for the same (seed, epoch); within a chunk of 64 batches the rows are sorted by the length of
    the last text column (here every row is in one chunk: the concatenated batches are length-sorted once the
    batches are put back in length order)."""
    ds = datasets.Dataset.from_dict({"en": EN, "tgt": SW, "label": [0.0] * 12})
    s = fst.LengthGroupedBatchSampler(ds, batch_size=5, drop_last=False, valid_label_columns=["label"], seed=3)
    orders = []
    for epoch in (0, 1, 0):
        s.set_epoch(epoch)
        batches = list(s)
        assert sorted(i for b in batches for i in b) == list(range(12)) and len(batches) == len(s) == 3
        rows = [i for b in sorted(batches, key=lambda b: len(SW[b[0]])) for i in b]
        assert [len(SW[i]) for i in rows] == sorted(len(t) for t in SW)
        orders.append(batches)
    assert orders[0] == orders[2] and orders[0] != orders[1]
    full = fst.LengthGroupedBatchSampler(ds, 5, True, valid_label_columns=["label"], seed=3)
    assert len(full) == 2 and [len(b) for b in full] == [5, 5]
    by_en = fst.LengthGroupedBatchSampler(ds, 12, False, valid_label_columns=["label"], length_column="en")
    assert [len(EN[i]) for i in next(iter(by_en))] == sorted(len(t) for t in EN)
    with pytest.raises(ValueError, match="length_column"):
        fst.LengthGroupedBatchSampler(ds, 5, False, length_column="nope")


def test_st_ot_loss_projection_and_bad_input(tmp_path):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    teacher = _st_model(_tiny_bert(tmp_path / "t", hidden=32))
    student = _st_model(_tiny_bert(tmp_path / "s", hidden=48, seed=1))
    loss = fst.OTDistillLoss(student, teacher, backend="torch")
    assert isinstance(loss.criterion.projection, torch.nn.Linear)
    before = loss.criterion.projection.weight.detach().clone()
    args = _train_args(SentenceTransformerTrainingArguments, tmp_path, max_steps=2)
    SentenceTransformerTrainer(model=student, args=args, loss=loss,
                               train_dataset=datasets.Dataset.from_dict({"en": EN, "tgt": SW})).train()
    assert not torch.equal(before, loss.criterion.projection.weight)  # the projection is in the optimizer
    assert all(not p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="two text columns"):
        loss([{}, {}, {}])
    with pytest.raises(ValueError, match="teacher"):
        fst.OTDistillLoss(student, student)
    with pytest.raises(TypeError, match="teacher"):
        fst.OTDistillLoss(student, teacher[0].auto_model)


def test_hf_trainer_ot_distillation_trains_like_fastot_distill(tmp_path):
    """``OTDistillationTrainer`` on the pairs in fastot's batch order (no length grouping: a seeded permutation,
    fed in sequence) against ``fastot distill``; then a 48-d student against a 32-d teacher: the projection is
    trained and saved with the checkpoint."""
    from torch.utils.data import SequentialSampler
    from transformers import AutoModel, TrainingArguments

    folder = _tiny_bert(tmp_path / "tiny")
    bitext = _bitext(tmp_path)
    want, want_w = _fastot_run(tmp_path, bitext, folder, length_grouping=False)
    en, tgt = read_pairs(bitext, "swa", "train")
    order = [i for epoch in (0, 1) for b in epoch_batches([len(t) for t in tgt], 4, 0, epoch, False) for i in b]
    rows = [(en[i], tgt[i]) for i in order]  # two epochs, each its own permutation, as fastot distill draws them
    student, teacher = AutoModel.from_pretrained(folder), AutoModel.from_pretrained(folder)
    trainer = hf.OTDistillationTrainer(model=student, teacher=teacher, args=_train_args(TrainingArguments, tmp_path),
                                       train_dataset=rows, data_collator=hf.BitextCollator(load_tokenizer(folder)),
                                       ot_loss=fastot.OTDistillationLoss(backend="torch"))
    trainer._get_train_sampler = lambda *a, **k: SequentialSampler(rows)
    trainer.train()
    assert _logged_losses(trainer) == pytest.approx(want, abs=2e-4)
    _assert_same_weights(want_w, student.state_dict())

    wide = AutoModel.from_pretrained(_tiny_bert(tmp_path / "wide", hidden=48, seed=2))
    args = _train_args(TrainingArguments, tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = hf.OTDistillationTrainer(model=wide, teacher=teacher, args=args, processing_class=load_tokenizer(folder),
                                       train_dataset=datasets.Dataset.from_dict({"en": EN, "tgt": SW}))
    proj = trainer.ot_loss.projection.weight.detach().clone()
    trainer.train()
    assert not torch.equal(proj, trainer.ot_loss.projection.weight)
    saved = torch.load(os.path.join(args.output_dir, "checkpoint-2", "ot_loss.pt"))
    assert torch.equal(saved["projection.weight"], trainer.ot_loss.projection.weight.detach())
    # evaluation gives the OT loss; a list of dicts keeps its text columns; a resume loads the projection
    dict_rows = [{"en": e, "tgt": t} for e, t in zip(EN, SW)]
    ev = trainer.evaluate(dict_rows)
    assert 0 < ev["eval_loss"] < 2
    wide2 = AutoModel.from_pretrained(_tiny_bert(tmp_path / "wide", hidden=48, seed=2))
    args = _train_args(TrainingArguments, tmp_path, max_steps=3, save_strategy="steps", save_steps=2)
    again = hf.OTDistillationTrainer(model=wide2, teacher=teacher, args=args, train_dataset=dict_rows,
                                     processing_class=load_tokenizer(folder))
    loaded = []
    again.ot_loss.register_load_state_dict_post_hook(lambda module, keys: loaded.append(True))
    again.train(resume_from_checkpoint=os.path.join(args.output_dir, "checkpoint-2"))
    assert loaded and again.state.global_step == 3
    with pytest.raises(ValueError, match="teacher"):
        hf.OTDistillationTrainer(model=wide, teacher=wide, args=args)


def test_bitext_collator_bad_input():
    col = hf.BitextCollator(load_tokenizer("tiny"), max_length=16)
    out = col([{"en": "the river", "tgt": "mto"}, ("a dog", "mbwa")])
    assert out["input_ids"].shape[0] == 2 and out["teacher_input_ids"].shape[0] == 2
    for pre in ("", "teacher_"):  # [CLS] and [SEP] carry no mass
        assert torch.equal(out[f"{pre}token_mask"].sum(1), out[f"{pre}attention_mask"].sum(1) - 2)
    with pytest.raises(ValueError, match="keys 'en' and 'tgt'"):
        col([{"english": "x", "tgt": "y"}])
    with pytest.raises(ValueError, match="max_length"):
        hf.BitextCollator(load_tokenizer("tiny"), max_length=0)


@pytest.fixture(scope="module")
def lexicon():
    return fastot.Lexicon.from_pairs(PAIRS, load_tokenizer("tiny"), languages="sw")


def _rerank_rows(n=24):
    return [{"query": EN[i % 12], "passage": EN[(i * 5 + 1) % 12], "label": float(i % 2)} for i in range(n)]


def test_hf_trainer_takes_the_collator_as_is(tmp_path, lexicon):
    """The Trainer feeds CodeSwitchCollator's batches to the model unchanged (equal to a stats="batch" twin's at
    the same steps), the callback puts the switch ratio into the logs, and a dataset whose text columns the Trainer
    would drop gets an error that says what to do."""
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    tok = load_tokenizer("tiny")
    model = AutoModelForSequenceClassification.from_pretrained(_tiny_bert(tmp_path / "ce", head=True))
    seen, evaluated = [], []
    model.register_forward_pre_hook(lambda m, a, kw: (seen if m.training else evaluated).append(
        {k: v.clone() for k, v in kw.items()}), with_kwargs=True)
    rows = _rerank_rows()
    collator = fastot.CodeSwitchCollator(tok, fastot.CodeSwitcher(lexicon, p=0.5, seed=1), max_length=32)
    twin = fastot.CodeSwitchCollator(tok, fastot.CodeSwitcher(lexicon, p=0.5, seed=1), max_length=32, stats="batch")
    args = _train_args(TrainingArguments, tmp_path, max_steps=3, per_device_train_batch_size=8,
                       remove_unused_columns=False, eval_strategy="steps", eval_steps=2,
                       per_device_eval_batch_size=8)
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:8], data_collator=collator)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(rows)
    cb = hf.CodeSwitchStatsCallback.attach(trainer, collator)
    assert trainer.callback_handler.callbacks[0] is cb
    trainer.train()
    assert len(seen) == 3
    words = switched = 0
    for step, batch in enumerate(seen):
        ref = twin(rows[8 * step:8 * step + 8], step=step)
        for k in ("input_ids", "attention_mask", "token_type_ids", "labels"):
            assert torch.equal(batch[k], ref[k]), (step, k)
        words += int(ref["cs_stats"]["words"])
        switched += int(ref["cs_stats"]["switched"])
    # the evaluation batches (the same collator) are cut but not switched, and did not move the training steps
    assert evaluated and collator.calls >= 3
    unswitched = twin(rows[:8], step=0, p=0.0)
    for batch in evaluated:
        for k in ("input_ids", "attention_mask", "token_type_ids", "labels"):
            assert torch.equal(batch[k], unswitched[k]), k
    # counted when collated (the loader runs one batch ahead): the sum over the logs is every batch's
    logs = [r for r in trainer.state.log_history if "cs_words" in r]
    assert len(logs) >= 2 and all(0 < r["cs_switched_ratio"] < 1 for r in logs)
    assert sum(r["cs_words"] for r in logs) == words and switched > 0
    assert sum(r["cs_switched_ratio"] * r["cs_words"] for r in logs) == pytest.approx(switched)
    assert all(r["cs_switched_ratio_sw"] == r["cs_switched_ratio"] for r in logs)

    ds = datasets.Dataset.from_list(rows)
    args = _train_args(TrainingArguments, tmp_path, max_steps=1)  # remove_unused_columns=True, the default
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        Trainer(model=model, args=args, train_dataset=ds, data_collator=collator).train()


def test_cross_encoder_trainer_with_code_switch(tmp_path, lexicon):
    """``code_switch`` on a CrossEncoder: the batches a ``CrossEncoderTrainer`` feeds the model are the collator's
    switch of what the model's own ``preprocess`` gives, at steps 0, 1, 2; the callback logs the ratio; ``predict``
    (eval mode) is unswitched; ``remove`` restores the model."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from torch.utils.data import SequentialSampler

    class InOrder(DefaultBatchSampler):
        def __init__(self, dataset, batch_size, drop_last, **kw):
            super().__init__(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last)

    model = CrossEncoder(_tiny_bert(tmp_path / "ce", head=True), num_labels=1, device="cpu", max_length=48)
    pairs = [(r["query"], r["passage"]) for r in _rerank_rows(6)]
    before = model.predict(pairs)
    hook = fst.code_switch(model, fastot.CodeSwitcher(lexicon, p=0.5, seed=2))
    assert hook.collator.max_length == 48
    with pytest.raises(ValueError, match="already installed"):
        fst.code_switch(model, hook.collator.switcher)
    seen = []
    # sentence-transformers calls the HF model's forward directly (no hooks there): watch its embeddings
    model[0].auto_model.bert.embeddings.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    rows = _rerank_rows()
    args = _train_args(CrossEncoderTrainingArguments, tmp_path, max_steps=3, per_device_train_batch_size=8,
                       learning_rate=0.0, batch_sampler=InOrder)
    trainer = CrossEncoderTrainer(model=model, args=args, loss=BinaryCrossEntropyLoss(model),
                                  train_dataset=datasets.Dataset.from_list(rows))
    hf.CodeSwitchStatsCallback.attach(trainer, hook)
    trainer.train()
    assert len(seen) == 3
    twin = fastot.CodeSwitchCollator(model.tokenizer, fastot.CodeSwitcher(lexicon, p=0.5, seed=2), max_length=48,
                                     padding="longest", stats="batch")
    switched = 0
    for step, ids in enumerate(seen):
        enc = hook._original([(r["query"], r["passage"]) for r in rows[8 * step:8 * step + 8]])
        ref = twin.switch_encoded(enc, step=step)
        assert torch.equal(ids, ref["input_ids"]), step
        switched += int(ref["cs_stats"]["switched"])
    assert switched > 0
    logs = [r for r in trainer.state.log_history if "cs_words" in r]
    assert logs and sum(r["cs_switched_ratio"] * r["cs_words"] for r in logs) == pytest.approx(switched)
    # eval mode: predict sees the text unswitched (the learning rate was 0: the same weights, the same scores)
    assert torch.allclose(torch.as_tensor(model.predict(pairs)), torch.as_tensor(before), atol=1e-6)
    hook.remove()
    assert "preprocess" not in model.__dict__
    with pytest.raises(TypeError, match="CrossEncoder"):
        fst.code_switch(object(), hook.collator.switcher)


def test_bitext_evaluator_matches_fastot_evaluate_bitext(tmp_path):
    """sentence-transformers' InformationRetrievalEvaluator (``bitext_evaluator``) and fastot's
    ``evaluate_bitext`` score the same model on the same split alike (the pretrained MiniLM, MAFAND dev or the
    sentences above)."""
    from sentence_transformers import SentenceTransformer

    from fastot.train.models import minilm_path

    data = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mafand", "en-swa")
    en, sw = read_pairs(data, "swa", "dev", 300) if os.path.isdir(data) else (EN, SW)
    model = SentenceTransformer(minilm_path(), device="cpu")
    model.max_seq_length = 128
    got = fst.bitext_evaluator(en, sw, name="dev")(model)
    want = evaluate_bitext(model[0].auto_model, model.tokenizer, en, sw, max_length=128,
                           metrics=("mrr@10", "recall@1", "recall@10", "recall@50", "ndcg@10", "map"))
    pairs = {"mrr@10": "dev_cosine_mrr@10", "recall@1": "dev_cosine_recall@1", "recall@10": "dev_cosine_recall@10",
             "recall@50": "dev_cosine_recall@50", "ndcg@10": "dev_cosine_ndcg@10"}
    for ours, theirs in pairs.items():
        assert got[theirs] == pytest.approx(want[ours], abs=1e-6), ours
    # MAP@100 (theirs) is 1/rank cut at 100, map (ours) 1/rank: equal up to the queries ranked beyond 100
    assert got["dev_cosine_map@100"] <= want["map"] + 1e-6
    assert got["dev_cosine_map@100"] == pytest.approx(want["map"], abs=0.01)
    with pytest.raises(ValueError, match="aligned"):
        fst.bitext_evaluator(en, sw[:-1])


def test_reranking_evaluator_matches_fastot_metrics(tmp_path):
    """CrossEncoderRerankingEvaluator against fastot's dense metrics on the scores of the same cross-encoder."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    from fastot.ir.metrics import evaluate

    model = CrossEncoder(_tiny_bert(tmp_path / "ce", head=True, seed=5), num_labels=1, device="cpu")
    with torch.no_grad():  # a random head's logits sit within float32 rounding of 0: spread them (no ties)
        model[0].auto_model.classifier.weight.mul_(200.0)
    samples = [{"query": EN[q], "positive": [SW[(q + k) % 12] for k in range(1 + q % 2)],
                "negative": [SW[(q + k) % 12] for k in range(1 + q % 2, 9)]} for q in range(12)]
    got = CrossEncoderRerankingEvaluator(samples, at_k=5, name="dev", write_csv=False)(model)
    docs = [s["positive"] + s["negative"] for s in samples]
    scores = torch.tensor([model.predict([(s["query"], d) for d in ds]).tolist() for s, ds in zip(samples, docs)])
    assert len(torch.unique(scores)) == scores.numel()  # no ties: the two tie orders cannot matter
    grades = torch.tensor([[1] * len(s["positive"]) + [0] * len(s["negative"]) for s in samples])
    want = evaluate(scores, grades, ["mrr@5", "ndcg@5", "map"])
    assert got["dev_mrr@5"] == pytest.approx(want["mrr@5"], abs=1e-6)
    assert got["dev_ndcg@5"] == pytest.approx(want["ndcg@5"], abs=1e-6)
    assert got["dev_map"] == pytest.approx(want["map"], abs=1e-6)


def test_old_import_paths_warn_and_are_the_new_modules():
    import importlib
    import sys

    for old, new in (("fastot.metrics", "fastot.ir.metrics"), ("fastot.bm25", "fastot.ir.bm25"),
                     ("fastot.retrieval", "fastot.ir.retrieval"), ("fastot.irdata", "fastot.ir.data"),
                     ("fastot.stats", "fastot.ir.stats"), ("fastot.domains", "fastot.experiments.domains"),
                     ("fastot.synthetic", "fastot.experiments.synthetic")):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
            mod = importlib.import_module(old)
        assert mod is importlib.import_module(new)
    with pytest.warns(DeprecationWarning, match="fastot.ir.data.read_bitext"):
        from fastot.lexicons import read_bitext
    assert read_bitext is importlib.import_module("fastot.ir").read_bitext
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            _ = importlib.import_module("fastot.lexicons").no_such_name


def test_cross_encoder_fit_switches_too(tmp_path, lexicon):
    """The deprecated ``CrossEncoder.fit`` runs CrossEncoderTrainer with a loss that tokenizes through
    ``preprocess``: the hook switches its batches as well."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.sentence_transformer.readers.input_example import InputExample

    model = CrossEncoder(_tiny_bert(tmp_path / "ce", head=True), num_labels=1, device="cpu", max_length=48)
    hook = fst.code_switch(model, fastot.CodeSwitcher(lexicon, p=0.5, seed=3))
    examples = [InputExample(texts=[r["query"], r["passage"]], label=r["label"]) for r in _rerank_rows(16)]
    loader = torch.utils.data.DataLoader(examples, batch_size=8, shuffle=False)
    model.fit(loader, epochs=1, warmup_steps=0, show_progress_bar=False, output_path=str(tmp_path / "fit"))
    assert hook.calls == 2
    assert int(hook.pop_stats()["switched"]) > 0


def test_cached_loss_replays_the_switch_of_its_first_pass(tmp_path, lexicon):
    """CachedMultipleNegativesRankingLoss tokenizes each mini-batch without gradients, then again with them to
    replay it: the replay must see the first pass's switched ids (else its gradients belong to other inputs)."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import CachedMultipleNegativesRankingLoss

    model = CrossEncoder(_tiny_bert(tmp_path / "ce", head=True), num_labels=1, device="cpu", max_length=48)
    hook = fst.code_switch(model, fastot.CodeSwitcher(lexicon, p=0.5, seed=4))
    passes = []
    model[0].auto_model.bert.embeddings.register_forward_pre_hook(
        lambda m, a, kw: passes.append((torch.is_grad_enabled(), kw["input_ids"].clone())), with_kwargs=True)
    rows = datasets.Dataset.from_list([{"query": EN[i], "positive": EN[(i + 3) % 12]} for i in range(12)])
    loss = CachedMultipleNegativesRankingLoss(model, num_negatives=2, mini_batch_size=4)
    args = _train_args(CrossEncoderTrainingArguments, tmp_path, max_steps=1, per_device_train_batch_size=6)
    CrossEncoderTrainer(model=model, args=args, loss=loss, train_dataset=rows).train()
    first = [ids for grad, ids in passes if not grad]
    replay = [ids for grad, ids in passes if grad]
    assert len(first) == len(replay) > 1
    assert all(torch.equal(a, b) for a, b in zip(first, replay))
    assert hook.calls == len(first) and int(hook.pop_stats()["switched"]) > 0
