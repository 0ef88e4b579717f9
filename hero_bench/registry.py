"""One small generic registry: a name maps to a factory (datasets, models, metrics) or a rule (methods)."""
import fnmatch
import inspect
import re

from hero_bench.errors import ConfigError


def natural_key(name):
    """Sort key that orders embedded numbers numerically: resnet20 < resnet56 < resnet110."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_keywords(factory, kwargs, what, skip=(), listing="allowed"):
    """Refuse keyword arguments that `factory` does not take: `what` (with {} for the argument's
    name) followed by the list of the allowed ones."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return
    allowed = [p.name for p in parameters if p.name not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"{what.format(unknown[0])}; {listing}: {', '.join(allowed) or 'none'}")


class Registry:
    """Maps names to factories. `register` is a decorator; `get` fails with the list of known names;
    `create` checks the keyword arguments against the factory's signature before calling it."""

    def __init__(self, kind):
        self.kind = kind
        self._factories = {}

    def register(self, name=None):
        def decorator(factory):
            key = name or factory.__name__
            if key in self._factories:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._factories[key] = factory
            return factory

        return decorator

    def get(self, name):
        if name not in self._factories:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._factories[name]

    def check(self, name, kwargs, key=None, skip=(), values=None):
        """Refuse `kwargs` that the factory of `name` does not take (other than the `skip` ones, which
        the caller supplies); `key` is their dotted config section, e.g. model.args. `values`: name ->
        {argument: check(dotted key, value)}, the checks of the values each factory takes."""
        where = f"{key}.{{}}" if key else "{!r}"
        check_keywords(self.get(name), kwargs, f"{where} is not an option of {self.kind} {name!r}", skip)
        checks = (values or {}).get(name, {})
        for arg, value in kwargs.items():
            if arg in checks:
                checks[arg](where.format(arg), value)

    def create(self, name, *args, **kwargs):
        """factory(*args, **kwargs), after the keyword check."""
        self.check(name, kwargs)
        return self.get(name)(*args, **kwargs)

    def names(self, pattern="*"):
        """Registered names matching a shell-style wildcard, in natural order."""
        return sorted(fnmatch.filter(self._factories, pattern), key=natural_key)

    def __contains__(self, name):
        return name in self._factories
