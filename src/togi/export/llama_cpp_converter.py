"""llama.cpp's own HF-to-GGUF converter (``convert_hf_to_gguf.py``), taken from the ``llama-cpp-python`` source.

llama.cpp maintains the converter for about a hundred architectures (tensor names and layouts, rotary
permutations, pre-tokenizer detection, vocabulary types) together with its own ``gguf-py``. Both ship in the
source distribution of ``llama-cpp-python`` on PyPI (``vendor/llama.cpp/``). togi takes them from there, at
the version of the installed bindings so that the file is one the installed llama.cpp reads, and keeps them
under ``$TOGI_HOME/llama.cpp/<version>/``: the only download is that one package from the package registry,
once per machine and version. ``$TOGI_LLAMA_CPP_DIR`` points at a llama.cpp checkout instead (offline machines).

The converter runs as a subprocess of the same Python, so its ``gguf-py`` never meets the ``gguf`` package
togi imports itself. It is pure Python: it needs no compiler, only numpy, torch, transformers, sentencepiece.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from togi.errors import TogiError
from togi.paths import togi_home

PACKAGE = "llama-cpp-python"
SOURCE_ENVIRONMENT = "TOGI_LLAMA_CPP_DIR"
SCRIPT = "convert_hf_to_gguf.py"
# What the converter needs from the source tree: the script, its model classes (split out of the script in
# 2026; older trees have none) and its gguf-py, which it puts first on its own import path.
PARTS = (SCRIPT, "conversion", "gguf-py")
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")


class ConverterError(TogiError):
    """llama.cpp's converter could not be found, fetched or run."""

    hint = (f"set ${SOURCE_ENVIRONMENT} to a llama.cpp checkout, or check that `pip download {PACKAGE}` works here; "
            "for Llama-shaped and Qwen2 models togi's own writer needs neither (--gguf-writer togi)")


