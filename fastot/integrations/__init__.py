"""fastot inside other libraries' training stacks. Each module imports its library, so import the one you use:

- :mod:`fastot.integrations.sentence_transformers` (extra ``fastot[st]``): the OT distillation loss for
  ``SentenceTransformerTrainer``, code-switching for ``CrossEncoderTrainer``, a bitext retrieval evaluator and
  fastot's length-grouped batch order;
- :mod:`fastot.integrations.hf` (extra ``fastot[hf]``): the Hugging Face ``Trainer``: code-switch statistics in
  its logs, OT distillation as a ``compute_loss`` override.
"""
