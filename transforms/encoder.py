"""The model as the jobs use it: normalized embeddings in batches, loaded once per worker process.

:class:`Encoder` wraps a ``model/`` model and processor. It turns PIL images and strings into
L2-normalized float32 embeddings, batching texts by length (each batch padded to its own longest
text, truncated to the model's context) and halving a batch that runs out of GPU memory instead of
failing the bundle. :func:`acquire_encoder` keeps one encoder per worker process through
``apache_beam.utils.shared.Shared``.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from apache_beam.utils import shared
from PIL import Image

from clipbeam.transforms.heads import load_heads
from clipbeam.transforms.redact import redact_url
from clipbeam.transforms.spec import int8_problem

__all__ = [
    "Encoder",
    "acquire_encoder",
    "clipbeam_version",
    "model_loads",
    "resolve_device",
    "weights_fingerprint",
]

# One handle for the whole process: every DoFn of every pass shares the loaded model. The handle
# holds only a key; the model is built on first acquire, on the worker.
_SHARED = shared.Shared()
# How many times this process loaded each model (tag of acquire_encoder): one per worker process
# is the promise, which tests check on each worker of a cluster.
_LOADS: dict[tuple, int] = {}
_LOADS_LOCK = threading.Lock()


def resolve_device(device: str) -> torch.device:
    """Maps ``"auto"``, ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) to a device that exists.

    Raises:
        RuntimeError: CUDA was asked for and is not available. There is no fallback to CPU: a
            job sized for GPUs would run for days on CPU without anyone noticing.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"--device {device} was asked for, but torch {torch.__version__} sees no CUDA "
                "GPU on this machine. Run on a GPU worker (with a CUDA build of torch), or pass "
                "--device cpu (or auto) to run on CPU on purpose."
            )
        return torch.device(device)
    raise ValueError(f"device must be auto, cpu or cuda (got {device!r})")


def clipbeam_version() -> str:
    """The installed clipbeam version, or ``"unknown"`` when running from an uninstalled tree."""
    try:
        return importlib.metadata.version("clipbeam")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


_fingerprints: dict[str, str] = {}


