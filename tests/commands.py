"""The `hero-bench` commands a file suggests, for the tests that check them."""
import shlex


def header_commands(path):
    """The `hero-bench ...` lines of a file's comments as argv lists, backslash continuations joined."""
    commands, current = [], None
    for line in path.read_text().splitlines():
        text = line[1:].strip() if line.startswith("#") else ""
        if current is None and not text.startswith("hero-bench "):
            continue
        current = text if current is None else f"{current} {text}"
        if current.endswith("\\"):
            current = current[:-1].rstrip()
        else:
            commands.append(shlex.split(current))
            current = None
    return commands
