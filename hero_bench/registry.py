"""One small generic registry: a name maps to a factory (datasets, models, metrics) or a rule (methods).

Every name records where it came from, its origin: "built-in", or the plugin being imported when it
was registered (`origin`, which hero_bench.plugins opens around each plugin's import). A name is
registered once: a second registration is refused naming both origins. A registry may check each
factory as it is registered (`check`: why it cannot be used, or None), so a plugin's factory with a
signature hero-bench cannot call fails at its registration, not in a trial.
"""
import contextlib
import contextvars
import fnmatch
import inspect
import re

from hero_bench.errors import ConfigError

BUILT_IN = "built-in"
_current = contextvars.ContextVar("origin", default=None)  # (origin, names registered) of the plugin being imported


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


def call_problem(factory, args=(), keywords=()):
    """Why `factory` cannot be called as hero-bench calls it, factory(*args, **keywords) with its other
    arguments at their defaults (they are the experiment's data.args, model.args, optimizer.args);
    None when it can. `args` and `keywords` are the arguments' names."""
    call = ", ".join([*args, *(f"{k}=..." for k in keywords)])
    name = getattr(factory, "__name__", repr(factory))
    try:
        inspect.signature(factory).bind(*args, **dict.fromkeys(keywords))
    except (TypeError, ValueError) as error:
        return f"hero-bench calls it as {name}({call}), which its signature refuses: {error}"
    return None


@contextlib.contextmanager
def origin(text):
    """Registrations made in this block come from `text` (e.g. "plugin my_models (/lab/my_models.py)").
    Yields the list of (kind, name) they make, filled as they happen."""
    made = []
    token = _current.set((text, made))
    try:
        yield made
    finally:
        _current.reset(token)


class Registry:
    """Maps names to factories. `register` is a decorator; `get` fails with the list of known names;
    `create` checks the keyword arguments against the factory's signature before calling it.
    `check(factory)`: why a factory cannot be registered (its signature), or None."""

    def __init__(self, kind, check=None):
        self.kind = kind
        self._check = check
        self._factories = {}
        self._origins = {}

    def register(self, name=None):
        def decorator(factory):
            key = name or factory.__name__
            text, made = _current.get() or (BUILT_IN, [])
            if key in self._factories:
                raise ConfigError(f"{self.kind} {key!r} is already registered ({self._origins[key]}); {text} registers it again")
            problem = self._check(factory) if self._check else None
            if problem:
                raise ConfigError(f"{text}: {self.kind} {key!r}: {problem}")
            self._factories[key] = factory
            self._origins[key] = text
            made.append((self.kind, key))
            return factory

        return decorator

    def get(self, name):
        if name not in self._factories:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._factories[name]

    def origin(self, name):
        """Where `name` was registered: "built-in", or the plugin that registered it."""
        self.get(name)
        return self._origins[name]

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
