"""Hostile inputs never destroy data, and are refused before any work (issue 14).

Every case runs the command line in a process of its own on a tiny random LLaMA. The processes fork from
one server (``multiprocessing``'s forkserver, started with ``sys.executable`` and this environment) that has
imported reprune once, so some fifty runs take seconds instead of minutes; each still has its own exit
code, working folder, environment, umask, stdin and signals. One test runs ``python -m reprune.cli``
itself. For each refusal: exit code 2, a message naming the problem, no staging, lock or probe entry left
beside the output, and the input folder's bytes unchanged.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from reprune.checkpoint import load, save_pruned
from reprune.evaluation import perplexity
from reprune.outputs import UnsafeOutputError
from reprune import PruneConfig, prune
from reprune.preflight import PreflightError, check_calibration_ids, max_positions
from tiny_models import calibration_batch, tiny_config, tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
SRC = Path(__file__).resolve().parents[1] / "src"
WORDS = "the a of and to in is was for on that with as by it at from his her an".split()
CORPUS = " ".join(WORDS * 30)
PRUNE = ["--calib", "corpus.txt", "--num-samples", "4", "--seq-len", "16", "--device", "cpu"]
# what a run may leave beside its output only while it runs
TRANSIENT = (".partial-", ".old-", ".lock", ".reprune-probe-")


# ------------------------------------------------------------------------------------------ running the CLI


@dataclass
class Result:
    code: int | None
    out: str
    err: str


def _cli_child(argv: list[str], cwd: str, env: dict[str, str], logs: str, umask: int, stdin: str,
               pause: str | None) -> None:
    """Body of one CLI process: its folder, environment, umask, stdin and logs, then ``reprune ARGV``
    (``pause`` stops it at a chosen moment until the test writes ``GO``)."""
    os.chdir(cwd)
    os.environ.update(env)
    os.umask(umask)
    Path(logs, "stdin").write_text(stdin)
    sys.stdin = open(Path(logs, "stdin"))  # noqa: SIM115 (open for the life of the process)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(Path(logs, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
    if pause:
        _install_pause(pause, Path(cwd))
    from reprune.cli import main

    sys.exit(main(argv))


def _install_pause(where: str, cwd: Path) -> None:
    """``prune``: before pruning starts. ``save``: right after the weights are written into the staging
    folder. ``replace``: inside the first ``shutil.rmtree`` (a slow delete of a large folder), after removing
    one file of the folder it deletes."""
    import transformers

    import reprune.pipeline

    def wait() -> None:
        (cwd / "PAUSED").touch()
        deadline = time.monotonic() + 30
        while not (cwd / "GO").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    if where == "prune":
        original_prune = reprune.pipeline.prune

        def prune(*args: Any, **kwargs: Any) -> Any:
            wait()
            return original_prune(*args, **kwargs)

        reprune.pipeline.prune = prune
    elif where == "save":
        original_save = transformers.PreTrainedModel.save_pretrained

        def save(self: Any, *args: Any, **kwargs: Any) -> None:
            original_save(self, *args, **kwargs)
            wait()

        transformers.PreTrainedModel.save_pretrained = save
    else:
        original_rmtree = shutil.rmtree

        def rmtree(path: str | Path, *args: Any, **kwargs: Any) -> None:
            shutil.rmtree = original_rmtree
            first = next((p for p in sorted(Path(path).iterdir()) if p.is_file()), None)
            if first is not None:
                first.unlink()
            wait()
            original_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[multiprocessing.context.BaseContext]:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["test_safety", "reprune.cli", "reprune.evaluation", "reprune.data",
                                    "transformers.models.auto.tokenization_auto", "transformers.models.llama"])
    with pytest.MonkeyPatch.context() as patch:  # read when transformers and tqdm are imported
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE"):
            patch.setenv(key, "1")
        patch.setenv("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))  # remote code would land here
        multiprocessing.forkserver.ensure_running()
    yield context


@dataclass
class Running:
    process: multiprocessing.process.BaseProcess
    logs: Path

    def log(self, name: str) -> str:
        path = self.logs / name
        return path.read_text() if path.exists() else ""


class Cli:
    """Starts ``reprune ARGV`` processes in a folder and collects their results."""

    def __init__(self, context: multiprocessing.context.BaseContext, cwd: Path, env: dict[str, str]) -> None:
        self.context, self.cwd, self.env, self.count = context, cwd, env, 0

    def start(self, *argv: str, umask: int = 0o022, stdin: str = "", pause: str | None = None) -> Running:
        self.count += 1
        logs = self.cwd.parent / f"logs-{self.cwd.name}-{self.count}"
        logs.mkdir()
        process = self.context.Process(target=_cli_child, args=(list(argv), str(self.cwd), self.env, str(logs), umask,
                                                                  stdin, pause))
        process.start()
        return Running(process, logs)

    @staticmethod
    def finish(run: Running, timeout: float = 60) -> Result:
        run.process.join(timeout)
        if run.process.is_alive():
            run.process.kill()
            run.process.join()
            pytest.fail(f"reprune did not finish within {timeout} s (it should have refused at once)")
        return Result(run.process.exitcode, run.log("stdout"), run.log("stderr"))

    def __call__(self, *argv: str, timeout: float = 60, umask: int = 0o022, stdin: str = "") -> Result:
        return self.finish(self.start(*argv, umask=umask, stdin=stdin), timeout)

    def paused(self, *argv: str, pause: str) -> Running:
        """Start a run and wait until it reaches ``pause``."""
        run = self.start(*argv, pause=pause)
        deadline = time.monotonic() + 60
        while not (self.cwd / "PAUSED").exists():
            assert run.process.is_alive(), f"exited before {pause}: {self.finish(run)}"
            assert time.monotonic() < deadline, f"never reached {pause}"
            time.sleep(0.01)
        return run

    def go(self) -> None:
        (self.cwd / "GO").touch()


# ------------------------------------------------------------------------------------------ fixtures


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA folder (64 positions) and a reprune checkpoint of it, copied by each test."""
    root = tmp_path_factory.mktemp("templates")
    model = tiny_model("llama")
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    pruned, report = prune(load(root / "model"), calibration_batch(4, 16), PruneConfig(ratio=0.3), progress=False)
    save_pruned(pruned, tiny_tokenizer(), root / "checkpoint", report)
    return root


