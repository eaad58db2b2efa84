"""The file's layout stays true (STYLE.md "Sections", issue #16 §1).

- the docstring's Contents lists exactly the numbered banners, in order, and
  under each section the short titles of its sub-banners;
- every sub-banner has code under it, and every long section has sub-banners;
- leaf to root: a top-level definition uses only module-level names defined in
  its own section or an earlier one. Inside one section the order is free
  (function bodies run later; what runs at import time is proved by importing
  the module at all);
- the pure sections 2-6 use no I/O name (IO_NAMES, IO_ATTRIBUTES below);
- functions and methods <= 50 lines, classes <= 250 (from the def/class line
  to the last line, decorators aside): no exceptions listed;
- every name in the docstring's Paths block exists, in the section its line says.
"""
import ast
import os
import re

import pytest

import amdgpu_top_web as atw

SOURCE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "amdgpu_top_web.py")
RULE = "# " + "-" * 75
SECTION_RE = re.compile(r"^# (\d+)\. (.+)$")
SUB_RE = re.compile(r"^# -- (.+?) -+$")
TOC_SECTION_RE = re.compile(r"^    ([ \d]\d)\. (.+)$")
TOC_SUB_RE = re.compile(r"^ {8}(\S.*)$")
PLACE_RE = re.compile(r"^      §(\d+)\s+(\S.*)$")
PLACE_MORE_RE = re.compile(r"^ {11}(\S.*)$")
PURE_SECTIONS = range(2, 7)
MAX_FUNCTION_LINES = 50
MAX_CLASS_LINES = 250
LONG_SECTION_LINES = 300

# Names that mean I/O (files, sockets, threads, processes, the clock, the
# console): none may be used in sections 2-6, which take text, bytes and times.
IO_NAMES = {"open", "print", "input", "socket", "threading", "subprocess", "selectors",
            "select", "signal", "fcntl", "pwd", "sqlite3", "tracemalloc", "shutil",
            "tempfile", "urlopen", "LOG"}
IO_ATTRIBUTES = {
    "time": {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter",
             "perf_counter_ns", "process_time", "thread_time", "sleep"},
    "sys": {"stdout", "stderr", "stdin", "exit", "_current_frames"},
    "ctypes": {"CDLL", "cdll", "PyDLL", "LibraryLoader", "util"},
    "http": {"client"},
}
# os: only these pure helpers (the rest opens, stats, lists or forks).
OS_PURE = {"path", "sep", "major", "minor", "makedev", "strerror", "fsdecode", "fsencode"}
OS_PATH_PURE = {"join", "basename", "dirname", "normpath", "splitext", "isabs", "expanduser"}


def read_source():
    with open(SOURCE_PATH, encoding="utf-8") as f:
        return f.read()


def banners(lines):
    """[(number, title, line index)] of the numbered sections."""
    out = []
    for i in range(len(lines) - 2):
        match = SECTION_RE.match(lines[i + 1])
        if lines[i] == RULE and match:
            j = i + 2
            while not lines[j].startswith("# -") and lines[j].startswith("#    "):
                j += 1
            assert lines[j] == RULE, "banner at line %d is not closed by a rule line" % (i + 2)
            out.append((int(match.group(1)), match.group(2), i))
    return out


def section_of_lines(lines):
    """The section number of every line (0 before the first banner)."""
    starts = {index: number for number, _, index in banners(lines)}
    out, current = [], 0
    for i in range(len(lines)):
        current = starts.get(i, current)
        out.append(current)
    return out


def sub_banners(lines):
    """{section: [(title, line index)]}."""
    sections = section_of_lines(lines)
    out = {}
    for i, line in enumerate(lines):
        match = SUB_RE.match(line)
        if match:
            out.setdefault(sections[i], []).append((match.group(1), i))
    return out


def docstring_block(title):
    """The indented lines of the docstring block whose heading starts with title."""
    lines = atw.__doc__.split("\n")
    start = next(i for i, l in enumerate(lines) if l.startswith(title) and l.endswith("::"))
    block = []
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return block


def toc_short(title):
    """How the Contents names a sub-banner: its title before any " (" or ": "."""
    return title.split(" (")[0].split(": ")[0].strip(" ;")


def module_definitions(tree, sections):
    """{name: section} of every module-level binding (first one wins)."""
    home = {}
    for node in tree.body:
        for name in bound_names(node):
            home.setdefault(name, sections[node.lineno - 1])
    return home


def bound_names(node):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, ast.Assign):
        return [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return [n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.If, ast.Try)):
        children = list(node.body) + list(node.orelse)
        for handler in getattr(node, "handlers", ()):
            children += handler.body
        return [name for child in children for name in bound_names(child)]
    return []


@pytest.fixture(scope="module")
def source():
    text = read_source()
    lines = text.split("\n")
    return text, lines, ast.parse(text), section_of_lines(lines)


def test_the_contents_lists_exactly_the_banners_in_order(source):
    _, lines, _, _ = source
    toc = [TOC_SECTION_RE.match(l) for l in docstring_block("Contents")]
    listed = [(int(m.group(1)), m.group(2)) for m in toc if m]
    found = [(number, title) for number, title, _ in banners(lines)]
    assert listed[0][0] == 0 and listed[1:] == found
    assert [number for number, _ in found] == list(range(1, len(found) + 1))


def test_the_contents_names_every_sub_banner_under_its_section(source):
    _, lines, _, _ = source
    listed, current = {}, None
    for line in docstring_block("Contents"):
        section = TOC_SECTION_RE.match(line)
        if section:
            current = int(section.group(1))
            listed[current] = ""
        elif TOC_SUB_RE.match(line) and current is not None:
            listed[current] += " " + line.strip()
    for number, subs in sub_banners(lines).items():
        shorts = [toc_short(title) for title, _ in subs]
        named = [s.strip() for s in listed.get(number, "").split(";")]
        assert [s for s in named if s] == list(dict.fromkeys(shorts)), number


