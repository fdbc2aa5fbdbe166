"""Trials of a ``search_lm: true`` search never wait for a language model holding their GPU.

With ``search_lm: true`` each language-model setting a trial samples trains its own LM, once, shared by
every trial that samples the same setting (``stages.ensure_lm`` under a file lock). Left alone, a second
trial of a setting whose LM the first is still training would start, take its GPU share, and sit on the
lock. The gate stops that before Ray places the trial: the searcher asks Optuna for a configuration as
usual, and when that configuration's LM is being trained by a trial that has not reported yet, it is
*held* (Tune gets no trial: no actor, no resources) and handed out on a later request, once the LM is
there. Meanwhile Tune's next request gets a configuration of another LM setting, if Optuna proposes one.

The LM counts as ready when any trial of its setting reports its first classifier epoch (that trial
passed ``ensure_lm``). The owner ending without a report (an error) frees the setting: the next held
configuration of it runs and trains the LM. The gate never asks Optuna for more configurations than the
search's ``num_samples`` minus those already handed out, so none is left asked but never run.

Pure bookkeeping, no Ray: :class:`search.searcher.StudySearcher` calls it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ulmfit_core.config import build_recipe


class LMSettingsOf:
    """A trial config's LM group: ``stages.lm_settings_key`` of the base recipe with its sampled values
    (picklable: Ray saves the searcher, and the gate in it, with the experiment)."""

    def __init__(self, base: dict[str, Any]):
        self.base = base

    def __call__(self, config: dict[str, Any]) -> str:
        from search.trainable import sampled_values
        from ulmfit_core import stages

        return stages.lm_settings_key(build_recipe(self.base, sampled_values(config)))


@dataclass
class LMGate:
    group_of: Any  # sampled config -> LM group (LMSettingsOf)
    num_samples: int  # the search's trial budget
    max_held: int = 1  # configurations held at once (each is an Optuna trial asked ahead of time)
    handed_out: int = 0  # configurations Tune received (trials created)
    held: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)  # (asked as, config, group)
    owners: dict[str, str] = field(default_factory=dict)  # group -> trial training its LM, not reported yet
    ready: set[str] = field(default_factory=set)  # groups whose LM exists
    group_of_trial: dict[str, str] = field(default_factory=dict)  # trial handed out -> its group

    def busy(self, group: str) -> bool:
        """A trial of ``group`` is training its LM right now."""
        return group not in self.ready and group in self.owners

    def release(self) -> tuple[str, dict[str, Any]] | None:
        """The oldest held configuration whose LM is no longer being trained (``(asked as, config)``)."""
        for i, (asked_as, config, group) in enumerate(self.held):
            if not self.busy(group):
                del self.held[i]
                return asked_as, config
        return None

    def may_ask(self) -> bool:
        """Room to ask Optuna for one more configuration now."""
        return len(self.held) < self.max_held and self.handed_out + len(self.held) < self.num_samples

    def admit(self, trial_id: str, config: dict[str, Any]) -> bool:
        """True: hand ``config`` to Tune as ``trial_id`` (it trains its LM when no trial has yet). False:
        another trial is training that LM; the configuration is held."""
        group = self.group_of(config)
        if self.busy(group):
            self.held.append((trial_id, config, group))
            return False
        self.handed_out += 1
        self.group_of_trial[trial_id] = group
        if group not in self.ready:
            self.owners[group] = trial_id
        return True

    def on_result(self, trial_id: str) -> None:
        """The trial reported an epoch: its LM is there."""
        group = self.group_of_trial.get(trial_id)
        if group is not None:
            self.ready.add(group)
            self.owners.pop(group, None)

    def on_end(self, trial_id: str) -> None:
        group = self.group_of_trial.pop(trial_id, None)
        if group is not None and self.owners.get(group) == trial_id:
            del self.owners[group]  # ended before any report: the next trial of its group trains the LM
