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

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..collate import BitextCollator
from ..losses import OTDistillationLoss

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
    copy of the collator that only tokenizes and cuts (``enabled=False``: nothing switched, nothing counted, the training
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
        if source is trainer.data_collator and hasattr(source, "enabled"):
            quiet = copy.copy(source)
            quiet.enabled = False
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
        average_across_processes(self.ot_loss)  # the Trainer's set-up has joined the process group by now

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
