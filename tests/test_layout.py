"""The house has one direction: scripts on top, library modules below them, the networks at the
bottom. A script (a file that runs as a command) never imports another script: what two scripts
share lives in a library module that no command line runs, so a change to one script's helpers
cannot break another script, and importing one does not load another's dependencies."""
import ast
import re
from pathlib import Path

import pytest

from conftest import run_script

REPOSITORY = Path(__file__).resolve().parent.parent


def project_files():
    """Every Python file of the project but the tests, by module name ("Pretreatment.Crawler")."""
    files = {}
    for path in sorted(REPOSITORY.rglob("*.py")):
        relative = path.relative_to(REPOSITORY)
        if relative.parts[0].startswith(".") or relative.parts[0] == "tests":
            continue
        files[".".join(relative.with_suffix("").parts)] = path
    return files


def is_script(path):
    """A file that runs as a command: it has an `if __name__ == "__main__":` block."""
    return any(isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)
               for node in ast.parse(path.read_text()).body)


def imported_modules(path, known):
    """The project modules that path imports anywhere in it (functions included), by module name.
    A module beside path may be imported by its bare name (the scripts run from their folder)."""
    folder = ".".join(path.relative_to(REPOSITORY).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            for candidate in (name, f"{folder}.{name}" if folder else name):
                if candidate in known:
                    found.add(candidate)
    return found


def test_the_walk_finds_the_scripts_and_their_imports():
    files = project_files()
    scripts = {name for name, path in files.items() if is_script(path)}
    assert {"Train", "Run", "Evaluate", "Figures", "Studio", "Pretreatment.Crawler",
            "Pretreatment.CutImage"} <= scripts
    assert not {"Utils", "Net", "Reader", "Checkpoint", "Recipe", "Drawing", "Metrics", "Files"} & scripts
    assert {"Utils", "Recipe", "Checkpoint", "Drawing", "Reader", "Net"} <= imported_modules(files["Train"], files)
    assert imported_modules(files["Pretreatment.CutImage"], files) >= {"Files"}


def test_no_script_imports_another_script():
    files = project_files()
    scripts = {name for name, path in files.items() if is_script(path)}
    crossings = sorted(f"{name} imports {', '.join(sorted(imported_modules(files[name], files) & scripts - {name}))}"
                       for name in scripts if imported_modules(files[name], files) & scripts - {name})
    assert not crossings, "scripts that import scripts: " + "; ".join(crossings)


def test_no_library_module_imports_a_script():
    files = project_files()
    scripts = {name for name, path in files.items() if is_script(path)}
    libraries = set(files) - scripts - {"hubconf"}
    crossings = sorted(f"{name} imports {', '.join(sorted(imported_modules(files[name], files) & scripts))}"
                       for name in libraries if imported_modules(files[name], files) & scripts)
    assert not crossings, "library modules that import scripts: " + "; ".join(crossings)


def test_the_networks_import_nothing_of_the_project():
    files = project_files()
    assert imported_modules(files["Net"], files) == set()


def help_entries(text):
    """--help's options, each as one line of text: "--seed SEED seed of the noise (default: 0)"."""
    entries, within = [], False
    for line in text.splitlines():
        if line.startswith("  -"):
            entries.append(line.strip())
            within = True
        elif within and line.startswith("    "):
            entries[-1] += " " + line.strip()
        else:
            within = False
    return entries


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(name for name, path in project_files().items() if is_script(path)))
def test_every_script_says_each_default_once_in_its_help(script):
    result = run_script(project_files()[script].relative_to(REPOSITORY), "--help", timeout=120)
    entries = help_entries(result.stdout)
    assert len(entries) >= 2, result.stdout
    said_twice = [entry for entry in entries if len(re.findall(r"\(default\b", entry)) > 1]
    empty = [entry for entry in entries if "(default: None)" in entry or "(default: False)" in entry]
    assert not said_twice and not empty, f"{script} --help: {said_twice + empty}"
