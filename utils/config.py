"""Hydra glue: OmegaConf resolvers and building keyed maps of callbacks and loggers."""

import hashlib
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf


def sweep_choices() -> list[str]:
    """The ``key=value`` choices this multirun job got for the keys its sweep preset sweeps over.

    They become wandb tags, which hold 64 characters at most: a path value is shortened to its file name.
    """
    hydra_cfg = HydraConfig.get()
    swept = set(hydra_cfg.sweeper.get("params") or {})
    choices = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    short = [c if len(c) <= 64 else f"{c.split('=', 1)[0]}={Path(c.split('=', 1)[1]).name}" for c in choices]
    return [c[:64] for c in short]


def cluster_job(default: str) -> str:
    """The run folder name of a job: ``slurm-<job id>`` (SLURM), ``torchrun-<rdzv id>``, else ``default``.

    Every process of a multi-node job must name the same folder, which a clock cannot promise, and a
    requeued or restarted job must find it again to resume. SLURM: ``slurm-<job id>`` (``slurm-<array
    job>_<task>``), a requeued job keeps its id; the test is Lightning's (SLURM_NTASKS set, job name not
    "bash"/"interactive"), so the folder is stable exactly when Lightning auto-requeues. torchrun: every node
    of one rendezvous shares ``--rdzv-id`` (TORCHELASTIC_RUN_ID; ``--standalone`` draws one per launch).
    """
    if "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{array}_{task}" if array and task else f"slurm-{os.environ['SLURM_JOB_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return default if run_id == "none" else f"torchrun-{run_id}"


def job_nodes() -> int:
    """trainer.num_nodes of this job: SLURM's node count, torchrun's number of agents (nodes), else 1."""
    return int(os.environ.get("SLURM_NNODES") or os.environ.get("GROUP_WORLD_SIZE") or 1)


def stable_id(text: str) -> str:
    """A 16-hex-digit id of ``text`` (a run folder): the same run folder gives the same wandb run id."""
    return hashlib.sha1(str(text).encode()).hexdigest()[:16]


def config_choices() -> str:
    """One ``group: choice, ...`` line per config group, for ``--help``: without Hydra's own and the machine's
    ``local`` group, and without the ``_*.yaml`` bases that choices inherit (``backbone/_latte.yaml``)."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    lines = []
    for folder in sorted(p for p in conf.rglob("*") if p.is_dir()):
        group = folder.relative_to(conf).as_posix()
        choices = sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))
        if choices and group.split("/")[0] not in ("hydra", "local"):
            lines.append(f"{group}: {', '.join(choices)}")
    return "\n".join(lines)


def register_resolvers() -> None:
    """Register the configs' resolvers (config_choices, cwd, floordiv, mul, ...); idempotent.

    ``${cwd:}`` is the folder the command was started in. Unlike ``${hydra:runtime.cwd}`` it resolves before
    Hydra sets its runtime, e.g. in a multirun's ``hydra.sweep.dir``.
    """
    resolvers = {
        "config_choices": config_choices,
        "cwd": os.getcwd,
        "floordiv": lambda a, b: int(a) // int(b),
        "mul": lambda a, b: int(a) * int(b),
        "sweep_choices": sweep_choices,
        "cluster_job": cluster_job,
        "job_nodes": job_nodes,
        "stable_id": stable_id,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def instantiate_map(cfg: DictConfig | None, what: str) -> list:
    """Instantiate every entry with a ``_target_`` of a keyed map (``callbacks:`` or ``logger:``)."""
    objects = []
    for name, entry in (cfg or {}).items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            rank_zero_info(f"Instantiating {what} {name} <{entry._target_}>")
            objects.append(hydra.utils.instantiate(entry))
    return objects


register_resolvers()
