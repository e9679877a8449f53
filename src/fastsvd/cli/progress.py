"""Progress bars for the CLI: one bar per pipeline stage, on stderr."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from fastsvd.hooks import StepEvent

_LABELS = {
    "first_frame": "first frame",
    "video": "video",
    "decode": "decode",
    "export": "encode mp4",
}


class StageProgress:
    """A ``rich`` progress display fed by the pipeline's ``on_step`` hook."""

    def __init__(self, *, enabled: bool) -> None:
        self._progress = Progress(
            TextColumn("{task.description:>12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._tasks: dict[str, TaskID] = {}
        self._enabled = enabled

    def __enter__(self) -> StageProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def note(self, message: str) -> None:
        """A line above the bars."""
        if self._enabled:
            self._progress.console.print(message, style="dim")

    def on_step(self, event: StepEvent) -> None:
        """Advance the bar of ``event.stage``, creating it at its first step; in a chained
        video the bar names the segment ("video 2/4") and runs once per segment."""
        label = _LABELS.get(event.stage, str(event.stage))
        if event.segments > 1:
            label = f"{label} {event.segment}/{event.segments}"
        task = self._tasks.get(event.stage)
        if task is None:
            task = self._progress.add_task(label, total=event.total)
            self._tasks[event.stage] = task
        self._progress.update(task, description=label, completed=event.step, total=event.total)