def weights_fingerprint(source: str) -> str:
    """``"sha256:<hex>"`` of a checkpoint's weight files (see ``model.auto.weights_fingerprint``),
    cached per process: hashing a large checkpoint takes seconds."""
    if source not in _fingerprints:
        from clipbeam.model.auto import weights_fingerprint as fingerprint

        _fingerprints[source] = fingerprint(source)
    return _fingerprints[source]


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose ``pooler_output``
    holds the projected features (transformers 5); accept both API generations."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class Encoder:
    """A loaded model and processor that produce L2-normalized embeddings.

    Args:
        model: a CLIP or Chinese-CLIP model from ``model/`` (anything with the Hugging Face
            ``get_image_features`` / ``get_text_features`` / ``logit_scale`` API).
        processor: the matching processor (``.tokenizer`` and ``.image_processor``).
        device: where ``model`` lives.
        source: the checkpoint source, recorded in output metadata.
        batch_size: most rows per model call.
        heads: learned heads (``model.heads.Head``) by output name; they run on the image
            features of every image batch, on the model's device, in float32
            (:meth:`embed_pixels`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        device: torch.device,
        source: str = "",
        batch_size: int = 32,
        heads: Mapping[str, torch.nn.Module] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.device = device
        self.source = source
        self.batch_size = batch_size
        self.dtype = next(model.parameters()).dtype  # what inputs are cast to
        self.dtype_name = _dtype_name(model, self.dtype)
        self.projection_dim = int(model.config.projection_dim)
        # Truncate to what both the tokenizer and the position table allow: Chinese-CLIP's
        # tokenizer may claim 512 while a checkpoint was trained with a shorter context.
        positions = int(model.config.text_config.max_position_embeddings)
        self.context_length = min(int(self.tokenizer.model_max_length), positions)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        # Resolved once: every image of the job is preprocessed with these.
        self.image_settings = self.image_processor.resolve_settings()
        # Batch sizes shrink after an out-of-memory error and stay shrunk (per tower).
        self._limits = {"image": batch_size, "text": batch_size}
        self._lock = threading.Lock()
        self._metadata: dict[str, str] | None = None
        self.heads = {name: head.to(device).eval() for name, head in (heads or {}).items()}

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 32,
        compile: bool | None = None,
        heads: Sequence[tuple[str, str]] = (),
    ) -> Encoder:
        """Loads model and processor from ``source`` onto ``device``.

        Args:
            source: checkpoint folder, fsspec URL or hub id.
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            dtype: ``"auto"`` (float16 on GPU, bfloat16 on CPUs with native bfloat16, else
                float32; see ``model.runtime.compute_dtype``), ``"float32"``, ``"bfloat16"``,
                ``"float16"`` or ``"int8"`` (CPU only: int8 linear layers, see
                ``model.quantization``; with ``device="auto"`` it runs on CPU).
            batch_size: most rows per model call.
            compile: ``torch.compile`` the towers; ``None`` compiles on GPU only.
            heads: ``(name, source)`` of learned heads to run on the image features.

        Raises:
            HeadError: a head does not load or reads embeddings of another size.
        """
        from clipbeam.model import load_model, load_processor
        from clipbeam.model.quantization import INT8, quantize_int8
        from clipbeam.model.runtime import compile_towers, compute_dtype, should_compile

        if dtype == INT8:
            target = _int8_device(device, compile)
            model = quantize_int8(load_model(source, device=target, dtype=torch.float32))
        else:
            target = resolve_device(device)
            model = load_model(source, device=target, dtype=compute_dtype(dtype, target))
        if should_compile(compile, target):
            compile_towers(model)
        processor = load_processor(source)
        loaded = load_heads(heads, int(model.config.projection_dim), source) if heads else None
        return cls(
            model, processor, device=target, source=source, batch_size=batch_size, heads=loaded
        )

    @property
    def family(self) -> str:
        """``"clip"`` or ``"chinese_clip"``, from the model config."""
        return str(self.model.config.model_type)

    @property
    def logit_scale(self) -> float:
        """The learned temperature, ``exp(logit_scale)``, that turns cosines into logits."""
        return float(self.model.logit_scale.detach().float().exp())

    # -- images -------------------------------------------------------------------------------

    def encode_images(self, images: Sequence[Image.Image], *, mode: str = "exact") -> np.ndarray:
        """Normalized image embeddings, ``float32[len(images), projection_dim]``.

        Args:
            images: PIL images, loaded or only opened (fast mode then decodes JPEGs at reduced
                scale).
            mode: the preprocessing mode, ``"exact"`` or ``"fast"`` (see
                ``model.image_transforms``).
        """
        from clipbeam.model.image_transforms import process_image

        def batch(lo: int, hi: int) -> torch.Tensor:
            pixels = [
                process_image(image, self.image_settings, mode=mode) for image in images[lo:hi]
            ]
            return self._image_batch(np.stack(pixels))

        return self._run("image", len(images), batch)

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """Normalized image embeddings of preprocessed images, ``float32[N, projection_dim]``.

        Args:
            pixel_values: ``(N, C, H, W)`` model input, as ``process_image`` makes it with
                :attr:`image_settings`.
        """
        return self._run(
            "image", len(pixel_values), lambda lo, hi: self._image_batch(pixel_values[lo:hi])
        )

    def embed_pixels(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode_pixels` and the heads' outputs, from the same tower call.

        Returns:
            ``(embeddings, heads)``: ``float32[N, projection_dim]`` and ``float32[N, H]``, one
            column per head in :attr:`heads` order.
        """
        outputs = np.empty((len(pixel_values), len(self.heads)), dtype=np.float32)
        embeddings = self._run(
            "image",
            len(pixel_values),
            lambda lo, hi: self._image_batch(pixel_values[lo:hi]),
            heads_out=outputs,
        )
        return embeddings, outputs

    def apply_heads(self, embeddings: np.ndarray) -> np.ndarray:
        """The heads' outputs for embeddings computed earlier, ``float32[N, H]``."""
        features = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        return self._heads(features.to(self.device))

    @torch.inference_mode()
    def _heads(self, features: torch.Tensor) -> np.ndarray:
        if not self.heads:
            return np.empty((len(features), 0), dtype=np.float32)
        columns = [head(features) for head in self.heads.values()]
        out = torch.stack(columns, dim=1).cpu().numpy()
        if not np.isfinite(out).all():
            bad = [n for n, c in zip(self.heads, out.T, strict=True) if not np.isfinite(c).all()]
            raise FloatingPointError(f"heads {bad} produced non-finite outputs")
        return out

    @torch.inference_mode()
    def _image_batch(self, pixel_values: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(pixel_values).to(self.device, self.dtype)
        return _features(self.model.get_image_features(pixel_values=pixels))

    # -- texts --------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[dict[str, list[int]]]:
        """Token ids (and masks) per text, truncated to the context, not padded."""
        encoded = self.tokenizer(
            list(texts), padding=False, truncation=True, max_length=self.context_length
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        return [{k: list(encoded[k][i]) for k in keys} for i in range(len(texts))]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized text embeddings, ``float32[len(texts), projection_dim]``.

        Texts are sorted by token count and cut into batches, each padded only to its own
        longest text: a batch of short captions costs what short captions cost.
        """
        tokens = self.tokenize(texts)
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]["input_ids"]))
        ordered = [tokens[i] for i in order]
        embeddings = self._run(
            "text", len(ordered), lambda lo, hi: self._text_batch(ordered[lo:hi])
        )
        result = np.empty_like(embeddings)
        result[order] = embeddings
        return result

    @torch.inference_mode()
    def _text_batch(self, tokens: Sequence[dict[str, list[int]]]) -> torch.Tensor:
        longest = max(len(t["input_ids"]) for t in tokens)
        inputs: dict[str, torch.Tensor] = {}
        for key in tokens[0]:
            pad = self.pad_token_id if key == "input_ids" else 0
            rows = [t[key] + [pad] * (longest - len(t[key])) for t in tokens]
            inputs[key] = torch.tensor(rows, dtype=torch.long, device=self.device)
        return _features(self.model.get_text_features(**inputs))

    def prompt_embeddings(self, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """One normalized embedding per name: the mean of its normalized prompt embeddings.

        This is CLIP's zero-shot classifier construction: each template is filled with the name,
        embedded and normalized; the mean over templates is normalized again.
        """
        prompts = [t.replace("{}", n) for n in names for t in templates]
        embedded = self.encode_texts(prompts).reshape(len(names), len(templates), -1)
        mean = embedded.mean(axis=1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    # -- batching -----------------------------------------------------------------------------

    def _run(
        self,
        tower: str,
        n: int,
        call: Callable[[int, int], torch.Tensor],
        heads_out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Runs ``call`` over ``[0, n)`` in batches and returns normalized float32 rows.

        With ``heads_out``, the heads read each batch's features where they are (on the device)
        and their outputs fill ``heads_out``'s rows.

        A CUDA out-of-memory error halves the batch size for this tower and retries the batch
        (down to one row, then it is raised): a few huge inputs must not fail a whole bundle.
        """
        out = np.empty((n, self.projection_dim), dtype=np.float32)
        start = 0
        while start < n:
            size = self._limits[tower]
            stop = min(n, start + size)
            try:
                features = call(start, stop)
                if heads_out is not None:
                    heads_out[start:stop] = self._heads(features)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                with self._lock:
                    self._limits[tower] = max(1, min(self._limits[tower], size // 2))
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            out[start:stop] = features.cpu().numpy()
            if not np.isfinite(out[start:stop]).all():
                raise FloatingPointError(
                    f"the model produced non-finite {tower} features in {self.dtype}: its "
                    "activations overflow this dtype. Run with --dtype bfloat16 (same range "
                    "as float32) or --dtype float32."
                )
            start = stop
        return out

    # -- provenance ---------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        """Key-value metadata describing the model, for every output file (computed once)."""
        if self._metadata is None:
            self._metadata = self._describe()
        return dict(self._metadata)

    def _describe(self) -> dict[str, str]:
        preprocessing = {
            "image_processor": _public_settings(self.image_processor),
            "text_context_length": self.context_length,
            "text_padding": "longest_in_batch",
        }
        return {
            "clipbeam.version": clipbeam_version(),
            "clipbeam.model": redact_url(self.source),
            "clipbeam.model_family": self.family,
            "clipbeam.model_sha256": weights_fingerprint(self.source) if self.source else "",
            "clipbeam.projection_dim": str(self.projection_dim),
            "clipbeam.model_dtype": self.dtype_name,
            "clipbeam.logit_scale": repr(self.logit_scale),
            "clipbeam.preprocessing": json.dumps(preprocessing, sort_keys=True, default=str),
            **self._describe_heads(),
        }

    def _describe_heads(self) -> dict[str, str]:
        if not self.heads:
            return {}
        heads = [
            {
                "name": name,
                "source": redact_url(getattr(head, "source", "")),
                "sha256": getattr(head, "sha256", ""),
                **{
                    k: v
                    for k, v in head.config.to_dict().items()
                    if k in ("trained_on", "meaning", "classes", "output", "embedding_dim")
                },
            }
            for name, head in self.heads.items()
        ]
        return {"clipbeam.heads": json.dumps(heads, sort_keys=True)}


def _int8_device(device: str, compile: bool | None) -> torch.device:
    problem = int8_problem(device, compile)
    if problem:
        raise ValueError(problem)
    return resolve_device("cpu" if device == "auto" else device)


def _dtype_name(model: torch.nn.Module, dtype: torch.dtype) -> str:
    """The dtype output metadata records: ``int8`` for a quantized model, else the dtype's."""
    from clipbeam.model.quantization import INT8, is_quantized

    return INT8 if is_quantized(model) else str(dtype).removeprefix("torch.")


def _public_settings(image_processor: Any) -> dict[str, Any]:
    """The image processor's settings (size, crop, mean, std...), JSON-friendly."""
    if hasattr(image_processor, "to_dict"):
        settings = image_processor.to_dict()
    else:
        settings = {k: v for k, v in vars(image_processor).items() if not k.startswith("_")}
    return {k: v for k, v in sorted(settings.items()) if _jsonable(v)}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def acquire_encoder(
    source: str,
    *,
    device: str,
    dtype: str,
    batch_size: int,
    compile: bool | None = None,
    heads: Sequence[tuple[str, str]] = (),
) -> Encoder:
    """The process-wide encoder for this model, device, dtype and compile setting; loaded on first
    use (see :meth:`Encoder.load` for the arguments).

    Beam runs many DoFn instances and threads per worker process; they all get the same model.
    Callers keep the returned object referenced while they use it (``Shared`` holds it weakly).
    """

    def build() -> Encoder:
        encoder = Encoder.load(
            source, device=device, dtype=dtype, batch_size=batch_size, compile=compile, heads=heads
        )
        encoder.metadata()  # hash the weights once, here, not on the first write
        with _LOADS_LOCK:
            _LOADS[tag] = _LOADS.get(tag, 0) + 1
        return encoder

    tag = (source, device, dtype, batch_size, compile, tuple(heads))
    return _SHARED.acquire(build, tag=tag)


def model_loads() -> dict[str, int]:
    """How many times this process loaded each model so far, by model source (summed over
    devices, dtypes and batch sizes)."""
    counts: dict[str, int] = {}
    with _LOADS_LOCK:
        for tag, n in _LOADS.items():
            counts[tag[0]] = counts.get(tag[0], 0) + n
    return counts