def test_every_sub_banner_has_code_under_it_and_long_sections_have_them(source):
    _, lines, tree, sections = source
    starts = [node.lineno - 1 for node in tree.body]
    marks = sorted([index for _, _, index in banners(lines)] +
                   [index for subs in sub_banners(lines).values() for _, index in subs])
    for mark, following in zip(marks, marks[1:] + [len(lines)]):
        if SUB_RE.match(lines[mark]):
            assert any(mark < start < following for start in starts), lines[mark]
    for number, title, index in banners(lines):
        size = sum(1 for s in sections if s == number)
        if size > LONG_SECTION_LINES:
            assert number in sub_banners(lines), "section %d (%d lines) has no sub-banner" % (
                number, size)


def late_uses(tree, sections):
    home = module_definitions(tree, sections)
    late = []
    for node in tree.body:
        mine = sections[node.lineno - 1]
        for used in ast.walk(node):
            if isinstance(used, ast.Name) and home.get(used.id, 0) > mine:
                late.append("%s (line %d, section %d) uses %s from section %d" % (
                    bound_names(node) or type(node).__name__, used.lineno, mine, used.id,
                    home[used.id]))
    return late


def test_no_name_is_used_before_the_section_that_defines_it(source):
    _, _, tree, sections = source
    assert late_uses(tree, sections) == []


def test_the_order_check_sees_a_late_use():
    lines = [RULE, "# 1. Leaf", RULE, "def leaf():", "    return root()",
             RULE, "# 2. Root", RULE, "def root():", "    return leaf()"]
    tree = ast.parse("\n".join(lines))
    assert late_uses(tree, section_of_lines(lines)) == [
        "['leaf'] (line 5, section 1) uses root from section 2"]


def io_uses(node):
    for used in ast.walk(node):
        if isinstance(used, ast.Name) and isinstance(used.ctx, ast.Load) and used.id in IO_NAMES:
            yield used.id, used.lineno
        if not (isinstance(used, ast.Attribute) and isinstance(used.value, ast.Name)):
            continue
        module, attr = used.value.id, used.attr
        if attr in IO_ATTRIBUTES.get(module, ()) or (module == "os" and attr not in OS_PURE):
            yield "%s.%s" % (module, attr), used.lineno
    for used in ast.walk(node):
        if (isinstance(used, ast.Attribute) and isinstance(used.value, ast.Attribute)
                and isinstance(used.value.value, ast.Name) and used.value.value.id == "os"
                and used.value.attr == "path" and used.attr not in OS_PATH_PURE):
            yield "os.path." + used.attr, used.lineno


def test_the_pure_sections_use_no_io_name(source):
    _, _, tree, sections = source
    found = [(name, line) for node in tree.body if sections[node.lineno - 1] in PURE_SECTIONS
             for name, line in io_uses(node)]
    assert found == []


def test_the_io_check_sees_what_it_looks_for():
    tree = ast.parse("def f(path):\n    with open(path) as g:\n        return time.monotonic(), "
                     "os.listdir(path), os.path.exists(path), os.path.join(path, 'x')\n")
    assert sorted(name for name, _ in io_uses(tree.body[0])) == [
        "open", "os.listdir", "os.path.exists", "time.monotonic"]


def lengths(tree):
    """(kind, qualified name, lines) of every function, method and class."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                yield kind, prefix + child.name, child.end_lineno - child.lineno + 1
                for item in walk(child, prefix + child.name + "."):
                    yield item
            elif isinstance(child, (ast.If, ast.Try, ast.With)):
                for item in walk(child, prefix):
                    yield item
    return list(walk(tree, ""))


def test_functions_and_classes_stay_small(source):
    _, _, tree, _ = source
    limits = {"function": MAX_FUNCTION_LINES, "class": MAX_CLASS_LINES}
    too_long = [(kind, name, size) for kind, name, size in lengths(tree) if size > limits[kind]]
    assert too_long == []
    assert any(name == "Hub" for _, name, _ in lengths(tree))     # the walk sees the classes


def paths_block():
    """[(walk title, [(section, [names])])] from the docstring's Paths block."""
    walks = []
    for line in docstring_block("Paths"):
        place, more = PLACE_RE.match(line), PLACE_MORE_RE.match(line)
        if place:
            walks[-1][1].append((int(place.group(1)), place.group(2)))
        elif more and walks and walks[-1][1]:
            number, text = walks[-1][1][-1]
            walks[-1][1][-1] = (number, text + " " + more.group(1))
        elif line.startswith("    ") and line[4:5] != " " and line.strip():
            walks.append((line.strip(), []))
    return [(title, [(n, [x.strip() for x in text.split(",")]) for n, text in places])
            for title, places in walks if places]


def test_every_name_in_the_paths_block_exists_in_the_section_it_names(source):
    _, _, tree, sections = source
    tops = {node.name: node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    home = module_definitions(tree, sections)
    walks = paths_block()
    assert len(walks) >= 7
    for title, places in walks:
        for number, names in places:
            for name in names:
                top, _, member = name.partition(".")
                assert top in home, (title, name)
                assert home[top] == number, (title, name, home[top])
                if member:
                    node = tops[top]
                    assert any(getattr(child, "name", None) == member for child in node.body), \
                        (title, name)


def test_every_walk_is_three_places_or_fewer():
    for title, places in paths_block():
        assert 1 <= len(places) <= 3, title
