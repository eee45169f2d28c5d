"""Exceptions that carry what a person needs to act on them (the CLI turns them into one line)."""

from __future__ import annotations

from pathlib import Path


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: where it stopped and which step ``last.pt`` holds (``None``: no checkpoint yet)."""

    def __init__(self, step: int, checkpoint_step: int | None, out_dir: Path):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint_step, self.out_dir = step, checkpoint_step, Path(out_dir)
