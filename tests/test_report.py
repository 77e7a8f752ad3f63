"""The report of a real run folder: two pruned tiny Llamas with evaluations and a dense baseline."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import VOCAB, calibration_batch, tiny_model
from torch import nn

from reprune.checkpoint import save_pruned
from reprune.evaluation import directory_size, measure_speed
from reprune import PruneConfig, prune
from reprune.record import RunRecord
from reprune.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUNS = {"tiny-30-liar": 0.3, "tiny-50-liar": 0.5}


@torch.no_grad()
def evaluate(model: nn.Module, folder: Path | None, with_speed: bool) -> dict:
    """Real numbers in `reprune eval --json`'s format: perplexity, a next-token 'task' and speed."""
    ids = calibration_batch(num_samples=4, seq_len=32, seed=1).flatten()
    results: dict = {"model": str(folder), "parameters": sum(p.numel() for p in model.parameters())}
    if folder is not None:
        results["bytes_on_disk"] = directory_size(folder)
    for seq_len in (16, 32):
        windows = ids[: ids.numel() // seq_len * seq_len].view(-1, seq_len)
        logits = model(input_ids=windows).logits[:, :-1]
        nll = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
        results[f"ppl@{seq_len}"] = {"ppl": math.exp(nll), "nll": nll, "tokens": windows[:, 1:].numel(),
                                     "windows": windows.shape[0], "seq_len": seq_len}
    correct = (logits.argmax(-1) == windows[:, 1:]).float()
    results["tasks"] = {"next-token": {"acc": correct.mean().item(), "acc_norm": correct.mean().item(),
                                       "n": correct.numel(), "stderr": correct.std().item() / correct.numel() ** 0.5}}
    if with_speed:
        results["speed"] = measure_speed(model, VOCAB, prompt_len=8, new_tokens=4, repeats=1)
    return results


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    dense = evaluate(tiny_model("llama"), None, with_speed=True)
    dense["bytes_on_disk"] = 123_456
    (root / "dense_eval.json").write_text(json.dumps(dense))
    for name, ratio in RUNS.items():
        config = PruneConfig(ratio=ratio, criterion="flap", reconstruction="liar", allocation="uniform", num_samples=8,
                             seq_len=16, device="cpu")
        model, report = prune(tiny_model("llama"), calibration_batch(8, 16), config, progress=False,
                              heldout=calibration_batch(4, 16, seed=3) if ratio == 0.5 else None)
        report.input_model = "tiny-llama"
        folder = save_pruned(model, None, root / name, report)
        (folder / "reprune_eval.json").write_text(json.dumps(evaluate(model, folder, with_speed=ratio == 0.3)))
    return root


def _load(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def test_report_of_several_checkpoints(run_dir: Path) -> None:
    paths = write_report(run_dir)
    assets = run_dir / "report_assets"
    expected = {run_dir / "report.md", run_dir / "report.html", assets / "quality_vs_ratio.png",
                assets / "speedup.png"} | {assets / f"{kind}_{name}.png" for name in RUNS for kind in ("kept", "error")}
    assert set(paths) == expected
    markdown = (run_dir / "report.md").read_text()
    page = (run_dir / "report.html").read_text()
    dense = _load(run_dir, "dense_eval.json")
    assert "| dense |" in markdown and f"{dense['ppl@16']['ppl']:.2f}" in markdown
    for name in RUNS:
        report, evaluation = RunRecord.read(run_dir / name), _load(run_dir / name, "reprune_eval.json")
        parameters = report.parameters
        assert (f"Removed {parameters.ratio_prunable:.1%} of attention+FFN parameters "
                f"({parameters.ratio_total:.1%} of all") in markdown
        assert "flap / liar / uniform" in markdown
        for seq_len in (16, 32):
            assert (f"perplexity {dense[f'ppl@{seq_len}']['ppl']:.2f} → {evaluation[f'ppl@{seq_len}']['ppl']:.2f} "
                    f"at length {seq_len}") in markdown.lower()
        assert f"{evaluation['tasks']['next-token']['acc']:.1%}" in markdown
        for layer in report.layers:
            assert f"{layer.units_after}/{layer.units_before}" in markdown
            assert f"{layer.error_none:.3g} → {layer.error:.3g}" in markdown
            if layer.heldout_error is not None:  # the 50 % run held rows out: their errors beside the others
                assert f"{layer.heldout_error_none:.3g} → {layer.heldout_error:.3g}" in markdown
        assert ("held-out error" in markdown) and any(layer.heldout_error is not None for layer in
                                                      RunRecord.read(run_dir / "tiny-50-liar").layers)
        for block in {layer.block for layer in report.layers}:  # per-layer cost: statistics / solve
            mine = [layer for layer in report.layers if layer.block == block]
            stats, solve = sum(x.seconds_stats for x in mine), sum(x.seconds_solve for x in mine)
            assert f"{stats:.2f} / {solve:.3f} |" in markdown
    speedup = _load(run_dir / "tiny-30-liar", "reprune_eval.json")["speed"]["prefill_tokens_per_s"] / dense["speed"][
        "prefill_tokens_per_s"]
    assert f"Prefill {speedup:.2f}× and decode " in markdown
    for png in (p for p in paths if p.suffix == ".png"):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert f"](report_assets/{png.name})" in markdown
        assert base64.b64encode(data).decode("ascii") in page
    assert page.startswith("<!DOCTYPE html>") and "Settings" in page


def test_single_checkpoint_without_baseline(run_dir: Path) -> None:
    folder = run_dir / "tiny-50-liar"
    paths = write_report(folder)
    names = {p.name for p in paths}
    assert names == {"report.md", "report.html", "quality_vs_ratio.png", "kept_tiny-50-liar.png",
                     "error_tiny-50-liar.png"}  # no dense baseline and no speed: no speed-up plot
    markdown = (folder / "report.md").read_text()
    ppl = _load(folder, "reprune_eval.json")["ppl@16"]["ppl"]
    assert f"Perplexity {ppl:.2f} at length 16" in markdown
    assert "speed" not in markdown.split("## Per layer")[0].lower()


def test_folder_without_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "not-a-checkpoint").mkdir()
    with pytest.raises(FileNotFoundError, match="reprune_report.json"):
        write_report(tmp_path)
