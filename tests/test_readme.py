"""The README's commands as written: CI runs its setup, quickstart and test lines; every multirun runs."""

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY

README = ROOT / "README.md"


def readme_commands() -> list[str]:
    """Every command of the README's ```bash blocks: continuation lines joined, trailing comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for command in re.sub(r"\\\n\s*", "", block).splitlines():
            command = re.sub(r"\s+#.*$", "", command).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def ci_lines() -> list[str]:
    """The command lines of ``.ci/run``, comments dropped."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


#################################################################################
#                        CI runs what the README says                           #
#################################################################################


def test_ci_runs_the_readme_setup_quickstart_and_test_commands_in_a_fresh_venv():
    commands = readme_commands()
    setup, quickstart = commands[0], commands[1]
    assert setup.startswith("python -m venv .venv && . .venv/bin/activate"), (
        "the README's first command must make and enter a fresh virtual environment"
    )
    assert 'pip install -e ".[dev]"' in setup
    assert quickstart == "python train.py"
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command == "python -m pytest"
    ci = ci_lines()
    for command in (setup, quickstart, test_command):
        assert command in ci, f".ci/run does not run the README's `{command}` as written"
    order = [ci.index(c) for c in (setup, quickstart, test_command)]
    assert order == sorted(order), "setup, then the quickstart, then the tests"
    assert ci.index("rm -rf .venv") < order[0], "CI must start from a new virtual environment"
    assert "deptry ." in ci and "ruff check ." in ci


