"""The hook point a Python hook receives as its second argument."""


class HookPoint(str):
    """The hook point's name: a ``str`` (``fn(act, hook_name)``) with ``.name`` as well, so hooks
    written for TransformerLens (``fn(act, hook)`` using ``hook.name``) run unchanged."""

    @property
    def name(self) -> str:
        return str(self)
