"""Text towers for the language-aligned adaptors (``clip``, ``siglip``).

A RADIO checkpoint's ``clip`` and ``siglip`` heads are trained to reproduce the *image* embeddings of
open_clip teachers (DFN CLIP ``ViT-H-14-378-quickgelu``/``dfn5b`` and SigLIP
``ViT-SO400M-14-SigLIP-384``/``webli``). Zero-shot classification and retrieval therefore need the
matching *text* tower of that teacher. This module builds it through open_clip (its pretrained-weight
mechanism when online, or a local weights file), drops the vision tower so only the text tower stays in
memory, and gives the adaptor the official API::

    tokens = adaptor.tokenizer(["a photo of a cat"])
    emb = adaptor.encode_text(tokens, normalize=True)

Nothing here downloads anything unless an open_clip pretrained *tag* is asked for; with ``lazy=True``
(what the model loader uses) even that is postponed to the first call of ``tokenizer``/``encode_text``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from openradio.atomicio import atomic_path, write_text
from openradio.runtime import module_device

__all__ = [
    "TextTower",
    "load_text_tower",
    "text_tower_key",
    "text_tower_from_model",
    "attach_text_tower",
    "maybe_attach_text_tower",
    "attach_text_towers",
    "TEXT_TOWER_TYPES",
    "text_embed_dim",
    "text_tower_problem",
    "text_tower_source",
    "write_random_text_tower",
]

# Teacher `type`s whose adaptors get a text tower (inference.md §5.1/§5.3).
TEXT_TOWER_TYPES = ("open_clip",)


def _conf_get(conf: Any, key: str, default: Any = None) -> Any:
    """Teacher configs are dicts in checkpoints, but accept Namespaces/objects too."""
    if isinstance(conf, Mapping):
        return conf.get(key, default)
    return getattr(conf, key, default)


class TextTower(nn.Module):
    """An open_clip model with its vision tower removed, plus its tokenizer.

    ``key`` identifies the weights (used to key on-disk caches of text embeddings, e.g. zero-shot
    classifiers); it is ``None`` when the weights cannot be identified cheaply and reliably.
    """

    def __init__(
        self, oc_model: nn.Module, tokenizer: Callable[..., torch.Tensor], *, key: str | None, name: str = ""
    ) -> None:
        super().__init__()
        # Only the text tower is needed; dropping `.visual` frees most of the memory of a ViT-H/SO400M.
        if getattr(oc_model, "visual", None) is not None:
            oc_model.visual = None
        oc_model.eval().requires_grad_(False)
        self.model = oc_model
        self._tokenizer = tokenizer
        self.key = key
        self.name = name

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def context_length(self) -> int | None:
        return getattr(self._tokenizer, "context_length", None)

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("tokenizer: got an empty list of texts; pass at least one string")
        return self._tokenizer(texts)

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embeddings (B, D) for token ids (B, L); L2-normalised when ``normalize``."""
        if not torch.is_tensor(tokens) or tokens.dim() != 2:
            raise ValueError(
                "encode_text expects a (batch, context_length) tensor of token ids from "
                f"adaptor.tokenizer(texts); got {type(tokens).__name__}"
                + (f" of shape {tuple(tokens.shape)}" if torch.is_tensor(tokens) else "")
            )
        tokens = tokens.to(self.device)
        return self.model.encode_text(tokens, normalize=normalize).float()

    def forward(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:  # nn.Module protocol
        return self.encode_text(tokens, normalize=normalize)

    @property
    def embed_dim(self) -> int:
        with torch.no_grad():
            tok = self.tokenize(["a"])
            return int(self.encode_text(tok).shape[-1])


def _weights_key(model: nn.Module) -> str:
    """A content hash of a model's weights (used for models passed in directly, e.g. small test towers)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "weights-sha256:" + h.hexdigest()


def _resolve_model_name(model_name: str) -> tuple[str, str]:
    """Accept an open_clip model name or a path to an open_clip model-config JSON.

    Returns (name usable with open_clip, a string identifying the architecture for cache keys).
    """
    # lazy: open_clip costs 1 s; radio_model() imports this module, few loads need a text tower
    import open_clip

    if model_name.startswith(("hf-hub:", "local-dir:")):
        return model_name, model_name
    if model_name.endswith(".json") or os.sep in model_name:
        path = Path(model_name)
        if not path.is_file():
            raise FileNotFoundError(
                f"text tower config {model_name!r} not found; pass an open_clip model name "
                "(e.g. ViT-H-14-378-quickgelu) or the path of an open_clip model-config JSON"
            )
        open_clip.add_model_config(path)  # registers it under the file's stem
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return path.stem, f"{path.stem}@config-sha256:{digest}"
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r}; known names are listed by "
            "open_clip.list_models(), or pass the path of a model-config JSON"
        )
    return model_name, model_name


def text_embed_dim(model_name: str) -> int | None:
    """The embedding width of an open_clip architecture (name or model-config JSON), read from its
    config without building anything; None when the config does not say (e.g. ``hf-hub:`` names)."""
    # lazy: open_clip costs 1 s; radio_model() imports this module, few loads need a text tower
    import open_clip

    name, _ = _resolve_model_name(model_name)
    cfg = open_clip.get_model_config(name)
    return int(cfg["embed_dim"]) if cfg and "embed_dim" in cfg else None


def summary_dim(adaptor: nn.Module) -> int | None:
    """The width of an adaptor's summary head (what zero-shot compares with text embeddings)."""
    head = getattr(adaptor, "head_mlp", None)
    if head is None:
        return None
    dim = getattr(head, "output_dim", None)
    if dim is None:
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        dim = linears[-1].out_features if linears else None
    return int(dim) if dim is not None else None


def text_tower_problem(adaptor: nn.Module, model_name: str, adaptor_name: str = "") -> str | None:
    """Why ``model_name``'s text tower cannot serve ``adaptor`` (their widths differ), or None.
    Costs a config lookup, never a build or a download."""
    want, have = summary_dim(adaptor), text_embed_dim(model_name)
    if want is None or have is None or want == have:
        return None
    name = adaptor_name or getattr(adaptor, "name", "") or "this"
    return (
        f"the {name} adaptor's summaries are {want}-dim but the text tower {model_name} embeds to {have}-dim: "
        "this checkpoint was not distilled from that teacher (a small random one? `openradio demo` writes "
        "its text towers next to the checkpoint); pass the matching tower with --text-model/--text-weights"
    )


def text_tower_source(
    teacher_conf: Mapping[str, Any] | Any,
    base_dir: str | os.PathLike | None = None,
) -> tuple[str | None, str | None, str | None]:
    """(open_clip model name or config JSON, pretrained tag, local weights) of a teacher's text tower.

    A teacher entry may name its own tower with ``text_model`` (+ ``text_weights``), paths relative to
    the checkpoint's folder ``base_dir`` (``openradio demo`` writes them for its small random teachers);
    otherwise the teacher's ``model`` and ``pretrained`` tag are the tower."""
    text_model = _conf_get(teacher_conf, "text_model")
    if text_model:

        def resolve(p):
            if not p:
                return None
            q = Path(p)
            return str(q if q.is_absolute() or base_dir is None else Path(base_dir) / q)

        model = resolve(text_model) if str(text_model).endswith(".json") else text_model
        return model, None, resolve(_conf_get(teacher_conf, "text_weights"))
    return _conf_get(teacher_conf, "model"), _conf_get(teacher_conf, "pretrained"), None


def write_random_text_tower(
    out_dir: str | os.PathLike,
    name: str,
    embed_dim: int,
    *,
    seed: int = 0,
    width: int = 32,
    layers: int = 2,
    heads: int = 2,
    context_length: int = 32,
) -> tuple[Path, Path]:
    """A small random open_clip text tower (open_clip's BPE tokenizer and text transformer) embedding to
    ``embed_dim``: writes ``NAME.json`` (an open_clip model config) and ``NAME.safetensors`` (its
    weights) and returns their paths. ``openradio demo`` pairs one with each small random teacher."""
    # lazy: open_clip costs 1 s; radio_model() imports this module, few loads need a text tower
    import open_clip

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {
        "embed_dim": int(embed_dim),
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": width,
            "heads": heads,
            "layers": layers,
        },
    }
    cfg_path = out / f"{name}.json"
    _atomic_write_text(cfg_path, json.dumps(cfg, indent=2) + "\n")
    open_clip.add_model_config(cfg_path)
    logging.disable(logging.WARNING)  # open_clip logs "no pretrained weights loaded": random on purpose
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            oc = open_clip.create_model(name, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    weights = out / f"{name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, str(tmp))
    return cfg_path, weights


def write_random_text_towers(
    out_dir: str | os.PathLike, embed_dims: Mapping[str, int], *, seed: int = 0
) -> dict[str, tuple[Path, Path]]:
    """:func:`write_random_text_tower` for each teacher name (``{name: embed_dim}``, seeds
    ``seed``, ``seed + 1``, ...): ``{name: (config JSON, weights)}``."""
    towers = {}
    for i, (name, dim) in enumerate(embed_dims.items()):
        # open_clip gives any model whose name contains 'siglip' the SigLIP tokenizer from the HF hub;
        # these towers use its bundled BPE tokenizer, so their names avoid that word
        file_name = name.lower().replace("siglip", "sig_lip") + "-text"
        towers[name] = write_random_text_tower(out_dir, file_name, int(dim), seed=seed + i)
    return towers


def _atomic_write_text(path: Path, text: str) -> None:
    write_text(path, text)


def _local_weights(weights: str | os.PathLike, model_name: str) -> Path:
    wpath = Path(weights).expanduser()
    if not wpath.is_file():
        raise FileNotFoundError(
            f"text tower weights {str(weights)!r} not found; pass an open_clip state-dict file for {model_name!r}"
        )
    return wpath


def text_tower_key(
    model_name: str, pretrained: str | None = None, *, weights: str | os.PathLike | None = None
) -> str | None:
    """The cache key of the tower ``load_text_tower`` would build, computed without building it.

    Local files are identified by path, size and modification time (hashing GBs of weights on every run
    would cost more than the cache saves); random weights have no key (never cached).
    """
    _, arch_key = _resolve_model_name(model_name)
    if weights is not None:
        wpath = _local_weights(weights, model_name)
        st = wpath.stat()
        return f"open_clip:{arch_key}:file:{wpath.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if pretrained:
        return f"open_clip:{arch_key}:{pretrained}"
    return None


def load_text_tower(
    model_name: str,
    pretrained: str | None = None,
    *,
    weights: str | os.PathLike | None = None,
    cache_dir: str | None = None,
    device: torch.device | str = "cpu",
) -> TextTower:
    """Build an open_clip text tower.

    * ``weights``: a local open_clip checkpoint (state dict) for ``model_name``; nothing is downloaded.
    * else ``pretrained``: an open_clip pretrained tag (e.g. ``dfn5b``, ``webli``), fetched through
      open_clip's download-and-cache mechanism (needs the network the first time).
    * neither: random initialisation (only useful for tests; the result is not cacheable).
    """
    # lazy: open_clip costs 1 s; radio_model() imports this module, few loads need a text tower
    import open_clip

    name, _ = _resolve_model_name(model_name)
    if weights is not None:
        wpath = _local_weights(weights, model_name)
        oc = open_clip.create_model_from_pretrained(
            name, pretrained=str(wpath), return_transform=False, device=device, cache_dir=cache_dir
        )
    elif pretrained:
        try:
            oc = open_clip.create_model_from_pretrained(
                name, pretrained=pretrained, return_transform=False, device=device, cache_dir=cache_dir
            )
        except Exception as e:  # network errors come in many types; say what to do instead
            reason = " ".join(str(e).split())
            raise RuntimeError(
                f"could not fetch the open_clip weights {pretrained!r} of the text tower {model_name!r}; without "
                "network access download them elsewhere and pass the file (--text-weights FILE, or weights=...). "
                f"Cause: {reason}"
            ) from e
    else:
        oc = open_clip.create_model(name, pretrained=None, device=device)
    key = text_tower_key(model_name, pretrained, weights=weights)
    try:
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as e:
        raise RuntimeError(
            f"could not build the tokenizer of {model_name!r} ({e}); SigLIP tokenizers come from "
            "the Hugging Face hub and need it cached locally when offline"
        ) from e
    tower = TextTower(oc, tokenizer, key=key, name=model_name)
    gc.collect()  # the dropped vision tower can be several GB
    return tower


def text_tower_from_model(
    oc_model: nn.Module, tokenizer: Callable[..., torch.Tensor] | None = None, *, key: str | None = None, name: str = ""
) -> TextTower:
    """Wrap an already-built open_clip model (e.g. a small random one in tests).

    Without ``tokenizer``, open_clip's default BPE tokenizer is used with the model's context length.
    Without ``key``, the weights are hashed so caches stay correct.
    """
    if not hasattr(oc_model, "encode_text"):
        raise TypeError(f"expected an open_clip model with encode_text(), got {type(oc_model).__name__}")
    if tokenizer is None:
        # lazy: open_clip costs 1 s; radio_model() imports this module, few loads need a text tower
        from open_clip.tokenizer import SimpleTokenizer

        ctx = int(getattr(oc_model, "context_length", 77))
        tokenizer = SimpleTokenizer(context_length=ctx)
    if key is None:
        key = _weights_key(oc_model)
    return TextTower(oc_model, tokenizer, key=key, name=name or type(oc_model).__name__)


def _install(adaptor: nn.Module, tower: TextTower) -> None:
    # Registered as a submodule (as the official adaptor does with its open_clip model) so that
    # `model.to(device)` / `.eval()` reach it.
    adaptor.text_tower = tower
    adaptor.text_tower_key = tower.key
    adaptor.tokenizer = tower.tokenize
    adaptor.encode_text = tower.encode_text


def attach_text_tower(
    adaptor: nn.Module,
    teacher_conf: Mapping[str, Any] | Any,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    model: nn.Module | TextTower | None = None,
    tokenizer: Callable[..., torch.Tensor] | None = None,
    lazy: bool = False,
    cache_dir: str | None = None,
    base_dir: str | os.PathLike | None = None,
) -> TextTower | None:
    """Give a ``clip``/``siglip`` adaptor ``tokenizer(texts)`` and ``encode_text(tokens, normalize=False)``.

    Args:
        adaptor: the adaptor module (``radio.adaptors['clip']``).
        teacher_conf: that teacher's entry of the checkpoint's ``args.teachers`` (``model`` = open_clip
            architecture, ``pretrained`` = open_clip tag).
        pretrained: fetch the teacher's pretrained tag through open_clip when no local ``weights`` are
            given; ``False`` builds random weights (tests only).
        weights: local open_clip weights file for the teacher's architecture (no network).
        model: an already-built open_clip model (or TextTower) to use instead of building one.
        tokenizer: tokenizer to go with ``model`` (default: open_clip's BPE tokenizer).
        lazy: build the tower on the first call of ``tokenizer``/``encode_text`` (then on the adaptor's
            device) instead of now; lets loading a model stay offline and light.
        base_dir: folder that relative ``text_model``/``text_weights`` entries of ``teacher_conf`` are
            relative to (the checkpoint's folder).

    A tower whose embedding width differs from the adaptor's summaries is refused before it is built
    (``ValueError``; when lazy, on the first call).

    Returns the TextTower (``None`` when lazy and not built yet).
    """
    if model is not None:
        tower = model if isinstance(model, TextTower) else text_tower_from_model(model, tokenizer)
        tower.to(module_device(adaptor))
        _install(adaptor, tower)
        return tower

    oc_name, tag, own_weights = text_tower_source(teacher_conf, base_dir)
    if not oc_name:
        raise ValueError(f"teacher config has no 'model' (open_clip architecture) entry: {teacher_conf!r}")
    tag = tag if pretrained else None
    weights = weights if weights is not None else own_weights
    problem = text_tower_problem(adaptor, oc_name)

    def build() -> TextTower:
        if problem:
            raise ValueError(problem)
        return load_text_tower(oc_name, tag, weights=weights, cache_dir=cache_dir, device=module_device(adaptor))

    if not lazy:
        tower = build()
        _install(adaptor, tower)
        return tower

    def _ensure() -> TextTower:
        tower = adaptor.__dict__.get("_modules", {}).get("text_tower")
        if tower is None:
            tower = build()
            _install(adaptor, tower)  # replaces these lazy stubs with the tower's bound methods
        return tower

    def tokenizer_stub(texts: str | Sequence[str]) -> torch.Tensor:
        return _ensure().tokenize(texts)

    def encode_text_stub(tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return _ensure().encode_text(tokens, normalize=normalize)

    # The key is known without building, so cached text embeddings can be used without ever loading the tower.
    adaptor.text_tower_key = None if problem else text_tower_key(oc_name, tag, weights=weights)
    adaptor.tokenizer = tokenizer_stub
    adaptor.encode_text = encode_text_stub
    return None


def maybe_attach_text_tower(adaptor: nn.Module, teacher_conf: Mapping[str, Any] | Any, **kwargs: Any) -> bool:
    """Loader hook: attach a (lazy, by default) text tower if the teacher is an open_clip model.

    Returns True when one was attached. Other teacher types (dino_v2, sam, ...) are left alone.
    """
    if _conf_get(teacher_conf, "type") not in TEXT_TOWER_TYPES:
        return False
    kwargs.setdefault("lazy", True)
    if kwargs["lazy"] and not text_tower_source(teacher_conf)[0] and kwargs.get("weights") is None:
        return False  # nothing names the architecture: no tower to promise (loading stays quiet)
    attach_text_tower(adaptor, teacher_conf, **kwargs)
    return True


def attach_text_towers(
    radio: nn.Module,
    *,
    names: Sequence[str] | None = None,
    weights: Mapping[str, str | os.PathLike] | None = None,
    pretrained: bool = True,
    lazy: bool = False,
    cache_dir: str | None = None,
) -> list[str]:
    """Attach text towers to every open_clip-type adaptor of a loaded RADIO model.

    Each adaptor's ``teacher_conf`` (its entry of the checkpoint's ``args.teachers``) names the open_clip
    architecture and pretrained tag. ``weights`` maps adaptor name -> local weights file. Returns the
    names of the adaptors that got a tower.
    """
    adaptors = getattr(radio, "adaptors", None)
    if adaptors is None:
        raise ValueError("the model has no adaptors; load it with adaptor_names=['clip'] (or 'siglip')")
    weights = dict(weights or {})
    version = str(getattr(radio, "version", "") or "")
    base_dir = Path(version).parent if version and os.path.isfile(version) else None  # a local checkpoint
    unknown = sorted(set(weights) - set(adaptors.keys()))
    if unknown:
        raise ValueError(
            f"text weights given for adaptor(s) {unknown} that the model does not have; "
            f"loaded adaptors: {sorted(adaptors.keys())}"
        )
    done = []
    for name, adaptor in adaptors.items():
        if names is not None and name not in names:
            continue
        conf = getattr(adaptor, "teacher_conf", None)
        if conf is None:
            continue
        if maybe_attach_text_tower(
            adaptor,
            conf,
            pretrained=pretrained,
            weights=weights.get(name),
            lazy=lazy,
            cache_dir=cache_dir,
            base_dir=base_dir,
        ):
            done.append(name)
    return done