def test_git_ignores_what_a_run_writes_and_nothing_else():
    ignored = subprocess.run(
        [
            "git",
            "check-ignore",
            "data/frame_counts/x.json",
            "logs/x",
            ".venv/bin/python",
            "conf/data/new.yaml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == ["data/frame_counts/x.json", "logs/x", ".venv/bin/python"], "conf/data/ is config"


@pytest.mark.slow
def test_a_train_run_leaves_git_status_clean(tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    repo = tmp_path / "repo"
    for name in tracked:  # the checkout as committed, in a repository of its own
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git[:5], "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "checkout"], check=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = subprocess.run(
        [sys.executable, "train.py", *[o for o in TINY if not o.startswith("logger=")], "logger=[wandb,csv]"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (repo / "logs").is_dir()
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout
    assert status == "", f"a run left files git sees:\n{status}"


#################################################################################
#                   Every multirun command, run as written                      #
#################################################################################

MULTIRUNS = [c for c in readme_commands() if c.startswith("python train.py -m ")]
# tiny jobs, appended after the README's own arguments; no paths.* or hydra.* override
SHRINK = [o for o in TINY if not o.startswith("logger=")]


def _fake_slurm(bin_dir: Path, record: Path) -> None:
    """An ``sbatch`` that keeps the script it was given and refuses to submit it (+ the ``srun`` submitit
    looks for)."""
    bin_dir.mkdir()
    scripts = {
        "sbatch": f'#!/bin/sh\ncp "$1" {record}\necho "fake sbatch: not submitted" >&2\nexit 1\n',
        "srun": "#!/bin/sh\nexit 1\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
@pytest.mark.parametrize("command", MULTIRUNS, ids=range(len(MULTIRUNS)))
def test_readme_multirun_command_runs_as_written(tmp_path, command):
    assert "paths." not in command and "hydra.sweep" not in command
    args = command.split()[3:]  # after `python train.py -m`
    launcher = next((a.split("=")[1] for a in args if a.startswith("hydra/launcher=")), "basic")
    slurm = launcher.startswith("slurm_") or launcher == "submitit_slurm"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HOME": str(tmp_path)}
    record = tmp_path / "sbatch_script.sh"
    if slurm:
        _fake_slurm(tmp_path / "bin", record)
        env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *args, *SHRINK],
        cwd=tmp_path,  # logs/ lands here, as it would in the repository root
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if slurm:  # runs up to the submission: the job script holds the README's resources
        assert "fake sbatch: not submitted" in result.stderr, result.stderr[-3000:]
        script = record.read_text()
        for option in re.findall(r"hydra\.launcher\.(\w+)=(\S+)", command):
            name, value = option
            if name in ("nodes", "partition", "gpus_per_node", "cpus_per_task"):
                assert f"--{name.replace('_', '-')}={value}" in script, (option, script)
        if launcher.startswith("slurm_"):  # the preset's layout: one task per GPU, 3 days, 8 CPUs per task
            gpus = re.fullmatch(r"slurm_(\d+)gpu", launcher).group(1)
            for option in (f"--gpus-per-node={gpus}", f"--ntasks-per-node={gpus}", "--cpus-per-task=8"):
                assert option in script, (option, script)
            assert "--time=4320" in script, script
        return
    assert result.returncode == 0, result.stderr[-4000:]
    (sweep,) = (tmp_path / "logs").glob("*/multiruns/*")
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert len(jobs) >= 2, f"{command} ran {len(jobs)} job(s)"
    for job in jobs:
        assert (job / "metrics.json").is_file(), f"job {job.name} wrote no metrics.json"
        assert (job / "checkpoints" / "last.ckpt").is_file()


#################################################################################
#                      --help offers only real choices                          #
#################################################################################


def test_help_lists_every_real_choice_and_no_base_config(tmp_path):
    from tests.conftest import compose_train

    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    groups_text = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = dict(line.split(": ", 1) for line in groups_text.splitlines() if ": " in line)
    choices = {group: names.split(", ") for group, names in groups.items()}
    assert "latte_XL_2" in choices["backbone"] and "latte" not in choices["backbone"]
    assert "synthetic" in choices["data"] and "videos" not in choices["data"]
    assert choices["debug"] == ["fdr", "limit", "overfit"]
    assert not any(name.startswith("_") for names in choices.values() for name in names)
    assert "hydra" not in choices and "local" not in choices
    for group, names in choices.items():  # every offered choice composes (the data roots stay unset)
        config = "evaluate" if group in ("metrics", "real") else "train"  # evaluate.py's own groups
        for name in names:
            compose_train(tmp_path, [f"{group}={name}"], config_name=config)


#################################################################################
#              Resume and sample, as written, on a run of the quickstart         #
#################################################################################


def _readme_block(containing: str) -> list[str]:
    """The commands of the first ```bash block that holds ``containing``."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if containing in b)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in re.sub(r"\\\n\s*", "", block).splitlines()]
    return [line for line in lines if line]


@pytest.mark.slow
def test_readme_resume_and_sample_commands_run_as_written(tmp_path):
    first = _run_script(tmp_path, [f"python train.py {' '.join(TINY)}"])
    assert first.returncode == 0, first.stderr[-3000:]
    resume = _readme_block("python train.py ckpt_path=$run/")
    sample = _readme_block("python sample.py ckpt_path=$run/")
    assert resume[0].startswith("run=") and "ckpt_path=$run/checkpoints/last.ckpt" in resume[1]
    # tiny overrides after the README's own (keys the command sets keep its value), with rare periodic work
    rare = ["trainer.val_check_interval", "callbacks.model_checkpoint.every_n_train_steps"]
    rare += ["callbacks.video_sampler.every_n_steps"]
    tiny = [o for o in TINY if o.split("=")[0] not in resume[1] + " ".join(rare)]
    tiny += [f"{key}=1000" for key in rare]
    result = _run_script(tmp_path, [resume[0], f"{resume[1]} {' '.join(tiny)}", *sample])
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = max((tmp_path / "logs" / "quickstart" / "runs").iterdir())
    assert (resumed / "checkpoints" / "step_0000600.ckpt").is_file(), "resumed up to max_steps=600"
    grids = sorted((tmp_path / "logs" / "sample" / "runs").glob("*/grid.mp4"))
    assert len(grids) == 2, "both sample commands wrote their grid"


def _run_script(cwd: Path, lines: list[str]) -> subprocess.CompletedProcess:
    """Run README lines in bash from ``cwd``, with this Python and the repository's entry points."""
    script = "set -e\n" + "\n".join(
        re.sub(r"^python (\w+\.py)", rf"{sys.executable} {ROOT}/\1", line) for line in lines
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HOME": str(cwd)}
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
