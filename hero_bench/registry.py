"""One small generic registry: a name maps to a factory (datasets, models, methods, metrics)."""
import fnmatch
import re

from hero_bench.errors import ConfigError


def natural_key(name):
    """Sort key that orders embedded numbers numerically: resnet20 < resnet56 < resnet110."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class Registry:
    """Maps names to factories. `register` is a decorator; `get` fails with the list of known names."""

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

    def create(self, name, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self, pattern="*"):
        """Registered names matching a shell-style wildcard, in natural order."""
        return sorted(fnmatch.filter(self._factories, pattern), key=natural_key)

    def __contains__(self, name):
        return name in self._factories
