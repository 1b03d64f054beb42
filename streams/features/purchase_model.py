"""The BG/NBD parameters a running worker uses: a params.json, re-read when it changes.

``touchline fit-purchase-model --output FILE`` writes the parameters (replacing the file
whole, so a reader never sees half of it). A worker started with
``TOUCHLINE_PURCHASE_MODEL_PARAMS=FILE`` reads it at start and looks at it again at most
every ``TOUCHLINE_PURCHASE_MODEL_CHECK_S`` on the worker's clock (streams/clock.py; 0:
at every batch): when the file's content changed, its parameters replace the ones in use
and the features agent's next snapshots use them. No restart. (The content itself is
compared, a few hundred bytes: a file replaced within the same clock tick, or reusing
the same inode, is still seen.)

- No setting: no parameters; P(alive) and expected purchases are published as null.
- The file missing at start: no parameters until it appears (a first fit may come later).
- The file present but unusable at start: the worker does not start (ParamsError, named).
- Unusable, or gone, after a good read (a hand edit, a half-copied file): the last good
  parameters stay in use and a warning is logged; the next change is read again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from streams.clock import Clock
from streams.features.bgnbd import FittedModel, Params, ParamsError

log = logging.getLogger(__name__)


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: beside it first, then renamed over it, so a worker that
    reloads the file never reads half of it (how `touchline fit-purchase-model` writes its output)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _content(path: Path) -> bytes | None:
    """The file's bytes; None if it is not there (or cannot be read: logged)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("purchase model %s cannot be read: %s", path, exc)
        return None


class PurchaseModel:
    """The parameters of a params.json (``path``; None or "": never any), looked at again once
    ``check_every_ms`` of ``clock`` time have passed since the last look."""

    def __init__(self, path: str | Path | None, clock: Clock, check_every_ms: int) -> None:
        if check_every_ms < 0:
            raise ValueError(f"check_every_ms must be >= 0, got {check_every_ms}")
        self.path = Path(path) if path else None
        self.clock, self.check_every_ms = clock, check_every_ms
        self.model: FittedModel | None = None
        self.reloads = 0  # times parameters were (re)read successfully
        self._seen: bytes | None = None  # the file's content when last looked at
        self._next_check_ms: int | None = None

    def start(self) -> PurchaseModel:
        """Read the file if there is one; ParamsError if it is there but unusable."""
        if self.path is None:
            return self
        self._next_check_ms = self.clock.now_ms() + self.check_every_ms
        try:
            self._seen = self.path.read_bytes()
        except FileNotFoundError:
            self._seen = None
        except OSError as exc:
            raise ParamsError(f"{self.path}: {exc}") from None
        if self._seen is not None:
            self.model = self._parse(self._seen)
            self.reloads += 1
        return self

    def params(self) -> Params | None:
        """The parameters to use now: the file is looked at again if a check is due."""
        if self.path is not None:
            now = self.clock.now_ms()
            if self._next_check_ms is None or now >= self._next_check_ms:
                self._next_check_ms = now + self.check_every_ms
                self._check()
        return None if self.model is None else self.model.params

    def _parse(self, content: bytes) -> FittedModel:
        try:
            return FittedModel.from_json(content.decode())
        except (ParamsError, UnicodeDecodeError) as exc:
            raise ParamsError(f"{self.path}: {exc}") from None

    def _check(self) -> None:
        assert self.path is not None
        seen = _content(self.path)
        if seen == self._seen:
            return
        self._seen = seen
        if seen is None:
            if self.model is not None:
                log.warning("purchase model %s is gone: keeping the parameters read before", self.path)
            return
        try:
            self.model = self._parse(seen)
        except ParamsError as exc:
            log.warning("purchase model not reloaded, keeping the parameters read before: %s", exc)
            return
        self.reloads += 1
        p = self.model.params
        log.info("purchase model reloaded from %s (calibration end %s): r=%s alpha=%s a=%s b=%s", self.path,
                 self.model.calibration_end, p.r, p.alpha, p.a, p.b)
