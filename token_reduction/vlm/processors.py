"""Loading any supported family's processor, also where transformers' video processor cannot load.

transformers' video processors need torchvision (and SmolVLM's processor num2words), which a
CPU-only or image-only install lacks; ``AutoProcessor`` then fails although images need neither.
:func:`load_processor` falls back to the family's processor class built from the parts that load
(the PIL image processor, the tokenizer, the folder's chat template), and says in one line which
package to install when even that is impossible.
"""

from __future__ import annotations

import json
import os
from typing import Any, NoReturn

# ---------------------------------------------------------------------------------- loading
KEPT = ("image_processor", "tokenizer")
"""The sub-processors a rebuilt processor keeps: both load without torchvision (PIL image processors)."""
OPTIONAL_PARTS = ("Can't load video processor", "Can't load feature extractor")
"""How ``AutoProcessor``'s errors begin when a folder lacks a part the image path does not need."""


def _folder_file(pretrained: str | os.PathLike[str], name: str) -> str | None:
    from transformers.utils import cached_file

    return cached_file(str(pretrained), name, _raise_exceptions_for_missing_entries=False)


def _processor_settings(pretrained: str | os.PathLike[str]) -> dict[str, Any]:
    path = _folder_file(pretrained, "processor_config.json")
    if path is None:
        return {}
    with open(path) as handle:
        return json.load(handle)


def _chat_template(pretrained: str | os.PathLike[str], tokenizer: Any) -> Any:
    """The folder's chat template (``chat_template.jinja`` / ``.json``), else the tokenizer's."""
    path = _folder_file(pretrained, "chat_template.jinja")
    if path is not None:
        with open(path) as handle:
            return handle.read()
    path = _folder_file(pretrained, "chat_template.json")
    if path is not None:
        with open(path) as handle:
            return json.load(handle).get("chat_template")
    return getattr(tokenizer, "chat_template", None)


def missing_package(err: BaseException) -> str | None:
    """The optional package an ``ImportError`` from transformers says is missing (``None`` if it names none)."""
    import re

    name = getattr(err, "name", None)
    if isinstance(err, ModuleNotFoundError) and name:
        return name.split(".")[0]
    text = str(err)
    found = re.search(r"requires the (\w+) library", text) or re.search(r"pip install (\S+?)`?(?:\s|\.|$)", text)
    if found is None:
        found = re.search(r"[Pp]ackage `(\w+)` is required", text)
    return found[1].lower() if found else None


def _install_hint(package: str) -> str:
    return f"needs the optional package {package}: pip install {package}"


def image_only_processor(processor_class: type) -> type:
    """``processor_class`` holding only an image processor and a tokenizer.

    transformers' video processors need torchvision and Gemma 4's audio feature extractor is not
    needed for images, so both are dropped: ``get_attributes`` lists only :data:`KEPT`, and the
    sub-processors the family's ``__init__`` hands on positionally (in its own attribute order, e.g.
    Gemma 4's ``feature_extractor, image_processor, tokenizer, video_processor``) are matched by
    name, the dropped ones (passed as ``None``) left out.
    """
    from transformers.processing_utils import ProcessorMixin

    attributes = list(processor_class.get_attributes())

    class DropMissing(ProcessorMixin):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if len(args) > len(attributes):
                raise TypeError(f"{processor_class.__name__} takes {len(attributes)} sub-processors, got {len(args)}")
            kwargs.update(zip(attributes, args))
            for name in attributes:
                if name not in KEPT and kwargs.get(name, "kept") is None:
                    del kwargs[name]
            super().__init__(**kwargs)

    class ImageOnlyProcessor(processor_class, DropMissing):  # type: ignore[misc, valid-type]
        @classmethod
        def get_attributes(cls) -> list[str]:
            return list(KEPT)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"ImageOnly{processor_class.__name__}"
    return ImageOnlyProcessor


def _pixtral_processor_class() -> type:
    """transformers' ``PixtralProcessor`` without torchvision.

    Its module imports ``get_resize_output_image_size`` from the torchvision image processor's
    module (only for ``_get_num_multimodal_tokens``); the PIL image processor's module holds the same
    function, so it stands in while the processor module is imported. Nothing else in the processor
    needs torchvision: images go through ``PixtralImageProcessorPil``.
    """
    import importlib
    import sys

    torchvision_module = "transformers.models.pixtral.image_processing_pixtral"
    processor_module = "transformers.models.pixtral.processing_pixtral"
    if processor_module in sys.modules:
        return sys.modules[processor_module].PixtralProcessor
    saved = sys.modules.get(torchvision_module)
    sys.modules[torchvision_module] = importlib.import_module("transformers.models.pixtral.image_processing_pil_pixtral")
    try:
        return importlib.import_module(processor_module).PixtralProcessor
    finally:
        if saved is None:
            sys.modules.pop(torchvision_module, None)
        else:
            sys.modules[torchvision_module] = saved


def importable_processor_class(name: str) -> type:
    """transformers' processor class ``name``, also where it is a placeholder for a missing backend.

    ``PixtralProcessor`` (Mistral3, Pixtral-12B) is rebuilt from its module (see
    :func:`_pixtral_processor_class`); any other class whose backend is missing raises ``ImportError``
    naming the package.
    """
    import transformers
    from transformers.utils.import_utils import DummyObject

    found = getattr(transformers, name)
    if not isinstance(found, DummyObject):
        return found
    if name == "PixtralProcessor":
        try:
            return _pixtral_processor_class()
        except ImportError:
            pass
    backends = ", ".join(getattr(found, "_backends", ()) or ["an optional package"])
    raise ImportError(f"{name} requires the {backends} library")


