"""How a run lives and ends: its log file holds what the console shows, signals stop it cleanly, and a config
or data mistake reads as one clear error instead of a traceback.

Every entry point (``train.py``, ``sample.py``, ``evaluate.py``) runs its work inside :func:`run_logging`;
``train`` also inside :func:`stop_on_signals`.
"""

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from hydra.errors import HydraException, InstantiationException
from lightning.pytorch import Callback, LightningModule, Trainer
from omegaconf.errors import OmegaConfBaseException

from utils.distributed import sum_over_ranks

log = logging.getLogger(__name__)

#################################################################################
#                    The run log: what the console shows, in a file             #
#################################################################################

# Errors that come from what the user asked for (a config value, a path, a dataset on disk), not from a bug:
# they are reported as one message naming the config key, the traceback goes to the run log only.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    HydraException,
    OmegaConfBaseException,
)


# Loggers that print through handlers of their own when imported before Hydra configures logging.
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics")


@contextmanager
def run_logging() -> Iterator[None]:
    """Send Lightning's messages and Python warnings to the handlers Hydra set up (console and
    ``<run folder>/<task>.log``), and report an error: one clear message for a config or data mistake
    (``HYDRA_FULL_ERROR=1`` shows the traceback), a traceback for anything else; the log gets both.
    """
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)
    try:
        yield
    except Exception as error:
        _to_log_files(error)
        if isinstance(error, USER_ERRORS) and not os.environ.get("HYDRA_FULL_ERROR"):
            print(f"Error: {describe_error(error)}", file=sys.stderr)
            print("(HYDRA_FULL_ERROR=1 shows the traceback; so does the run's log file)", file=sys.stderr)
            sys.exit(1)
        raise
    finally:
        logging.captureWarnings(False)


class ConfigError(ValueError):
    """A mistake in what the config asks for, raised from the error it caused; ``key``: its config key."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def describe_error(error: BaseException) -> str:
    """The first cause's message, with the config key that led to it (ours, or the one Hydra names)."""
    key, cause = None, error
    while True:
        if key is None and isinstance(cause, ConfigError):
            key = cause.key
        if key is None and isinstance(cause, InstantiationException) and "full_key: " in str(cause):
            key = str(cause).rsplit("full_key: ", 1)[1].split()[0]
        if cause.__cause__ is None:
            break
        cause = cause.__cause__
    message = str(cause) if not isinstance(cause, InstantiationException) else str(cause).split("\n")[0]
    return f"{message}\n  (config key: {key})" if key else message


def _to_log_files(error: BaseException) -> None:
    """Write the traceback to the run's log file(s) only: the console gets its own report."""
    record = log.makeRecord(
        log.name,
        logging.ERROR,
        __file__,
        0,
        "the run failed",
        None,
        (type(error), error, error.__traceback__),
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


#################################################################################
#                 Signals: save the current step and exit non-zero              #
#################################################################################


@dataclass
class Stop:
    """The signal that stopped the run, if any (SIGTERM from a scheduler, SIGINT from Ctrl+C)."""

    signum: int | None = None

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process the signal ended: 128 + its number (SIGTERM 143, SIGINT 130)."""
        return 128 + (self.signum or signal.SIGTERM)


@contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """Record SIGTERM and SIGINT for the exit code, and turn a first Ctrl+C into SIGTERM.

    Lightning answers SIGTERM by finishing the current optimizer step and raising ``SIGTERMException`` (on
    every DDP rank at the same step: :class:`SignalsBetweenSteps`); the checkpoint callback then saves that
    step. Lightning chains the SIGTERM handler set here. A second Ctrl+C interrupts at once, as Python's
    default does.
    """
    stop, previous = Stop(), {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def lightning_listens() -> bool:  # inside fit, Lightning's handler calls ours
        return signal.getsignal(signal.SIGTERM) is not on_sigterm

    def on_sigterm(signum, frame) -> None:
        stop.signum = stop.signum or signum
        if not lightning_listens():  # before or after fit: nothing to save, end now
            raise SystemExit(stop.exit_code)

    def on_sigint(signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not lightning_listens():
            raise KeyboardInterrupt
        stop.signum = signum
        log.warning("Ctrl+C: stopping after this step with a checkpoint (Ctrl+C again to abort now)")
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class SignalsBetweenSteps(Callback):
    """Runs Lightning's handlers of SIGTERM and SLURM's requeue signal between training steps, on all ranks.

    Lightning's handlers talk to the other ranks from inside the handler: its SIGTERM handler broadcasts and
    forwards the signal to the ranks it launched, its SLURM handler (SIGUSR1) writes ``hpc_ckpt_<n>.ckpt`` (a
    collective save). A handler runs wherever its process happens to be, so with every rank signalled (SLURM,
    a kill of the process group) the ranks' collectives go out of step and the run can hang. Here a signal is
    only noted; after each step the ranks add up what they noted, and when any rank got a signal, every rank
    runs its handler there: all ranks save and stop at the same step. Added to every training run by
    ``utils.run.train``.
    """

    signals = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.handlers: dict[int, Callable] = {}  # Lightning's handlers of the signals taken over
        self.noted: set[int] = set()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Take over the signals Lightning handles (it set its handlers after on_fit_start, before this)."""
        for signum in self.signals:
            handler = signal.getsignal(signum)
            if callable(handler):
                self.handlers[signum] = handler
                signal.signal(signum, self.note)

    def note(self, signum: int, frame: FrameType | None) -> None:
        """The handler while training: note the signal for the end of the step."""
        self.noted.add(signum)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args, **kwargs) -> None:
        noted, self.noted = self.noted, set()  # a signal that comes meanwhile waits for the next step
        counts = sum_over_ranks([signum in noted for signum in self.signals], pl_module.device)
        for signum, count in zip(self.signals, counts):
            if count and signum in self.handlers:  # some rank got it: every rank runs the handler now
                self.handlers[signum](signum, None)
