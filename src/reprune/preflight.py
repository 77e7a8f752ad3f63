"""Cheap checks that run before any model is loaded or calibrated, so a bad option fails in a second.

Each check raises :class:`PreflightError` (a ValueError, so the CLI exits 2) with a message that names the
option or file (and line), the problem and the fix. Model folders are read as JSON here, never through
transformers, and never by running code from the folder.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from struct import error as struct_error
from typing import IO, TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

    from reprune.config import PruneConfig


class PreflightError(ValueError):
    """An option or input that would make the run fail (or destroy something) later."""


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
# Activations alive at once per calibration token during pruning, in units of the hidden width: a block's
# input, its output, the residual stream kept for the branch, plus the widest level-2 input (counted apart).
HIDDEN_COPIES = 3


def read_text(path: str | Path, opener: Callable[..., IO[bytes]] = open) -> str:
    """A UTF-8 text file with universal newlines; a non-UTF-8 byte is reported with its line."""
    path = Path(path)
    with opener(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise PreflightError(
            f"{path}, line {line}: byte {raw[err.start]:#04x} is not UTF-8 text; convert the file to UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_json(text: str, path: Path, what: str, line: int = 1) -> Any:
    """JSON ``text`` read from ``path`` (starting at ``line``); invalid JSON is reported with its line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PreflightError(
            f"{path}, line {line + err.lineno - 1}: not valid JSON ({err.msg}); the {what} is damaged or truncated. "
            "Restore it from the original source (or re-create it).") from None


def read_json(path: str | Path, what: str) -> Any:
    """A UTF-8 JSON file (``what`` says what it should be), with the line of any error."""
    return parse_json(read_text(path), Path(path), what)


def _refuse_folder_code(folder: Path, config: dict[str, Any]) -> None:
    """Refuse a folder that cannot be read without running its own Python (``auto_map``)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    needs_code = []
    if "AutoConfig" in config.get("auto_map", {}) and config.get("model_type") not in CONFIG_MAPPING:
        needs_code.append(f"config.json (model_type {config.get('model_type')!r}: {config['auto_map']['AutoConfig']})")
    tokenizer_file = folder / "tokenizer_config.json"
    if tokenizer_file.is_file():
        tokenizer = read_json(tokenizer_file, "tokenizer configuration")
        tokenizer_class = tokenizer.get("tokenizer_class")
        if "AutoTokenizer" in tokenizer.get("auto_map", {}) and (
                not tokenizer_class or tokenizer_class_from_name(tokenizer_class) is None):
            needs_code.append(f"tokenizer_config.json (tokenizer_class {tokenizer_class!r})")
    if needs_code:
        raise PreflightError(
            f"{folder} can only be loaded by running Python code from the folder ({'; '.join(needs_code)}); reprune "
            "never executes code from a model folder. Use a model whose architecture transformers implements.")


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` of a model folder as JSON, after checking that weights exist and no folder code is needed."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json)")
    config = read_json(path, "model configuration")
    if not isinstance(config, dict):
        raise PreflightError(f"{path}: expected a JSON object, found {type(config).__name__}; the file is damaged.")
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights and not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{folder} has no weights (none of {', '.join(WEIGHT_FILES)}); the folder is incomplete. Copy the "
            "weights next to config.json or re-save the model with save_pretrained.")
    for index in (w for w in weights if w.name.endswith(".index.json")):
        shards = set(read_json(index, "weights index").get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise FileNotFoundError(f"{index} lists weight files that are missing: {', '.join(missing)}; "
                                    "copy them into the folder.")
    _refuse_folder_code(folder, config)
    return config


GGUF_MAGIC = b"GGUF"


def check_gguf_file(path: str | Path) -> None:
    """A ``--model`` GGUF file exists, is readable, is GGUF and holds an architecture transformers can read,
    before its (once per file, 30-90 s) conversion. A GGUF file holds data only: nothing in it is executed."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}. Pass the path of an existing .gguf file.")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as err:
        raise PreflightError(f"{path} cannot be read ({err.strerror}); check its permissions.") from None
    if magic != GGUF_MAGIC:
        raise PreflightError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); the file is "
                             "damaged or truncated, or it is another format: pass a .gguf file or a model folder.")
    import gguf

    try:
        field = gguf.GGUFReader(path).fields.get("general.architecture")
    except (ValueError, IndexError, struct_error) as err:
        raise PreflightError(f"{path}: the GGUF header cannot be read ({err}); the file is damaged or truncated.") from None
    architecture = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise PreflightError(f"{path}: GGUF architecture {architecture!r} is not one transformers reads from GGUF "
                             f"({', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); convert the model to a Hugging "
                             "Face folder instead.")


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config") or config


