"""One error type for bad user input, reported as one clear line by every CLI."""


class UserError(Exception):
    """Bad input: a file, field or op the user gave. The CLI prints `error: <msg>` and exits 2."""


def field_error(path, field, msg):
    """Build a UserError that names the file and the field, e.g. `arch.yaml: blocks[3].op: ...`."""
    where = f"{path}: " if path else ""
    return UserError(f"{where}{field}: {msg}")
