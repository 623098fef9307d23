"""fastot in the Hugging Face ``Trainer`` (extra ``fastot[hf]``: transformers and accelerate).

Code-switched cross-encoder training: :class:`fastot.CodeSwitchCollator` batches are model inputs and labels
only, so it is the ``data_collator`` as is; :class:`CodeSwitchStatsCallback` puts its switching statistics into
the Trainer's logs::

    collator = fastot.CodeSwitchCollator(tokenizer, fastot.CodeSwitcher(lexicon, p=0.5), max_length=256,
                                         label_dtype=torch.long)
    args = TrainingArguments("out", remove_unused_columns=False)   # the collator needs the text columns
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    CodeSwitchStatsCallback.attach(trainer, collator)               # cs_switched_ratio, ... in every log
    trainer.train()

OT distillation: :class:`OTDistillationTrainer` (a ``Trainer`` whose ``compute_loss`` is the OT loss between a
frozen teacher and the student) with :class:`BitextCollator`.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..losses import OTDistillationLoss, content_mask

__all__ = ["BitextCollator", "CodeSwitchStatsCallback", "OTDistillationTrainer", "average_across_processes"]


def average_across_processes(module: nn.Module) -> None:
    """Inside an initialised process group of several processes, average the gradients of ``module``'s trainable
    parameters over the processes as they are computed (a hook per parameter, registered once). For the loss's
    projection, which the trainers' DistributedDataParallel does not wrap: without it each process would train its
    own copy. Does nothing in a single process."""
    dist = torch.distributed
    if getattr(module, "_fastot_averaged", False) or not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    if world > 1:
        for p in module.parameters():
            if p.requires_grad:
                p.register_hook(lambda g: _averaged(g, world))
    module._fastot_averaged = True


def _averaged(grad: torch.Tensor, world: int) -> torch.Tensor:
    grad = grad.clone()
    torch.distributed.all_reduce(grad)
    return grad / world


class CodeSwitchStatsCallback(TrainerCallback):
    """Adds the code-switching frequency since the previous training log to each training log of a ``Trainer``:
    ``cs_switched_ratio`` (switched words / words), ``cs_switched_ratio_<lang>`` per active language and
    ``cs_words``.

    Args:
        source: a :class:`fastot.CodeSwitchCollator` with ``stats="collect"`` (its default), or the hook of
            ``fastot.integrations.sentence_transformers.code_switch``.
        prefix: the keys' prefix (default ``"cs_"``).

    The Trainer collates evaluation batches with its one ``data_collator``. :meth:`attach` gives the evaluation a
    copy of the collator that only tokenizes and cuts (``gate``: nothing switched, nothing counted, the training
    draws unmoved); a callback given in ``callbacks=[...]`` cannot reach the Trainer to do that, so there
    evaluation batches are switched and counted like training ones.

    The counts are this process's batches (under torchrun, its share), counted when a batch is collated. The
    Trainer's loader (accelerate's) collates one batch ahead of the step that uses it, so a log's window is
    shifted by one batch (the sum over the run is exact), and a log with no batch collated since the previous
    one gets no values. They are read when the Trainer logs (one host synchronisation per log, not per step).
    With ``dataloader_num_workers > 0`` the batches are collated in the workers, whose copies of the collator
    this callback cannot see: it warns once and logs nothing.

    Give it to ``Trainer(callbacks=[...])``, or use :meth:`attach`, which puts it first so that the reporting
    integrations (TensorBoard, W&B, ...) that run after it see the values too.
    """

    def __init__(self, source, prefix: str = "cs_"):
        if not all(hasattr(source, a) for a in ("pop_stats", "switch_ratios", "calls")):
            raise TypeError(f"source: expected a CodeSwitchCollator or a code_switch hook, got {type(source).__name__}")
        if getattr(source, "stats", "collect") != "collect":
            raise ValueError("source: the collator must collect its statistics (CodeSwitchCollator(stats='collect'), "
                             "the default); with stats='batch' each batch carries them instead")
        self.source, self.prefix = source, prefix
        self._warned = False

    @classmethod
    def attach(cls, trainer: Trainer, source, prefix: str = "cs_") -> CodeSwitchStatsCallback:
        """Create the callback and insert it as ``trainer``'s first callback; when ``source`` is the trainer's
        ``data_collator``, evaluation dataloaders get an unswitched copy of it. Returns the callback."""
        cb = cls(source, prefix)
        trainer.callback_handler.callbacks.insert(0, cb)
        if source is trainer.data_collator and hasattr(source, "gate"):
            quiet = copy.copy(source)
            quiet.gate = lambda: False
            original = trainer.get_eval_dataloader

            def get_eval_dataloader(*args, **kwargs):
                trainer.data_collator = quiet  # read once, when the loader is built
                try:
                    return original(*args, **kwargs)
                finally:
                    trainer.data_collator = source

            trainer.get_eval_dataloader = get_eval_dataloader
        return cb

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # training logs only (evaluation logs have eval_loss)
            return
        if self.source.calls == 0:
            if not self._warned and getattr(args, "dataloader_num_workers", 0):
                warnings.warn("CodeSwitchStatsCallback: the collator runs in the DataLoader workers, so its "
                              "statistics are not seen here; use dataloader_num_workers=0, or "
                              "CodeSwitchCollator(stats='batch') in a loop of your own", RuntimeWarning, stacklevel=2)
                self._warned = True
            return
        stats = self.source.pop_stats()
        if int(stats["words"]) == 0:  # nothing collated since the previous log
            return
        ratios = self.source.switch_ratios(stats)
        p = self.prefix
        add = {f"{p}switched_ratio": ratios.pop("overall"), **{f"{p}switched_ratio_{k}": v for k, v in ratios.items()},
               f"{p}words": int(stats["words"])}
        logs.update(add)
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step and "loss" in last:
            last.update(add)  # the Trainer appended this log before calling the callbacks


class BitextCollator:
    """Tokenizes (English, target) pairs for :class:`OTDistillationTrainer`.

    Items: ``(english, target)`` tuples or dicts with ``source_key`` and ``target_key``. Returns the student's
    inputs (``input_ids``, ``attention_mask`` of the target sentences), the teacher's (``teacher_input_ids``,
    ``teacher_attention_mask`` of the English ones), and the OT marginals' masks ``token_mask`` /
    ``teacher_token_mask`` (real tokens, the special ones left out unless ``include_special``).

    Args:
        tokenizer: the student's tokenizer.
        teacher_tokenizer: the teacher's (default: the student's).
        max_length: tokens per sentence, both sides (default 128, as ``fastot distill``).
    """

    def __init__(self, tokenizer, teacher_tokenizer=None, *, max_length: int = 128, source_key: str = "en",
                 target_key: str = "tgt", include_special: bool = False):
        if not callable(tokenizer) or not hasattr(tokenizer, "all_special_ids"):
            raise TypeError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length: expected an integer >= 1, got {max_length!r}")
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer or tokenizer
        self.max_length, self.source_key, self.target_key = max_length, source_key, target_key
        self.include_special = bool(include_special)

    def _split(self, items: Sequence) -> tuple[list[str], list[str]]:
        en, tgt = [], []
        for i, item in enumerate(items):
            if isinstance(item, Mapping):
                if self.source_key not in item or self.target_key not in item:
                    raise ValueError(f"BitextCollator: items[{i}] must have keys {self.source_key!r} and "
                                     f"{self.target_key!r}, got {sorted(item)}")
                pair = item[self.source_key], item[self.target_key]
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                pair = tuple(item)
            else:
                raise ValueError(f"BitextCollator: items[{i}] must be an (english, target) pair or a dict, "
                                 f"got {type(item).__name__}")
            if not all(isinstance(t, str) for t in pair):
                raise TypeError(f"BitextCollator: items[{i}] must hold two strings")
            en.append(pair[0])
            tgt.append(pair[1])
        if not en:
            raise ValueError("BitextCollator: empty batch")
        return en, tgt

    def __call__(self, items: Sequence) -> dict[str, torch.Tensor]:
        en, tgt = self._split(items)
        kw = dict(padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        se, te = self.tokenizer(tgt, **kw), self.teacher_tokenizer(en, **kw)
        s_mask, t_mask = se["attention_mask"].bool(), te["attention_mask"].bool()
        if not self.include_special:
            s_mask = content_mask(se["input_ids"], s_mask, self.tokenizer.all_special_ids)
            t_mask = content_mask(te["input_ids"], t_mask, self.teacher_tokenizer.all_special_ids)
        return {"input_ids": se["input_ids"], "attention_mask": se["attention_mask"], "token_mask": s_mask,
                "teacher_input_ids": te["input_ids"], "teacher_attention_mask": te["attention_mask"],
                "teacher_token_mask": t_mask}


class OTDistillationTrainer(Trainer):
    """A ``Trainer`` that trains ``model`` (an encoder: its ``last_hidden_state``) by OT distillation from a frozen
    ``teacher`` on batches of :class:`BitextCollator`: ``compute_loss`` is :class:`fastot.OTDistillationLoss`
    between the student's and the teacher's token states.

    Args:
        teacher: the English encoder (frozen here, moved to the Trainer's device, kept in eval mode).
        ot_loss: the loss (default ``OTDistillationLoss()``: eps 0.05, 50 iterations, cosine cost, with a trained
            ``nn.Linear`` projection when the widths differ). Its trainable parameters join the optimizer (weight
            decay as the model's matrices), are saved with each checkpoint as ``ot_loss.pt`` and loaded on resume,
            and under torchrun have their gradients averaged over the processes. The Trainer clips the model's
            gradients only (``fastot distill`` clips the projection's with them).
        everything else: as ``Trainer``. The text columns are kept for the collator (``remove_unused_columns`` is
        not applied), and the default ``data_collator`` is ``BitextCollator(processing_class)``.
    """

    def __init__(self, *args, teacher: nn.Module, ot_loss: OTDistillationLoss | None = None, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if teacher is None or teacher is model:
            raise ValueError("teacher: pass the frozen English encoder (a second model, not the student)")
        if kwargs.get("data_collator") is None and kwargs.get("processing_class") is not None:
            kwargs["data_collator"] = BitextCollator(kwargs["processing_class"])
        super().__init__(*args, **kwargs)
        self._given_optimizer = self.optimizer is not None
        if ot_loss is None:
            d_s, d_t = self.model.config.hidden_size, teacher.config.hidden_size
            ot_loss = OTDistillationLoss(projection=nn.Linear(d_s, d_t) if d_s != d_t else None)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.ot_loss = ot_loss.to(self.args.device)

    def _remove_unused_columns(self, dataset, description=None):
        return dataset  # the collator tokenizes the text columns itself (datasets.Dataset)

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator  # the same, for lists and torch datasets of dicts

    def create_optimizer(self, *args, **kwargs):
        opt = super().create_optimizer(*args, **kwargs)
        have = {id(p) for group in opt.param_groups for p in group["params"]}
        extra = [p for p in self.ot_loss.parameters() if p.requires_grad and id(p) not in have]
        if extra and self._given_optimizer:
            raise ValueError("optimizers: the optimizer given to the Trainer lacks the parameters of ot_loss (its "
                             "projection); add trainer.ot_loss.parameters() to it")
        if extra:
            decay = [p for p in extra if p.dim() >= 2]
            rest = [p for p in extra if p.dim() < 2]
            for params, wd in ((decay, self.args.weight_decay), (rest, 0.0)):
                if params:
                    opt.add_param_group({"params": params, "weight_decay": wd})
        return opt

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        average_across_processes(self.ot_loss)
        self.teacher.eval()
        with torch.no_grad():
            ht = self.teacher(input_ids=inputs["teacher_input_ids"],
                              attention_mask=inputs["teacher_attention_mask"]).last_hidden_state
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = self.ot_loss(out.last_hidden_state, inputs["token_mask"], ht, inputs["teacher_token_mask"])
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the OT loss of the batch (``eval_loss``); there are no labels or logits."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, "ot_loss.pt")
        if os.path.isfile(path):
            self.ot_loss.load_state_dict(torch.load(path, map_location=self.args.device, weights_only=True))

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        if any(True for _ in self.ot_loss.parameters()):
            out = output_dir if output_dir is not None else self.args.output_dir
            torch.save(self.ot_loss.state_dict(), os.path.join(out, "ot_loss.pt"))
