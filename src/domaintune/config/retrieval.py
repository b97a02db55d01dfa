"""The `retrieval:` section: a knowledge base read by the model at training and at serving time.

    retrieval:
      kb: train          # build one from the prepared training pairs into the run folder
      k: 3               # entries per prompt
      max_tokens: 160    # the reference block's token budget

With `kb` set, training puts each example's top-k entries (never the example itself or a
duplicate) into its prompt; the run records the knowledge base's hash, and eval, serve, chat and
export retrieve the same way (models/context.py has the rendering).
"""

from __future__ import annotations

from pydantic import Field

from domaintune.config.base import Section

TRAIN_KB = "train"


class RetrievalConfig(Section):
    kb: str | None = Field(None, description="Knowledge base: a folder from `domaintune kb build`, or 'train' to "
                                             "build one from the prepared training pairs (None: no retrieval).")
    k: int = Field(3, ge=1, le=64, description="Entries retrieved per prompt.")
    max_tokens: int = Field(160, ge=16, description="Token budget of the reference block in the prompt.")