@pytest.fixture()
def work(templates: Path, tmp_path: Path) -> Path:
    """The test's working folder: ``model/`` (the input), ``old/`` (a checkpoint), ``corpus.txt``, ``shared/``."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    shutil.copytree(templates / "model", cwd / "model")
    shutil.copytree(templates / "checkpoint", cwd / "old")
    (cwd / "corpus.txt").write_text(CORPUS)
    (cwd / "shared" / "piqa").mkdir(parents=True)
    shutil.copyfile(FIXTURES / "piqa_valid.jsonl", cwd / "shared" / "piqa" / "valid.jsonl")
    shutil.copyfile(FIXTURES / "piqa_valid-labels.lst", cwd / "shared" / "piqa" / "valid-labels.lst")
    return cwd


@pytest.fixture()
def cli(forkserver: multiprocessing.context.BaseContext, work: Path) -> Cli:
    return Cli(forkserver, work, {"REPRUNE_SHARED_DATA": str(work / "shared")})


def _corrupt_weights(work: Path) -> None:
    """Loading the model would fail: a refusal that names the option proves it was checked before loading."""
    (work / "model" / "model.safetensors").write_bytes(b"not safetensors")


def digest(root: Path) -> dict[str, str]:
    """Every file's and folder's relative path with its sha256 (folders: 'dir'); a file is not a folder."""
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and any(t in p.name for t in TRANSIENT))


def assert_refused(result: Result, message: str, work: Path, before: dict[str, str], watched: Path) -> None:
    assert result.code == 2, f"exit {result.code}\n{result.out}\n{result.err}"
    assert message in result.err, result.err
    assert "Traceback" not in result.err, result.err
    assert digest(watched) == before, f"{watched} was modified"
    assert leftovers(work) == [] and leftovers(watched.parent) == []


def complete_checkpoint(folder: Path) -> None:
    json.loads((folder / "reprune_report.json").read_text())
    assert load_file(folder / "model.safetensors")
    load(folder)


# ------------------------------------------------------------------------------------------ 1. replacing data


def test_out_equal_to_the_input_model_is_refused(cli: Cli, work: Path) -> None:
    before = digest(work / "model")
    result = cli("prune", "--model", "model", "--out", "model", "--overwrite", *PRUNE)
    assert_refused(result, "is the input model", work, before, work / "model")


def test_out_holding_the_input_model_is_refused(cli: Cli, work: Path) -> None:
    (work / "notes.txt").write_text("unrelated")
    (work / "reprune_report.json").write_text("{}")  # even when it looks like a checkpoint
    before = digest(work)
    result = cli("prune", "--model", "model", "--out", str(work), "--overwrite", *PRUNE)
    assert result.code == 2 and "contains the input model" in result.err, result.err
    assert digest(work) == before and leftovers(work) == []


def test_out_inside_the_input_model_is_refused(cli: Cli, work: Path) -> None:
    before = digest(work / "model")
    result = cli("prune", "--model", "model", "--out", "model/pruned", *PRUNE)
    assert_refused(result, "inside the input model", work, before, work / "model")


def test_overwrite_refuses_a_folder_that_is_not_a_checkpoint(cli: Cli, work: Path) -> None:
    (work / "photos").mkdir()
    (work / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 precious")
    before = digest(work / "photos")
    result = cli("prune", "--model", "model", "--out", "photos", "--overwrite", *PRUNE)
    assert_refused(result, "is not a reprune checkpoint", work, before, work / "photos")


def test_overwrite_replaces_a_checkpoint_in_one_piece(cli: Cli, work: Path) -> None:
    before = digest(work / "model")
    old = digest(work / "old")
    result = cli("prune", "--model", "model", "--out", "old", "--overwrite", "--ratio", "0.5", *PRUNE)
    assert result.code == 0, result.err
    assert digest(work / "old") != old
    assert json.loads((work / "old" / "reprune_report.json").read_text())["config"]["ratio"] == 0.5
    complete_checkpoint(work / "old")
    assert digest(work / "model") == before and leftovers(work) == []


@pytest.mark.parametrize("args, message", [
    (["--out", "photos"], "is not a reprune checkpoint"),  # the demo always replaces its output
    (["--ratio", "1.5"], "ratio"),  # refused after 215 s before
    (["--device", "cuda:99"], "--device"),
])
def test_demo_refuses_before_any_work(cli: Cli, work: Path, args: list[str], message: str) -> None:
    (work / "photos").mkdir()
    (work / "photos" / "cat.jpg").write_bytes(b"precious")
    before = digest(work / "photos")
    started = time.monotonic()
    result = cli("demo", *args, timeout=60)
    assert_refused(result, message, work, before, work / "photos")
    assert time.monotonic() - started < 30


# ------------------------------------------------------------------------------------------ 2. crash safety


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("out, pause", [("new", "prune"), ("new", "save"), ("old", "save"), ("old", "replace")])
def test_a_signal_while_writing_leaves_the_old_output_whole_or_the_new_one_complete(
        cli: Cli, work: Path, signum: int, out: str, pause: str) -> None:
    before, old = digest(work / "model"), digest(work / "old")
    run = cli.paused("prune", "--model", "model", "--out", out, "--overwrite", *PRUNE, pause=pause)
    if pause == "save":
        assert any(".partial-" in name for name in leftovers(work)), "the staging folder should exist now"
    os.kill(run.process.pid, signum)
    run.process.join(0.5)  # a run that can stop now has stopped; one holding the signal back goes on
    cli.go()
    result = cli.finish(run)
    assert result.code == (130 if signum == signal.SIGINT else 128 + signum), result.err
    assert leftovers(work) == [], "staging, aside or lock left behind"
    assert digest(work / "model") == before
    if out == "new":
        assert not (work / "new").exists()
    elif pause in ("prune", "save"):
        assert digest(work / "old") == old, "the old output must stay whole until the new one is complete"
    else:  # the signal came during the swap, which is not interruptible: the new output is in place
        complete_checkpoint(work / "old")


def test_a_later_run_removes_stale_staging_folders(cli: Cli, work: Path) -> None:
    for name in (".new.partial-4194303-dead", ".new.partial-k2j4h1"):  # ours and the former mkdtemp naming
        (work / name).mkdir()
        (work / name / "model.safetensors").write_bytes(b"x" * 1000)
    result = cli("prune", "--model", "model", "--out", "new", *PRUNE)
    assert result.code == 0, result.err
    assert leftovers(work) == []
    complete_checkpoint(work / "new")


def test_a_crash_between_the_renames_puts_the_old_output_back(cli: Cli, work: Path) -> None:
    old = digest(work / "old")
    (work / "old").rename(work / ".old.old-4194303-dead")  # killed after renaming the old output aside
    result = cli("prune", "--model", "model", "--out", "old", *PRUNE)
    assert result.code == 2 and "already exists" in result.err, result.err
    assert digest(work / "old") == old and leftovers(work) == []


# ------------------------------------------------------------------------------------------ 3. concurrent runs


def test_a_second_run_on_the_same_output_fails_clearly(cli: Cli, work: Path) -> None:
    first = cli.paused("prune", "--model", "model", "--out", "new", *PRUNE, pause="save")
    second = cli("prune", "--model", "model", "--out", "new", *PRUNE)
    cli.go()
    assert second.code == 2 and "Another reprune run is writing" in second.err, second.err
    assert cli.finish(first).code == 0
    complete_checkpoint(work / "new")
    assert leftovers(work) == []


# ------------------------------------------------------------------------------------------ 4. eval


def test_eval_checks_every_task_before_loading_the_model(cli: Cli, work: Path) -> None:
    _corrupt_weights(work)
    result = cli("eval", "--model", "model", "--ppl", "corpus.txt", "--seq-len", "16", "--tasks", "piqa,nosuchtask",
                 "--json", "results.json")
    assert result.code == 2 and "nosuchtask" in result.err, result.err
    assert "perplexity" not in result.out and not (work / "results.json").exists()


def test_eval_keeps_the_metrics_computed_before_a_failure(cli: Cli, work: Path) -> None:
    (work / "short.txt").write_text(" ".join(WORDS * 2))  # 42 tokens: windows of 16, none of 48
    result = cli("eval", "--model", "model", "--ppl", "short.txt", "--seq-len", "16,48", "--json", "results.json")
    assert result.code == 2 and "fewer than one window" in result.err, result.err
    results = json.loads((work / "results.json").read_text())
    assert results["ppl@16"]["windows"] == 2 and "ppl@48" not in results
    assert leftovers(work) == []


# ------------------------------------------------------------------------------------------ 5, 6. security


EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("the model folder's code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    model_type = "evil"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("path", ["config", "tokenizer", "model"])
def test_code_in_a_model_folder_never_runs(cli: Cli, work: Path, path: str) -> None:
    folder, marker = work / "model", work.parent / "MARKER"
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    if path == "config":  # an architecture transformers does not know, defined by the folder's code
        _edit_json(folder / "config.json", model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig"})
    elif path == "tokenizer":
        _edit_json(folder / "tokenizer_config.json", tokenizer_class="EvilTokenizer",
                   auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    else:  # a known architecture whose auto_map points at the folder's code: loaded with transformers' class
        _edit_json(folder / "config.json", auto_map={"AutoModelForCausalLM": "evil.EvilModel"})
    before = digest(folder)
    result = cli("eval", "--model", "model", "--ppl", "corpus.txt", "--seq-len", "16", "--max-windows", "1",
                 stdin="y\ny\ny\n")  # what a user answers to transformers' "run the custom code?" prompt
    assert not marker.exists(), "code from the model folder was executed"
    if path == "model":
        assert result.code == 0, result.err
    else:
        assert_refused(result, "never executes code from a model folder", work, before, folder)


def test_a_pickle_checkpoint_is_refused_with_the_way_to_convert_it(cli: Cli, work: Path) -> None:
    folder, marker = work / "model", work.parent / "PICKLE_MARKER"
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    state["payload"] = _Payload(str(marker))
    torch.save(state, folder / "pytorch_model.bin")
    before = digest(folder)
    result = cli("eval", "--model", "model", "--ppl", "corpus.txt", "--seq-len", "16", "--max-windows", "1")
    assert_refused(result, "pytorch_model.bin is a pickle", work, before, folder)
    assert "safetensors" in result.err and not marker.exists()


class _Payload:
    """Unpickling this runs a shell command: what weights-only loading exists to refuse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


