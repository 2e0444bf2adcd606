"""Stop training cleanly on Ctrl-C: finish the current step, save ``last.pt``, exit.

A ``KeyboardInterrupt`` raised in the middle of a step could leave the
optimiser half-updated, and a checkpoint written then would not resume
exactly. :class:`StopRequest` instead turns the first SIGINT (or SIGTERM, what
schedulers and ``torchrun`` send) into a flag that the trainer reads between
steps; a second SIGINT aborts at once, as usual.
"""

from __future__ import annotations

import signal
import sys
import threading

import torch
import torch.distributed as dist


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint to resume from."""


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`requested` instead of raising.

    Outside the main thread (where Python cannot install signal handlers) it
    does nothing and :attr:`requested` stays false.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stream=None) -> None:
        self.requested = False
        self.stream = stream
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:  # noqa: PYI034  (final class in practice)
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort without saving
        self.requested = True
        name = signal.Signals(signum).name
        print(
            f"\n{name}: finishing this step, then saving last.pt (Ctrl-C again to abort without saving)",
            file=self.stream or sys.stderr,
            flush=True,
        )

    def agreed(self, device: torch.device) -> bool:
        """Whether any process asked to stop (a collective when distributed: call it on every rank)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
