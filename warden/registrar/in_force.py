"""The services in force on this host: the service files', then those the running
containers define by labels (as the operator's label policy and the handlers'
objections allow), and what a change of them retires. No Docker, Redis, thread or
signal: the Registrar's thread asks and carries out."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from warden.labels import LabelPolicy, LabelProblem, LabelServices, label_services
from warden.model import Container, DesiredState, Ownership
from warden.services import Service

#: why a store refuses a new label-defined service its keys, as ``(label, reason)``;
#: None when none does
Objection = Callable[[Service], Optional["tuple[str, str]"]]


class ServicesInForce:
    """The services the Registrar routes by."""

    def __init__(self, file_services: tuple[Service, ...], label_prefix: str, policy: LabelPolicy) -> None:
        #: the services the files define
        self.file_services = file_services
        self.label_prefix = label_prefix
        #: the frontends and load balancers the operator lets containers define
        self.policy = policy
        #: the services running containers define by labels, and the refused ones
        self.labelled = LabelServices()
        #: the services in force: the files', then the labels'
        self.services: tuple[Service, ...] = file_services

    def relabel(self, containers: Iterable[Container], objection: Objection, keep_gone: bool = False) -> list[LabelProblem]:
        """Judge the labels of ``containers`` again; returns the refusals that are new
        (a container whose labels were refused before is not said twice).
        ``keep_gone`` keeps a label-defined service whose containers went (until their
        routes are gone too)."""
        labelled = label_services(containers, self.file_services, self.label_prefix, self.policy,
                                  objection, standing=self.labelled.services)
        new = [problem for cid, problem in labelled.refused.items() if cid not in self.labelled.refused]
        by_name = {s.name: s for s in labelled.services}
        if keep_gone:
            taken = {k for s in labelled.services for k in (s.frontend, s.backend_name)}
            for old in self.labelled.services:
                if old.name not in by_name and not {old.frontend, old.backend_name} & taken:
                    by_name[old.name] = old
        self.labelled = LabelServices(tuple(by_name[n] for n in sorted(by_name)), labelled.refused)
        return new

    def combined(self) -> tuple[Service, ...]:
        """The files' services, then the labels'."""
        return tuple(self.file_services) + self.labelled.services

    def replace(self, new: tuple[Service, ...], ownership: Ownership) -> Optional[DesiredState]:
        """Put ``new`` in force; returns what the old services held that the new ones
        no longer name (to be retired), or None when nothing changed."""
        old = self.services
        if new == old and all(a.metric == b.metric and a.scaling == b.scaling for a, b in zip(new, old)):
            return None
        new_frontends = {(s.frontend, s.backend_name) for s in new}
        new_frontend_keys = {s.frontend for s in new}
        new_backends = {s.backend_name for s in new}
        new_targets = {t for s in new for t in s.targets}
        self.services = new
        return DesiredState(
            frontends={s.frontend: s.backend_name for s in old
                       if s.frontend and (s.frontend, s.backend_name) not in new_frontends
                       and s.frontend not in new_frontend_keys},
            backends={s.backend_name: frozenset() for s in old if s.backend_name not in new_backends},
            targets={t: False for s in old for t in s.targets if t not in new_targets},
            ownership=ownership,
        )


def changed(before: Iterable[Service], after: Iterable[Service]) -> set[str]:
    """The names of the services defined differently (or only) in one of the two."""
    old, new = {s.name: s for s in before}, {s.name: s for s in after}
    return {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}
