"""The loss of a ``dlm train`` step for the run's objective, and the validation loss with fixed
noise, as a mixin of :class:`dlm.train.trainer.Trainer`.
"""

from __future__ import annotations

import torch

from dlm.models.registry import CAUSAL_OBJECTIVES
from dlm.train.objectives import causal_lm_loss, diffusion_loss


class Evaluation:
    """Needs ``acc``, ``cfg``, ``trainable``, ``idlm``, ``facts``, ``val_data`` and ``_batch`` of the trainer."""

    def _loss(self, batch, step: int, generator=None, objective: str | None = None) -> torch.Tensor:
        cfg = self.cfg
        objective = objective or cfg.objective
        if objective == "causal":
            return causal_lm_loss(self.trainable, batch)
        if objective == "idlm":
            return self.idlm.loss(self.trainable, batch, step)
        if objective == "dsl":
            return self.dsl.loss(self.trainable, batch, self.facts.shifted, generator)
        if objective == "scope":
            return self.scope.loss(self.trainable, batch, self.facts.shifted, generator)
        return diffusion_loss(self.trainable, batch, mask_id=self.facts.mask_id, shifted=self.facts.shifted,
                              objective=objective, step=step, anneal_steps=cfg.anneal_steps, generator=generator)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the first ``eval_batches`` validation batches with fixed noise (seed 1234):
        the causal CE, or for every diffusion objective (a2d included) the same per-token
        masked-diffusion ELBO with full attention, in nats - comparable across models; idlm: its own
        loss at the final stride (L_mask and L_clean go to the log); dsl: its own CE under fixed noise."""
        cfg = self.cfg
        self.trainable.eval()
        g = torch.Generator(device=self.acc.device).manual_seed(1234)
        n = len(self.val_data)
        losses = []
        for b in range(cfg.eval_batches):
            idx = torch.arange(b * cfg.batch_size, min((b + 1) * cfg.batch_size, n))
            if len(idx) == 0:
                break
            objective = cfg.objective if cfg.objective in (*CAUSAL_OBJECTIVES, "dsl") else "mdm"  # scope: mdm
            losses.append(float(self._loss(self._batch(self.val_data, idx), step=0, generator=g, objective=objective)))
        self.trainable.train()
        return sum(losses) / max(1, len(losses))
