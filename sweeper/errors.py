"""The one error type users see: a short, single-line message naming where the problem is."""
from __future__ import annotations


class SweeperError(Exception):
    """A problem with the user's input or environment, reported as one line and exit status 2.

    `where` names the file (and field) at fault, so the message reads like a compiler error:
    ``studies/x.py: axes.activation: unknown activation 'relux'; valid choices: elu, gelu, ...``
    """

    def __init__(self, message: str, where: str | None = None):
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, where: str) -> "SweeperError":
        """The same error, located under an outer context (a file, then a field)."""
        return SweeperError(self.message, f"{where}: {self.where}" if self.where else where)


def missing_package(e: BaseException | None) -> str | None:
    """The package whose absence raised `e`, also when a library caught it and raised its own
    ImportError from it (Ray Tune's `ray.train` does so for pydantic); None for a module of ours."""
    while e is not None:
        if isinstance(e, ModuleNotFoundError) and e.name and e.name.split(".")[0] != "sweeper":
            return e.name.split(".")[0]
        e = e.__cause__ or e.__context__
    return None