def max_positions(config: dict[str, Any]) -> int | None:
    """The longest input the model's position embeddings allow, when its config states one."""
    config = _text_config(config)
    values = [config[key] for key in POSITION_KEYS if isinstance(config.get(key), int) and config[key] > 0]
    return values[0] if values else None


def check_count(option: str, value: int | None, minimum: int = 1) -> None:
    """An integer option (``None`` = not given) that must be at least ``minimum``."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise PreflightError(f"{option} must be an integer ≥ {minimum}, got {value!r}")


def num_layers(config: dict[str, Any]) -> int | None:
    """The number of transformer blocks, when the config states it."""
    config = _text_config(config)
    values = [config[key] for key in LAYER_KEYS if isinstance(config.get(key), int) and config[key] > 0]
    return values[0] if values else None


def check_seq_len(option: str, seq_len: int, config: dict[str, Any], folder: Path) -> None:
    """A window length of at least 2 tokens that the model's position embeddings can hold."""
    check_count(option, seq_len, 2)
    limit = max_positions(config)
    if limit is not None and seq_len > limit:
        raise PreflightError(f"{option} {seq_len} is longer than the model's {limit} positions "
                             f"({folder / 'config.json'}); pass {option} {limit} or less")


def check_ridge(option: str, value: float | None) -> None:
    """A relative ridge (``None`` = not given): negative, NaN or infinite values would be accepted and go
    wrong later; 0 is plain least squares, which the solver retries with a small ridge when singular."""
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise PreflightError(f"{option} must be a finite number >= 0, got {value!r}")


