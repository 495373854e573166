"""The training callbacks that connect the loop to evaluation and figures.

The loop (:mod:`gatedvae.train`) imports neither evaluation nor viz; these callbacks do, and the
commands attach them: ``gatedvae train`` attaches :func:`standard_callbacks` (TensorBoard images
every ``train.image_every`` steps and at the end; the evaluation of ``train.evaluate`` when
training ends), a sweep attaches :class:`TensorBoardImages` only (it evaluates its runs with the
sweep's own settings). A Python caller of :func:`gatedvae.train.train` gets what it attaches::

    from gatedvae.callbacks import standard_callbacks
    from gatedvae.train import train

    summary = train(config, "runs/x", callbacks=standard_callbacks())
"""

from __future__ import annotations

from typing import Any

from .train.callbacks import Callback, RunInfo

__all__ = ["TensorBoardImages", "EvaluateAtEnd", "standard_callbacks"]


class TensorBoardImages(Callback):
    """Reconstructions and latent traversals into TensorBoard every ``train.image_every`` steps
    and when training ends (nothing when the run writes no TensorBoard)."""

    def on_step(self, run: RunInfo, step: int) -> None:
        every = run.prep.config.train.image_every
        if run.writer is not None and every and step % every == 0:
            self._log(run, step)

    def uses_model(self, run: RunInfo, step: int) -> bool:
        every = run.prep.config.train.image_every
        return run.writer is not None and bool(every) and step % every == 0

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        if run.writer is not None:
            self._log(run, summary["steps"])

    @staticmethod
    def _log(run: RunInfo, step: int) -> None:
        from .viz.figures import reconstruction_tensor, traversal_tensor

        run.writer.add_image("reconstructions", reconstruction_tensor(run.prep), step)
        run.writer.add_image("traversals", traversal_tensor(run.prep), step)


class EvaluateAtEnd(Callback):
    """``gatedvae evaluate`` on the finished run (``RUN/metrics.json``, ``RUN/figures/``) with the
    preset ``train.evaluate`` names (nothing when it is ``none``) and the run's ``train.seed``; the
    headline scores go into ``summary.json`` as ``evaluation``.

    The trainer's dataset and model are evaluated where they are (on the training device, the
    model holding the final checkpoint's weights): nothing is built or loaded a second time, so
    a GPU holds one copy of the data, and the scores are those ``gatedvae evaluate RUN`` gives."""

    def uses_model(self, run: RunInfo, step: int) -> bool:
        return False  # on_end only

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        cfg = run.prep.config.train
        if cfg.evaluate == "none":
            return
        from .evaluation import evaluate_run

        doc = evaluate_run(run.run_dir, preset=cfg.evaluate, seed=cfg.seed, progress=not run.quiet, prep=run.prep)
        summary["evaluation"] = doc["headline"]


def standard_callbacks() -> list[Callback]:
    """What ``gatedvae train`` attaches: TensorBoard images, then the ``train.evaluate`` evaluation."""
    return [TensorBoardImages(), EvaluateAtEnd()]