def processor_class_for(model_type: str) -> type:
    """transformers' processor class for ``model_type`` (e.g. ``LlavaOnevisionProcessor``).

    A class whose optional backend is missing comes back as transformers' placeholder (it raises on
    use); :func:`importable_processor_class` gives the usable class where one can be had.
    """
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if not isinstance(name, str) or not hasattr(transformers, name):
        raise ValueError(f"cannot build a processor for model type {model_type!r}: transformers maps it to no processor class")
    return getattr(transformers, name)


def _processor_class_name(model_type: str, settings: dict[str, Any]) -> str:
    """The folder's own processor class (Pixtral-12B is ``llava`` with a ``PixtralProcessor``), else the model type's."""
    import transformers

    named = settings.get("processor_class")
    if isinstance(named, str):
        named = named.removeprefix("ImageOnly")  # saved by image_only_processor's class
        if named.endswith("Processor") and hasattr(transformers, named):
            return named
    return processor_class_for(model_type).__name__


class _WithoutNum2words:
    """Lets SmolVLM's processor be built without ``num2words``, which it only uses for video prompts.

    ``SmolVLMProcessor.__init__`` refuses to run without the package, though only its video path
    (``replace_video_token``: frame counts spelled out in words) calls it; images never do. While the
    processor is built, the module's missing ``num2words`` is a stand-in (which would raise a
    one-line ``ImportError`` if called); it is put back to what it was afterwards.
    """

    def __init__(self, processor_class: type) -> None:
        import sys

        self.modules = [sys.modules.get(klass.__module__) for klass in processor_class.__mro__]
        self.modules = [module for module in self.modules if module is not None and hasattr(module, "num2words")]

    @staticmethod
    def missing(*args: Any, **kwargs: Any) -> NoReturn:
        raise ImportError(f"SmolVLM video prompts {_install_hint('num2words')}")

    def __enter__(self) -> None:
        self.saved = [(module, module.num2words) for module in self.modules]
        for module, value in self.saved:
            if value is None:
                module.num2words = self.missing

    def __exit__(self, *exc: Any) -> None:
        for module, value in self.saved:
            module.num2words = value


def rebuild_processor(pretrained: str | os.PathLike[str]) -> Any:
    """The folder's processor class assembled from ``AutoImageProcessor`` + ``AutoTokenizer`` only.

    The class is the one ``processor_config.json`` names (else transformers' class for the model
    type), less its video processor / audio feature extractor (:func:`image_only_processor`); its
    settings come from ``processor_config.json`` and the chat template from the folder.
    """
    import inspect

    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    settings = _processor_settings(pretrained)
    name = _processor_class_name(AutoConfig.from_pretrained(pretrained).model_type, settings)
    try:
        base = importable_processor_class(name)
        tokenizer = AutoTokenizer.from_pretrained(pretrained)
        image_processor = AutoImageProcessor.from_pretrained(pretrained)  # the PIL class without torchvision
        attributes = base.get_attributes()
        accepted = set(inspect.signature(base.__init__).parameters) - {"self", *attributes}
        kwargs: dict[str, Any] = {key: value for key, value in settings.items() if key in accepted}
        kwargs.setdefault("chat_template", _chat_template(pretrained, tokenizer))
        kwargs.update({attribute: None for attribute in attributes if attribute not in KEPT})
        with _WithoutNum2words(base):
            return image_only_processor(base)(image_processor=image_processor, tokenizer=tokenizer, **kwargs)
    except ImportError as err:
        package = missing_package(err)
        if package is None:
            raise
        from token_reduction.errors import UserError

        raise UserError(pretrained, "processor", f"{name} {_install_hint(package)}") from err


def load_processor(pretrained: str | os.PathLike[str]) -> Any:
    """The model's processor; rebuilt from tokenizer + image processor when it cannot be loaded whole.

    ``AutoProcessor`` fails when a sub-processor needs an optional package that is not installed
    (torchvision for the video processors of LLaVA-OneVision, Qwen-VL, SmolVLM, Gemma 4 and for
    ``PixtralProcessor``; num2words for SmolVLM) or when the folder lacks the video processor or
    audio feature extractor the class expects, and it falls back to a bare tokenizer for folders
    saved by an unregistered processor class. Then :func:`rebuild_processor` assembles the family's
    processor from the parts that load (videos then use :func:`frames_to_pixels`); a processor that
    cannot be had at all is a one-line ``UserError`` naming the package to install. The tokenizer
    pads on the left, as batched generation needs.
    """
    from transformers import AutoProcessor

    processor: Any = None
    try:
        processor = AutoProcessor.from_pretrained(pretrained)
    except ImportError as err:
        if missing_package(err) is None:
            raise
    except OSError as err:  # a folder saved without the video processor / audio feature extractor
        if not str(err).startswith(OPTIONAL_PARTS):
            raise
    if processor is None or not hasattr(processor, "image_processor"):
        processor = rebuild_processor(pretrained)
    processor.tokenizer.padding_side = "left"
    return processor
