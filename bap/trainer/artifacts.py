"""The run directory: what ``bap train`` writes and what ``bap export`` / ``bap eval`` read.

::

    RUN/
      config.json            resolved TrainConfig, domains, backbone (name, weights source, sha256), versions
      backbone.safetensors   the frozen shared backbone (a copy: the run is self-contained)
      metrics.jsonl          one line per epoch and budget
      checkpoint.pt          latest resumable state (weights_only-loadable; removed when a budget completes)
      budgets/<beta>/state.safetensors   switches, per-domain BN, heads, normalisation
      budgets/<beta>/result.json         metrics of that budget
      report.json            schema bap.train-report/1
      .lock                  held while a process trains in it
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bap.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, file_sha256, load_json
from bap.data.types import DomainSet
from bap.errors import ConfigError, IncompatibleArtifactError
from bap.trainer.config import TrainConfig, budget_key, method_names, method_traits

__all__ = ["REPORT_FORMAT", "RUN_FORMAT", "LoadedRun", "RunDir", "domain_docs", "load_run", "run_config_doc"]

log = logging.getLogger(__name__)

RUN_FORMAT = "bap.run/1"
REPORT_FORMAT = "bap.train-report/1"


def domain_docs(domains: DomainSet) -> list[dict[str, Any]]:
    """The ``domains`` entries of ``config.json`` (everything export and eval need to rebuild a domain)."""
    return [
        {
            "name": d.name,
            "index": i,
            "classes": list(d.classes),
            "mean": list(d.mean),
            "std": list(d.std),
            "preprocess": d.preprocess.to_dict(),
            "train": len(d.train),
            "val": len(d.val),
            "test": len(d.test),
            "source": d.source,
        }
        for i, d in enumerate(domains)
    ]


def run_config_doc(
    cfg: TrainConfig, domains: DomainSet, backbone: Any, graph: Any, weights_source: str, pretrain: dict | None = None
) -> dict[str, Any]:
    """``config.json`` of a run (the backbone's ``sha256`` is added once its file is written)."""
    import datetime as _dt

    from bap.core.env import machine, versions

    return {
        "format": RUN_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "domains": domain_docs(domains),
        "data_origin": domains.origin,
        "backbone": {
            "name": cfg.backbone,
            "weights_source": weights_source,
            "pretrain": pretrain,
            "input_size": graph.input_size,
            "macs": graph.total_macs,
            "params": sum(p.numel() for p in backbone.parameters()),
            "switches": graph.num_switches,
            "coupling": graph.summary(),
        },
        "versions": versions(),
        "machine": machine(),
    }


class RunDir:
    """Paths and atomic readers/writers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    backbone_path = property(lambda self: self.path / "backbone.safetensors")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    report_path = property(lambda self: self.path / "report.json")

    def budget_dir(self, beta: float) -> Path:
        """``budgets/<beta>/``."""
        return self.path / "budgets" / budget_key(beta)

    def is_empty(self) -> bool:
        """True if the directory is absent or holds nothing but a lock (a run killed before writing anything)."""
        return not self.path.exists() or all(p.name == ".lock" for p in self.path.iterdir())

    # ----------------------------------------------------------------------------------------------- config
    def write_config(self, doc: dict[str, Any]) -> None:
        """Write ``config.json``."""
        atomic_write_json(self.config_path, doc)

    def _require_dir(self) -> None:
        if not self.path.is_dir():
            raise IncompatibleArtifactError(
                f"run directory {self.path} does not exist", "pass the --out of a bap train run"
            )

    def read_config(self) -> dict[str, Any]:
        """Read and check ``config.json`` (presence, valid JSON, format)."""
        self._require_dir()
        doc = load_json(self.config_path, "run config")
        if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
            raise IncompatibleArtifactError(
                f"{self.config_path} is not a bap run config (format {doc.get('format') if isinstance(doc, dict) else None!r}, expected {RUN_FORMAT})",
                "pass a directory written by bap train",
            )
        return doc

    def read_report(self) -> dict[str, Any] | None:
        """``report.json`` (valid JSON, an object), or ``None`` while the run has not finished writing one.

        Raises:
            IncompatibleArtifactError: the report exists but does not parse (truncated, modified), naming it.
        """
        self._require_dir()
        if not self.report_path.is_file():
            return None
        doc = load_json(self.report_path, "run report")
        if not isinstance(doc, dict):
            raise IncompatibleArtifactError(
                f"run report {self.report_path} is not a JSON object", "re-create it (bap train --resume)"
            )
        return doc

    # ------------------------------------------------------------------------------------------- checkpoint
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Atomically write the resumable state (tensors and plain Python values only)."""
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The resumable state, or ``None`` if there is none; loaded with ``weights_only=True``."""
        if not self.checkpoint_path.is_file():
            return None
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt or foreign: refuse, never unpickle arbitrary objects
            raise IncompatibleArtifactError(
                f"checkpoint {self.checkpoint_path} is unreadable ({type(e).__name__})",
                "delete it to restart the current budget from its beginning",
            ) from None

    def clear_checkpoint(self) -> None:
        """Remove the checkpoint once its budget is complete."""
        self.checkpoint_path.unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------------- metrics
    def read_metrics(self) -> list[dict[str, Any]]:
        """Lines of ``metrics.jsonl`` (unparseable lines are dropped)."""
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` atomically."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))

    # ------------------------------------------------------------------------------------------------ results
    def result_path(self, beta: float) -> Path:
        """``budgets/<beta>/result.json``."""
        return self.budget_dir(beta) / "result.json"

    def state_path(self, beta: float) -> Path:
        """``budgets/<beta>/state.safetensors``."""
        return self.budget_dir(beta) / "state.safetensors"

    def read_result(self, beta: float) -> dict[str, Any] | None:
        """A completed budget's result, or ``None``."""
        p = self.result_path(beta)
        if not (p.is_file() and self.state_path(beta).is_file()):
            return None
        return load_json(p, "budget result")

    def trained_budgets(self) -> list[float]:
        """Budgets with a complete state and result."""
        root = self.path / "budgets"
        if not root.is_dir():
            return []
        out = []
        for d in root.iterdir():
            if (d / "result.json").is_file() and (d / "state.safetensors").is_file():
                try:
                    out.append(float(d.name))
                except ValueError:
                    continue
        return sorted(out, reverse=True)


@dataclass
class LoadedRun:
    """A trained budget, ready for export or evaluation."""

    run_dir: Path
    config: TrainConfig
    doc: dict[str, Any]
    model: Any  # MultiDomainNet
    budget: float
    result: dict[str, Any]
    domain_docs: list[dict[str, Any]]

    @property
    def shared_network(self) -> bool:
        """True for methods that train one network for all domains (no per-domain switches or BN)."""
        return method_traits(self.config.method).shared_network

    @property
    def run_hash(self) -> str:
        """SHA-256 of the budget's state file (identifies what an export was made from)."""
        return file_sha256(RunDir(self.run_dir).state_path(self.budget))

    def domains(self, data_root: str | None = None) -> DomainSet:
        """Reload the run's data (embedded suite, or the data root recorded / given)."""
        from bap.data.sources import load_domains_from_origin

        return load_domains_from_origin(self.doc["data_origin"], data_root)


def domain_specs_from_doc(doc: dict[str, Any]):
    """:class:`DomainSpec` list from a run config's ``domains`` entries."""
    from bap.core.multidomain import DomainSpec

    return [DomainSpec(d["name"], len(d["classes"]), tuple(d["mean"]), tuple(d["std"])) for d in doc["domains"]]


def build_model_from_run(run: RunDir, doc: dict[str, Any]):
    """Rebuild the (untrained) :class:`MultiDomainNet` of a run from its backbone file and config."""
    from bap.core.graph import analyze
    from bap.core.multidomain import build_multidomain
    from bap.models.backbones import create_backbone

    bdoc = doc["backbone"]
    if not run.backbone_path.is_file():
        raise IncompatibleArtifactError(f"{run.backbone_path} is missing", "the run directory is incomplete; retrain")
    digest = file_sha256(run.backbone_path)
    if digest != bdoc.get("sha256"):
        raise IncompatibleArtifactError(
            f"{run.backbone_path} does not match the hash recorded in config.json", "the run was modified; retrain"
        )
    backbone = create_backbone(bdoc["name"], str(run.backbone_path)).eval()
    graph = analyze(backbone, int(bdoc["input_size"]))
    return build_multidomain(backbone, graph, domain_specs_from_doc(doc)), backbone


def load_run(run_dir: str | Path, budget: float | None = None) -> LoadedRun:
    """Load one trained budget of a run directory.

    Args:
        run_dir: a ``bap train`` output directory.
        budget: the budget to load; ``None`` picks the only one (error if several).

    Raises:
        IncompatibleArtifactError: missing / corrupt / foreign run, budget not trained (the error lists the
            trained budgets), or a finetune baseline (not a multi-domain model).
    """
    from bap.core.io import load_state_dict

    run = RunDir(run_dir)
    # both JSON documents parse before anything else is read, so a damaged run fails with the file's name
    doc = run.read_config()
    run.read_report()
    try:
        cfg = TrainConfig.from_dict(doc["config"])
    except ConfigError as e:  # a value this bap refuses (unknown method, newer version): name the file
        raise IncompatibleArtifactError(f"{run.config_path} has no valid config ({e.one_line()})", "retrain") from None
    except (KeyError, TypeError) as e:
        raise IncompatibleArtifactError(f"{run.config_path} has no valid config ({e})", "retrain") from None
    task = method_traits(cfg.method)
    if not task.exportable:
        exportable = [m for m in method_names() if method_traits(m).exportable]
        raise IncompatibleArtifactError(
            f"{run_dir} is a {cfg.method} baseline ({task.summary}), not a multi-domain model",
            f"export a {', '.join(exportable[:-1])} or {exportable[-1]} run",
        )
    trained = run.trained_budgets()
    if not trained:
        raise IncompatibleArtifactError(f"{run_dir} has no completed budget", "finish training (bap train --resume)")
    if budget is None:
        if len(trained) > 1:
            raise IncompatibleArtifactError(
                f"{run_dir} has several budgets: {', '.join(budget_key(b) for b in trained)}", "pass --budget"
            )
        budget = trained[0]
    if budget_key(budget) not in {budget_key(b) for b in trained}:
        raise IncompatibleArtifactError(
            f"budget {budget_key(budget)} was not trained in {run_dir}",
            f"trained budgets: {', '.join(budget_key(b) for b in trained)}",
        )
    model, _ = build_model_from_run(run, doc)
    state = load_state_dict(run.state_path(budget), what="budget state")
    missing = set(model.trainable_state()) - set(state)
    extra = set(state) - set(model.state_dict())
    if missing or extra:
        raise IncompatibleArtifactError(
            f"{run.state_path(budget)} does not fit the run's backbone ({len(missing)} missing, {len(extra)} unexpected keys)",
            "the run directory is inconsistent; retrain this budget",
        )
    model.load_state_dict(state, strict=False)
    model.eval()
    result = run.read_result(budget) or {}
    return LoadedRun(Path(run_dir), cfg, doc, model, budget, result, doc["domains"])
