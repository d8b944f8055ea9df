"""The lmms-eval wrapper, exercised without lmms-eval through request-like objects."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import SimpleNamespace

import pytest

from token_reduction.vlm import lmms_eval as wrapper
from token_reduction.vlm.lmms_eval import TokenReductionLlava


def request(context: str, doc_id: int, gen_kwargs: dict | None = None):
    gen = {"max_new_tokens": 3, "until": ["</s>"]} if gen_kwargs is None else gen_kwargs
    return SimpleNamespace(args=(context, gen, lambda doc: [doc["image"]], doc_id, "tiny_vqa", "test"))


@pytest.fixture()
def lmm(saved_models, images) -> TokenReductionLlava:
    model = TokenReductionLlava(pretrained=str(saved_models["next"]), selector=str(saved_models["selector"]), keep="0.5", device="cpu")
    model.task_dict = {"tiny_vqa": {"test": [{"image": images[0]}, {"image": images[1]}]}}
    return model


def test_answers_a_request_with_pruned_images(lmm):
    answers = lmm.generate_until([request("what is in the image ?", 0)])
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert len(lmm.tokens_before) == 1 and lmm.tokens_after[0] < lmm.tokens_before[0]


def test_batches_requests_and_keeps_their_order(lmm):
    requests = [request("what is in the image ?", 0), request("describe it", 1), request("describe it", 0, {"max_new_tokens": 2})]
    lmm.batch_size = 2
    batched = lmm.generate_until(requests)
    lmm.batch_size = 1
    assert batched == lmm.generate_until(requests)
    assert lmm.tokens_after[:3] == lmm.tokens_after[3:]


def test_model_args_are_parsed_from_strings(saved_models):
    adaptive = TokenReductionLlava(pretrained=str(saved_models["next"]), selector="random", keep="64", batch_size="4", device="cpu")
    assert adaptive.pruned.keep == 64 and adaptive.batch_size == 4
    with pytest.raises(ValueError, match="unknown model_args"):
        TokenReductionLlava(pretrained=str(saved_models["next"]), selector="random", keep="0.5", kepp="0.1")


def test_the_checkpoints_model_type_picks_the_registered_wrapper(saved_models, monkeypatch):
    from token_reduction.vlm import families
    from token_reduction.vlm.llava_next import PrunedLlavaNext

    class Marked(PrunedLlavaNext):
        pass

    monkeypatch.setattr(families, "_loaders", {"llava_next": lambda: Marked})
    lmm = TokenReductionLlava(pretrained=str(saved_models["next"]), selector="random", keep="0.5", device="cpu")
    assert type(lmm.pruned) is Marked


def test_an_unsupported_checkpoint_is_one_line_before_any_weights_load(tmp_path, saved_models):
    from transformers import LlamaConfig

    from token_reduction.errors import UserError

    LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, vocab_size=16).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"model_type='llama'.*supported model types: .*llava_next"):
        TokenReductionLlava(pretrained=str(tmp_path), selector="random", keep="0.5", device="cpu")


def test_loglikelihood_is_clearly_unsupported(lmm):
    with pytest.raises(NotImplementedError, match="generate_until"):
        lmm.loglikelihood([request("what is in the image ?", 0)])


def test_stop_strings_cut_the_answer():
    assert TokenReductionLlava._cut("a cat\n\nmore", ["\n\n"]) == "a cat"


def test_registration_is_skipped_without_lmms_eval():
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        assert wrapper.register_with_lmms_eval() is None and wrapper.TokenReductionLmms is None
        assert wrapper.main(["--help"]) == 1
    else:  # pragma: no cover - only where lmms-eval is installed
        assert issubclass(wrapper.TokenReductionLmms, TokenReductionLlava)


FAKE_LMMS_EVAL = {
    "lmms_eval/__init__.py": "",
    "lmms_eval/api/__init__.py": "",
    "lmms_eval/api/model.py": """
import abc


class lmms(abc.ABC):
    is_simple = True

    def __init__(self):
        self._rank, self._world_size, self.task_dict = 0, 1, {}

    @abc.abstractmethod
    def loglikelihood(self, requests): ...

    @abc.abstractmethod
    def generate_until(self, requests): ...

    @abc.abstractmethod
    def generate_until_multi_round(self, requests): ...
""",
    "lmms_eval/api/registry.py": """
MODEL_REGISTRY = {}


def register_model(*names):
    def decorate(cls):
        for name in names:
            MODEL_REGISTRY[name] = cls
        return cls

    return decorate
""",
}


@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is not None, reason="the real lmms-eval is installed")
def test_registers_with_lmms_eval_when_it_is_importable(tmp_path, saved_models):
    """A minimal stand-in for lmms-eval's ``lmms`` base class and ``register_model`` decorator."""
    for path, text in FAKE_LMMS_EVAL.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.reload(wrapper)
        registered = importlib.import_module("lmms_eval.api.registry").MODEL_REGISTRY["token_reduction"]
        assert registered is module.TokenReductionLmms
        assert issubclass(registered, importlib.import_module("lmms_eval.api.model").lmms)
        lmm = registered(pretrained=str(saved_models["next"]), selector="random", keep="0.5", device="cpu")
        assert lmm.task_dict == {} and lmm.rank == 0 and lmm.world_size == 1
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name == "lmms_eval" or name.startswith("lmms_eval.")]:
            del sys.modules[name]
        importlib.reload(wrapper)
    assert wrapper.TokenReductionLmms is None