# ------------------------------------------------------------------------------------------ 7-9. checked first


def _latin1_corpus(work: Path) -> str:
    (work / "latin1.txt").write_bytes((CORPUS + "\n" + CORPUS + "\ncaf\xe9\n").encode("latin-1"))
    return "latin1.txt"


def _truncate_config(work: Path) -> None:
    text = (work / "model" / "config.json").read_text()
    (work / "model" / "config.json").write_text(text[: len(text) // 2])


def _unsupported_type(work: Path) -> None:
    config = json.loads((work / "model" / "config.json").read_text())
    (work / "model" / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))


def _remove_weights(work: Path) -> None:
    (work / "model" / "model.safetensors").unlink()


@pytest.mark.parametrize("args, change, message", [
    (["--out", "a-file", "--overwrite"], None, "is an existing file"),
    (["--out", "/proc/reprune-safety-test"], None, "cannot be written"),
    (["--batch-size", "0"], None, "--batch-size must be"),
    (["--batch-size", "-1"], None, "--batch-size must be"),
    (["--num-samples", "0"], None, "--num-samples must be"),
    (["--seq-len", "65"], None, "longer than the model's 64 positions"),
    (["--alpha", "-1", "--reconstruct", "liar"], None, "--alpha must be"),
    (["--alpha", "nan", "--reconstruct", "liar"], None, "--alpha must be"),
    (["--recovery-alpha", "inf"], None, "--recovery-alpha must be"),
    (["--recovery-samples", "-1"], None, "--recovery-samples must be"),
    (["--heldout-samples", "-2"], None, "--heldout-samples must be"),
    (["--recovery", "goa", "--recovery-samples", "100000000", "--seq-len", "64"], None,
     "2 × --recovery-samples (the recovery rows' two paths)"),
    (["--device", "cuda:99"], None, "--device cuda:99"),
    (["--dtype", "float8"], None, "--dtype"),
    (["--num-samples", "100000000", "--seq-len", "64"], None, "GiB of calibration buffers"),
    (["--calib", "latin1.txt"], _latin1_corpus, "latin1.txt, line 3"),
    ([], _truncate_config, "config.json, line"),
    ([], _remove_weights, "has no weights"),
    ([], _unsupported_type, "Unsupported architecture: model_type='mamba'"),
    (["--keep-first", "2", "--keep-last", "1"], None, "leave no block to prune out of 3"),
    (["--criterion", "head-similarity", "--targets", "ffn"], None, "cannot score ffn units"),
])
def test_prune_refuses_bad_options_before_loading_the_model(cli: Cli, work: Path, args: list[str],
                                                            change: Callable[[Path], None] | None, message: str) -> None:
    (work / "a-file").write_text("not a folder")
    _corrupt_weights(work)
    if change is not None:
        change(work)
    before = digest(work / "model"), digest(work / "a-file")
    result = cli("prune", "--model", "model", "--out", "new", *PRUNE, *args)  # later options win over PRUNE's
    assert_refused(result, message, work, before[0], work / "model")
    assert digest(work / "a-file") == before[1] and not (work / "new").exists()
    assert "pruned" not in result.out


@pytest.mark.parametrize("content, message", [
    ("", "holds no piqa items"),
    ('{"goal": "open a jar", "sol1": "twist it"}\n', "row is malformed"),
    ('{"goal": "open a jar", "sol1": "twist\n', "valid.jsonl:1 is not valid JSON"),
])
def test_eval_names_a_bad_task_file(cli: Cli, work: Path, content: str, message: str) -> None:
    (work / "shared" / "piqa" / "valid.jsonl").write_text(content)
    (work / "shared" / "piqa" / "valid-labels.lst").write_text("0\n" if content else "")
    _corrupt_weights(work)
    result = cli("eval", "--model", "model", "--tasks", "piqa", "--limit", "2")
    assert result.code == 2 and message in result.err and "valid.jsonl" in result.err, result.err


@pytest.mark.parametrize("args, message", [
    (["--tasks", "pica"], "unknown task(s) 'pica'"),
    (["--tasks", "piqa", "--task-file", "piqa=missing.jsonl"], "--task-file piqa=missing.jsonl: no such file"),
    (["--tasks", "arc_easy", "--task-file", "arc_easy=corpus.txt"], "corpus.txt:1 is not valid JSON"),
    (["--tasks", "piqa", "--task-file", "arc_easy=arc.jsonl"], "--task-file names arc_easy, which --tasks does not list"),
    (["--tasks", "mmlu", "--task-file", "mmlu=arc.jsonl"], "unknown task(s) 'mmlu'"),
    (["--tasks", "hellaswag"], "--task-file hellaswag=PATH"),  # the shared folder has no HellaSwag file
])
def test_eval_checks_tasks_and_task_files_before_loading_the_model(cli: Cli, work: Path, args: list[str],
                                                                   message: str) -> None:
    shutil.copyfile(FIXTURES / "arc_easy.jsonl", work / "arc.jsonl")
    _corrupt_weights(work)  # loading would fail with another error: the task error proves the order
    result = cli("eval", "--model", "model", *args)
    assert result.code == 2 and message in result.err, result.err
    assert "safetensors" not in result.err


def test_eval_task_file_needs_task_and_path(cli: Cli, work: Path) -> None:
    result = cli("eval", "--model", "model", "--tasks", "piqa", "--task-file", "piqa")
    assert result.code == 2 and "expected TASK=PATH" in result.err, result.err


def test_eval_reads_a_task_from_its_task_file(cli: Cli, work: Path) -> None:
    """arc_easy is not in the test's shared folder: only the --task-file can provide it."""
    shutil.copyfile(FIXTURES / "arc_easy.jsonl", work / "arc.jsonl")
    result = cli("eval", "--model", "model", "--tasks", "piqa,arc_easy", "--task-file", "arc_easy=arc.jsonl",
                 "--json", "eval.json")
    assert result.code == 0, result.err
    tasks = json.loads((work / "eval.json").read_text())["tasks"]
    assert tasks["arc_easy"]["n"] == 3 and tasks["piqa"]["n"] == 3


def test_evaluate_folder_scores_the_task_file(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reprune.evaluation import evaluate_task
    from reprune.models import load_model
    from reprune.workflow import EvalOptions, evaluate_folder

    monkeypatch.setenv("REPRUNE_SHARED_DATA", str(work / "shared"))
    options = EvalOptions(tasks=["arc_easy"], task_files={"arc_easy": str(FIXTURES / "arc_easy.jsonl")}, limit=2,
                          json=str(work / "eval.json"))
    results, _ = evaluate_folder(work / "model", options, announce=lambda line: None)
    model, tokenizer, _ = load_model(work / "model")
    direct = evaluate_task(model, tokenizer, "arc_easy", FIXTURES / "arc_easy.jsonl", limit=2, progress=False)
    assert results["tasks"]["arc_easy"]["n"] == 2
    assert results["tasks"]["arc_easy"]["acc_norm"] == direct["acc_norm"]


@pytest.mark.parametrize("args, message", [
    (["--ppl", "corpus.txt", "--batch-size", "0"], "--batch-size must be"),
    (["--ppl", "corpus.txt", "--seq-len", "16,65"], "longer than the model's 64 positions"),
    (["--tasks", "piqa", "--limit", "0"], "--limit must be"),
    (["--ppl", "corpus.txt", "--seq-len", "16", "--json", "/proc/reprune-safety-test.json"], "cannot be written"),
    (["--ppl", "corpus.txt", "--seq-len", "16", "--sts"], "GLUE TSV file not found"),  # no glue/ in shared/
])
def test_eval_refuses_bad_options_before_any_metric(cli: Cli, work: Path, args: list[str], message: str) -> None:
    _corrupt_weights(work)
    result = cli("eval", "--model", "model", *args)
    assert result.code == 2 and message in result.err, result.err
    assert "perplexity" not in result.out and "piqa" not in result.out


def test_report_names_a_truncated_report(cli: Cli, work: Path) -> None:
    report = work / "old" / "reprune_report.json"
    report.write_text(report.read_text()[:200])
    result = cli("report", "old")
    assert result.code == 2 and "reprune_report.json, line" in result.err, result.err


def test_eval_names_a_file_that_is_not_utf8(cli: Cli, work: Path) -> None:
    result = cli("eval", "--model", "model", "--ppl", _latin1_corpus(work), "--seq-len", "16")
    assert result.code == 2 and "latin1.txt, line 3" in result.err, result.err


# ------------------------------------------------------------------------------------------ 10. permissions


def test_outputs_get_the_users_umask(cli: Cli, work: Path) -> None:
    result = cli("prune", "--model", "model", "--out", "runs/new", *PRUNE, umask=0o022)
    assert result.code == 0, result.err
    assert stat.S_IMODE((work / "runs" / "new").stat().st_mode) == 0o755
    assert stat.S_IMODE((work / "runs").stat().st_mode) == 0o755
    assert stat.S_IMODE((work / "runs" / "new" / "config.json").stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------------ the entry point and the library


def test_the_real_command_line_refuses_to_replace_its_input(work: Path) -> None:
    """The same refusal through ``python -m reprune.cli`` in a fresh interpreter, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    before = digest(work / "model")
    result = subprocess.run([sys.executable, "-m", "reprune.cli", "prune", "--model", "model", "--out", "model",
                             "--overwrite", *PRUNE], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert_refused(Result(result.returncode, result.stdout, result.stderr), "is the input model", work, before,
                   work / "model")


def test_prune_refuses_a_tokenizer_that_does_not_match_the_model(cli: Cli, work: Path) -> None:
    config = tiny_config("llama")
    config.vocab_size = 8  # the tokenizer has 23 tokens
    LlamaForCausalLM(config).save_pretrained(work / "small")
    tiny_tokenizer().save_pretrained(work / "small")
    result = cli("prune", "--model", "small", "--out", "new", *PRUNE)
    assert result.code == 2 and "outside the model's vocabulary 0..7" in result.err, result.err
    assert not (work / "new").exists() and leftovers(work) == []


@pytest.mark.parametrize("ids, message", [
    ([[1, 2, 3]], "must be a torch.Tensor"),
    (torch.ones(2, 4), "integer token ids"),
    (torch.ones(8, dtype=torch.long), "(samples, tokens)"),
    (torch.ones(0, 4, dtype=torch.long), "non-empty"),
    (torch.tensor([[1, 200]]), "span 1..200"),
    (torch.tensor([[-1, 2]]), "span -1..2"),
])
def test_calibration_ids_are_checked_with_a_clear_error(ids: object, message: str) -> None:
    with pytest.raises(PreflightError, match=re.escape(message)):
        check_calibration_ids(ids, vocab_size=128)


def test_save_pruned_never_replaces_the_folder_the_model_came_from(work: Path) -> None:
    model = load(work / "model")
    pruned, report = prune(model, calibration_batch(4, 16), PruneConfig(ratio=0.3), progress=False)
    (work / "model" / "reprune_report.json").write_text("{}")  # even when it looks like a checkpoint
    before = digest(work / "model")
    with pytest.raises(UnsafeOutputError, match="input model"):
        save_pruned(pruned, None, work / "model", report, overwrite=True)
    assert digest(work / "model") == before and leftovers(work) == []


def test_save_pruned_of_a_model_built_in_memory_writes_below_the_working_folder(
        work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model built from a config has no folder (``name_or_path`` is empty), so none is protected: an empty
    path must not be read as the working folder, which would refuse every output below it."""
    monkeypatch.chdir(work)
    pruned, report = prune(tiny_model("llama"), calibration_batch(4, 16), PruneConfig(ratio=0.3), progress=False)
    assert pruned.config.name_or_path == ""
    out = save_pruned(pruned, None, work / "runs" / "pruned", report)
    assert (out / "config.json").exists()


def test_max_positions_reads_every_family() -> None:
    for family in ("llama", "gpt2", "opt", "bert"):
        assert max_positions(tiny_config(family).to_dict()) == 64


def test_the_library_refuses_a_missing_device_with_the_cli_message(work: Path) -> None:
    with pytest.raises(PreflightError, match="cuda:99"):
        load(work / "model", device="cuda:99")
    with pytest.raises(PreflightError, match="cuda:99"):
        perplexity(load(work / "model"), tiny_tokenizer(), CORPUS, seq_len=16, device="cuda:99")