def installed_bindings_version() -> str | None:
    """The version of the installed llama.cpp Python bindings, or None when they are not installed."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def _complete(directory: Path) -> bool:
    return (directory / SCRIPT).is_file() and (directory / "gguf-py" / "gguf").is_dir()


def ready_converter_directory(cache: Path | None = None) -> Path | None:
    """The converter's tree if it is here without a download ($TOGI_LLAMA_CPP_DIR, or cached for the bindings'
    version), else None."""
    configured = os.environ.get(SOURCE_ENVIRONMENT)
    if configured:
        return Path(configured).expanduser() if _complete(Path(configured).expanduser()) else None
    version = installed_bindings_version()
    directory = (cache or togi_home() / "llama.cpp") / (version or "")
    return directory if version and _complete(directory) else None


def converter_directory(version: str | None = None, cache: Path | None = None) -> Path:
    """A llama.cpp source tree holding the converter: ``$TOGI_LLAMA_CPP_DIR``, else the cached copy for
    ``version`` (default: the installed bindings' version, else the newest on the registry), fetched when absent."""
    configured = os.environ.get(SOURCE_ENVIRONMENT)
    if configured:
        directory = Path(configured).expanduser()
        if not _complete(directory):
            raise ConverterError(f"${SOURCE_ENVIRONMENT}={directory} holds no {SCRIPT} with its gguf-py",
                                 f"point it at the root of a llama.cpp checkout (the folder with {SCRIPT}), or unset it")
        return directory
    cache = cache or togi_home() / "llama.cpp"
    version = version or installed_bindings_version()
    if version and _complete(cache / version):
        return cache / version
    return _fetch(version, cache)


def _fetch(version: str | None, cache: Path) -> Path:
    """Download the bindings' source distribution with pip and keep the converter's parts of it."""
    requirement = f"{PACKAGE}=={version}" if version else PACKAGE
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as temporary:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--quiet", "--dest", temporary, requirement]
        finished = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(Path(temporary).glob("*.tar.gz"))
        if finished.returncode != 0 or not archives:
            last = [line for line in (finished.stderr or finished.stdout).splitlines() if line.strip()][-1:] or ["no output"]
            raise ConverterError(f"could not download the source of {requirement} for llama.cpp's converter: {last[0]}")
        archive = archives[0]
        found_version = re.sub(r"^llama_cpp_python-|\.tar\.gz$", "", archive.name)
        target = cache / found_version
        if _complete(target):
            return target
        staging = Path(temporary) / "tree"
        with tarfile.open(archive) as sdist:
            members = []
            for member in sdist.getmembers():
                parts = Path(member.name).parts  # llama_cpp_python-X/vendor/llama.cpp/<part>/...
                if len(parts) >= 4 and parts[1:3] == ("vendor", "llama.cpp") and parts[3] in PARTS:
                    member.name = str(Path(*parts[3:]))
                    members.append(member)
            sdist.extractall(staging, members=members, filter="data")
        if not _complete(staging):
            raise ConverterError(f"the source of {archive.name} holds no vendor/llama.cpp/{SCRIPT} with its gguf-py",
                                 f"set ${SOURCE_ENVIRONMENT} to a llama.cpp checkout")
        if target.exists():  # a half-written tree from an interrupted fetch
            shutil.rmtree(target)
        staging.rename(target)  # one rename: the cache holds a whole tree or none
    return target


@functools.lru_cache(maxsize=4)  # the listing starts a Python that imports torch: once per converter tree and process
def supported_architectures(directory: Path) -> frozenset[str]:
    """The HF architectures (``LlamaForCausalLM``, ...) this converter writes as text models."""
    finished = subprocess.run([sys.executable, str(directory / SCRIPT), "--print-supported-models"], capture_output=True,
                              text=True, cwd=directory)
    listing = finished.stdout + finished.stderr
    text_part = listing.split("TEXT models:", 1)[-1].split("MMPROJ models:", 1)[0]
    return frozenset(re.findall(r"^\s*-\s*(\S+)\s*$", text_part, flags=re.MULTILINE))


def convert(model_dir: Path, path: Path, gguf_type: str, directory: Path) -> Path:
    """Convert the HF model in ``model_dir`` to ``path`` as ``gguf_type`` (one of CONVERTER_TYPES)."""
    if gguf_type not in CONVERTER_TYPES:
        raise ConverterError(f"llama.cpp's converter writes {', '.join(CONVERTER_TYPES)}, not {gguf_type}",
                             "write f32 and quantise it with llama.cpp")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    command = [sys.executable, str(directory / SCRIPT), str(model_dir), "--outfile", str(temporary), "--outtype", gguf_type]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=directory)
    if finished.returncode != 0 or not temporary.is_file():
        temporary.unlink(missing_ok=True)
        raise ConverterError(f"llama.cpp's converter failed on {model_dir.name}: {_reason(finished.stderr + finished.stdout)}")
    temporary.replace(path)
    return path


def _reason(output: str) -> str:
    """The converter's own explanation: its last error or exception line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^(ERROR|[A-Za-z]+(Error|Exception)\b)", line):
            return line
    return lines[-1] if lines else "no output"


def set_end_of_turn(path: Path, token_id: int, directory: Path) -> None:
    """Write ``token_id`` as the file's end-of-turn token with llama.cpp's own metadata tool (the file is
    rewritten beside itself and renamed over it)."""
    script = directory / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"
    temporary = path.with_name(f".{path.name}.eot.tmp")
    environment = {**os.environ, "PYTHONPATH": str(directory / "gguf-py")}  # the tool's gguf is the converter's
    finished = subprocess.run([sys.executable, str(script), str(path), str(temporary), "--special-token-by-id", "eot", str(token_id),
                               "--force"], capture_output=True, text=True, env=environment)
    if finished.returncode != 0 or not temporary.is_file():
        temporary.unlink(missing_ok=True)
        raise ConverterError(f"could not write the end-of-turn token into {path.name}: {_reason(finished.stderr + finished.stdout)}")
    temporary.replace(path)


if __name__ == "__main__":  # `python -m togi.export.llama_cpp_converter`: fetch the converter now (make setup-llama does)
    print(converter_directory())
