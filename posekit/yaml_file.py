"""The one YAML reader of the project: yaml.safe_load's types (nothing loaded is executed), with the document's
size bounded before anything is built from it. Aliases are shared nodes in the composed graph, so a few lines of
anchors (`a: &a [*b, *b, ...]`) can stand for a billion values that any later walk (validation, json.dumps, a deep
copy) would expand: the expanded node count and the nesting depth are counted on the graph (each node once,
memoized) and refused past the limits, anywhere in the document. A recursive alias is refused too."""

from __future__ import annotations

from pathlib import Path

import yaml

from posekit.errors import UserError

MAX_NODES = 1_000_000  # values after alias expansion: a search space or arch file holds a few thousand
MAX_DEPTH = 64  # nesting: arch files nest 4 deep


def _expanded_size(root: yaml.Node, where: str) -> int:
    """Values the document expands to (each alias counted as a full copy), refused past MAX_NODES or MAX_DEPTH."""
    size: dict[int, int] = {}
    active: set[int] = set()

    def walk(node, depth):
        key = id(node)
        if key in size:
            return size[key]
        if key in active:
            raise UserError(f"{where}: a YAML alias refers to itself (a recursive structure); refused")
        if depth > MAX_DEPTH:
            raise UserError(f"{where}: YAML nested deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1}); "
                            "refused")
        active.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                n += walk(child, depth + 1)
                if n > MAX_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                n += walk(k, depth + 1) + walk(v, depth + 1)
                if n > MAX_NODES:
                    break
        active.discard(key)
        if n > MAX_NODES:
            raise UserError(f"{where}: the YAML expands to more than {MAX_NODES:,} values (aliases of aliases near "
                            f"line {node.start_mark.line + 1}); refused")
        size[key] = n
        return n

    return walk(root, 0)


def loads(text: str, where: str = "<yaml>"):
    """Parse YAML text (safe types only) after bounding its expanded size and depth; one UserError on any fault."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise UserError(f"{where}: malformed YAML: {str(e).strip().splitlines()[0]}") from None
    except RecursionError:  # thousands of nested brackets overflow PyYAML's recursive composer first
        raise UserError(f"{where}: YAML nested too deep to read; refused") from None
    finally:
        loader.dispose()


def load(path: str | Path):
    """Read and parse a YAML file (see loads); a missing or unreadable file is one UserError."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read: {e}") from None
    return loads(text, str(p))
