"""Training to a wall-clock budget: ``train.time_budget_min``.

With a budget, ``optim.epochs`` is the most epochs a run may take. After its first epoch the
engine knows what an epoch costs on this machine (``epoch_s``, measured) and estimates what a
validation costs (``validation_s``: the validation model's forward on a sample of the validation
images, timed, scaled to all of them); it then fixes the number of epochs once, as the most that
fit the budget counted from the start of the run (set-up, image cache and the first epoch
included). The learning-rate schedule of the first epoch does not depend on the number of epochs
(warm-up, or the first step of cosine decay), so the run is the same recipe with fewer epochs:
"the CPU-hour recipe" means the same hour on a fast and a slow machine. The plan is written into
``config.yaml``, the checkpoints and the first line of ``metrics.jsonl``; a resumed run keeps it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EpochPlan:
    """How many epochs fit the budget, and the measurements that said so (seconds)."""

    epochs: int
    budget_s: float
    elapsed_s: float  # from the start of the run to the end of epoch 1
    epoch_s: float  # epoch 1's training time
    validation_s: float  # estimated cost of one validation (0 without validation)
    estimate_s: float  # the planned run's estimated wall-clock

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (f"time budget {self.budget_s / 60:.3g} min: epoch 1 took {self.epoch_s:.0f} s, "
                f"a validation about {self.validation_s:.0f} s, {self.elapsed_s:.0f} s so far: "
                f"{self.epochs} epoch(s) planned (about {self.estimate_s / 60:.1f} min)")


def validations(epochs: int, eval_every: int) -> int:
    """Validations in a run of ``epochs``: every ``eval_every``-th epoch and the last."""
    return epochs // eval_every + (epochs % eval_every != 0)


def plan_epochs(budget_s: float, elapsed_s: float, epoch_s: float, validation_s: float,
                max_epochs: int, eval_every: int, validated_epoch1: bool) -> EpochPlan:
    """The most epochs (1 to ``max_epochs``) whose estimated wall-clock fits ``budget_s``.

    Estimate for N epochs: ``elapsed_s`` (everything up to the end of epoch 1) + (N - 1)
    epochs of ``epoch_s`` + the validations of epochs 2..N of ``validation_s`` each (including
    the one after the last epoch), plus epoch 1's when it did not validate and N is 1.

    Raises:
        ValueError: a budget, time or epoch count that is not positive.
    """
    if budget_s <= 0 or epoch_s <= 0 or max_epochs < 1 or eval_every < 1:
        raise ValueError(f"plan_epochs: budget {budget_s}, epoch {epoch_s} s, max_epochs "
                         f"{max_epochs}, eval_every {eval_every}: expected positive values")

    def estimate(n: int) -> float:
        later = validations(n, eval_every) - int(validated_epoch1)
        return elapsed_s + (n - 1) * epoch_s + max(0, later) * validation_s

    n = 1
    while n < max_epochs and estimate(n + 1) <= budget_s:
        n += 1
    return EpochPlan(n, budget_s, elapsed_s, epoch_s, validation_s, estimate(n))