def check_device(device: str | None) -> None:
    """The device exists in this PyTorch build and machine (CUDA on a CPU build is refused here)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise PreflightError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise PreflightError(f"--device {device}: {dev.type} is not available in this PyTorch ({torch.__version__}) "
                             "on this machine; use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise PreflightError(f"--device {device}: only {count} {dev.type} device(s) (0..{count - 1}) are visible")


def element_bytes(config: dict[str, Any], dtype: str) -> int:
    """Bytes per activation element when the model runs in ``dtype`` ('auto': the checkpoint's)."""
    if dtype == "auto":
        stated = str(config.get("dtype") or config.get("torch_dtype"))
        return DTYPE_BYTES.get(stated, DTYPE_BYTES["float32"])
    if dtype not in DTYPE_BYTES:
        raise PreflightError(f"--dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)} or auto")
    return DTYPE_BYTES[dtype]


def calibration_bytes(config: dict[str, Any], num_samples: int, seq_len: int, dtype: str) -> int:
    """Least memory the calibration buffers take: N·L tokens, each with its id (int64), ``HIDDEN_COPIES``
    hidden-width activations and the widest level-2 input (FFN intermediate) at the model's dtype."""
    text = _text_config(config)
    hidden = text.get("hidden_size") or text.get("n_embd") or text.get("d_model") or 0
    inner = text.get("intermediate_size") or text.get("n_inner") or text.get("ffn_dim") or 4 * hidden
    per_token = 8 + element_bytes(config, dtype) * (HIDDEN_COPIES * hidden + max(inner, hidden))
    return num_samples * seq_len * per_token


def available_memory(dev: torch.device) -> int:
    """Free bytes on ``dev``."""
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(config: dict[str, Any], num_samples: int, seq_len: int, dtype: str, device: str | None,
                 rows: str = "--num-samples") -> None:
    """Refuse a calibration set whose buffers alone exceed the free memory, before allocating any of them
    (``rows``: the option that sets ``num_samples``, named in the error)."""
    need = calibration_bytes(config, num_samples, seq_len, dtype)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as prune
    free = available_memory(dev)
    if need > free:
        fits = max(1, num_samples * free // need)
        raise PreflightError(
            f"{rows} {num_samples} × --seq-len {seq_len} needs at least {need / 2**30:.1f} GiB of calibration "
            f"buffers, but only {free / 2**30:.1f} GiB is free on {dev}; use "
            f"{rows} {fits} or less, or a shorter --seq-len")


def check_calibration_file(source: str, text_field: str) -> None:
    """A local calibration file is read (and parsed) now, so a bad byte or row fails before the model loads."""
    if Path(source).is_file():
        from reprune.data import load_corpus

        load_corpus(source, text_field=text_field)


def check_config(config: PruneConfig) -> None:
    """The settings of a pruning run that need no model (ratio, counts, ridges, device)."""
    from reprune.allocation import check_ratio

    check_ratio(config.ratio)
    check_count("--num-samples", config.num_samples)
    check_count("--batch-size", config.batch_size)
    check_count("--multiple-of", config.multiple_of)
    check_count("--recovery-samples", config.recovery_samples, minimum=0)
    check_count("--heldout-samples", config.heldout_samples, minimum=0)
    check_ridge("--alpha", config.alpha)
    check_ridge("--recovery-alpha", config.recovery_alpha)
    check_device(config.device)


def check_prune(folder: Path, config: PruneConfig, dtype: str, calib: str, text_field: str) -> None:
    """Every option of ``reprune prune`` that can be checked without loading the model."""
    from reprune.adapters import adapter_class

    model_config = read_model_config(folder)
    adapter_class(model_config.get("model_type"))  # an unsupported family is named before the weights load
    check_config(config)
    blocks = num_layers(model_config)
    if blocks is not None:  # keep_first/keep_last, criteria against targets: the pipeline's own rules
        config.resolve(blocks)
    check_seq_len("--seq-len", config.seq_len, model_config, folder)
    check_memory(model_config, config.num_samples, config.seq_len, dtype, config.device)
    if config.recovery != "none" and config.recovery_samples:  # its rows are carried on two paths beside the others
        check_memory(model_config, config.num_samples + config.heldout_samples + 2 * config.recovery_samples,
                     config.seq_len, dtype, config.device,
                     "--num-samples + --heldout-samples + 2 × --recovery-samples (the recovery rows' two paths)")
    check_calibration_file(calib, text_field)


def check_finite_weights(model: nn.Module) -> None:
    """A NaN/Inf weight is a corrupted model, and it does not always show in the activations (PyTorch's
    causal SDPA turns a NaN query row into zeros), so it is caught here, by name, before any work."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise FloatingPointError(
                f"{name} holds NaN or Inf values: the input model is corrupted (or was saved after an overflow). "
                "Reload it from a good checkpoint before pruning."
            )


def check_calibration_ids(ids: object, vocab_size: int) -> None:
    """Calibration input for ``prune``: a non-empty 2-D integer tensor of ids the model's embedding holds."""
    if not isinstance(ids, torch.Tensor):
        raise PreflightError(f"calibration ids must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise PreflightError(f"calibration ids must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2 or ids.numel() == 0:
        raise PreflightError(f"calibration ids must be a non-empty (samples, tokens) tensor, got shape {tuple(ids.shape)}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise PreflightError(f"calibration token ids span {low}..{high}, outside the model's vocabulary 0..{vocab_size - 1}: "
                             "the tokenizer does not match the model; use the tokenizer saved with the model")


def check_tasks(names: Iterable[str], limit: int | None, task_files: dict[str, str | Path] | None = None) -> None:
    """Known task names whose files (``task_files[name]``, else the shared one) exist, parse and hold items
    (they are small; the model is not)."""
    from reprune.evaluation.tasks import TASKS, default_task_path, load_task

    names, task_files = list(names), dict(task_files or {})
    unknown = [name for name in [*names, *task_files] if name not in TASKS]
    if unknown:
        raise PreflightError(f"unknown task(s) {', '.join(map(repr, unknown))}; choose from {', '.join(sorted(TASKS))}")
    unused = [name for name in task_files if name not in names]
    if unused:
        raise PreflightError(f"--task-file names {', '.join(unused)}, which --tasks does not list; "
                             f"add it: --tasks {','.join([*names, *unused])}")
    for name in names:
        path = Path(task_files[name]) if name in task_files else default_task_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--task-file {name}={path}: no such file; pass the path of a {name} .jsonl file")
        try:
            items = load_task(name, path, limit)
        except (KeyError, TypeError, IndexError, AttributeError) as err:
            raise PreflightError(f"{path}: a {name} row is malformed ({type(err).__name__}: {err}); "
                                 "expected the layout described in reprune.evaluation.tasks") from None
        except UnicodeDecodeError:
            read_text(path, gzip.open if path.suffix == ".gz" else open)  # raises, naming the line
            raise
        if not items:
            raise PreflightError(f"{path} holds no {name} items (the file is empty); restore the task file")


def check_demo(ratio: float, device: str | None, out: str | Path) -> None:
    """The demo's options, before it spends minutes on the dense model."""
    from reprune.allocation import check_ratio
    from reprune.outputs import check_output_dir

    check_ratio(ratio)
    check_device(device)
    check_output_dir(out, overwrite=True)


def check_eval(folder: Path, *, ppl: str | None, seq_lens: list[int], tasks: list[str], sts: bool, limit: int | None,
               batch_size: int, max_windows: int | None, speed_batch: int, speed_len: int, device: str | None,
               json_path: str | None, task_files: dict[str, str | Path] | None = None) -> None:
    """Every option and file of ``reprune eval``, so nothing fails after a metric has been computed."""
    from reprune.evaluation.encoder import STSB_DEV, read_glue_tsv
    from reprune.models import shared_data_dir
    from reprune.outputs import probe_writable

    model_config = read_model_config(folder)
    for option, value in (("--batch-size", batch_size), ("--limit", limit), ("--max-windows", max_windows),
                          ("--speed-batch", speed_batch), ("--speed-len", speed_len)):
        check_count(option, value)
    if ppl is not None:
        if not Path(ppl).is_file():
            raise FileNotFoundError(f"Text file not found: {ppl}. Pass the path of an existing .txt/.raw file.")
        read_text(ppl)
        for seq_len in seq_lens:
            check_seq_len("--seq-len", seq_len, model_config, folder)
    check_tasks(tasks, limit, task_files)
    if sts and len(read_glue_tsv(shared_data_dir() / STSB_DEV, limit)) < 2:
        raise PreflightError(f"{shared_data_dir() / STSB_DEV} holds fewer than 2 sentence pairs; restore it or raise --limit")
    check_device(device)
    if json_path is not None:
        target = Path(json_path).resolve()
        if target.is_dir():
            raise PreflightError(f"--json {target} is a folder; pass a file name such as {target / 'eval.json'}")
        probe_writable(target)


def check_run_reports(run_dir: str | Path) -> None:
    """The reports ``reprune report`` will read are whole JSON (a truncated one is named, with its line)."""
    from reprune.record import RECORD_FILE

    root = Path(run_dir)
    if root.is_dir():
        for path in [root / RECORD_FILE, *sorted(root.glob(f"[!.]*/{RECORD_FILE}"))]:
            if path.is_file():
                read_json(path, "reprune report")
