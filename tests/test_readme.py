"""README.md cannot go stale: its Python snippet runs, its ``bap`` commands exist with the flags it shows, the cheap
ones run against a tiny export, and its "Verified on" block matches ``benchmarks/results/*.json``.

The README's example paths (``exports/default-b0.5``, ``digit.png``, ``wall.jpg``) are provided in a temporary
directory the tests run in: the tiny export (``tiny_export``) and small generated images.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
import shutil
import tokenize
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXPORT = "exports/default-b0.5"  # the README's example export
PLACEHOLDERS = {"EXPORT": EXPORT, "NAME": "mnist", "IMAGE...": "digit.png"}  # the CLI table's metavariables
CHEAP = ("data list", "models", "eval", "predict", "bench")  # commands run for real against the tiny export
FAST_BENCH = ["--batch-sizes", "1", "--warmup-s", "0", "--duration-s", "0.05", "--iterations", "2", "--no-memory"]
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")


# ------------------------------------------------------------------------------------------------ README parsing
def _readme() -> str:
    return README.read_text()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def _prose(text: str) -> str:
    return re.sub(r"^```\w*\n.*?^```", "", text, flags=re.M | re.S)


def inline_code(text: str) -> list[str]:
    """Every inline code span outside fenced blocks."""
    return re.findall(r"`([^`\n]+)`", _prose(text))


def block_commands(text: str) -> list[str]:
    """``bap ...`` lines of the (non-Python) fenced blocks, comments stripped."""
    out = []
    for lang, body in fenced_blocks(text):
        if lang == "python":
            continue
        for line in body.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("bap ") or line == "bap":
                out.append(line)
    return out


def cli_table(text: str) -> list[tuple[str, str]]:
    """``(command cell, description cell)`` of the CLI overview table."""
    section = text.split("## CLI overview", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`bap"):
            rows.append((cells[0].strip("`"), cells[1]))
    return rows


def python_blocks(text: str) -> list[str]:
    return [body for lang, body in fenced_blocks(text) if lang == "python"]


# ------------------------------------------------------------------------------------------------ the CLI's own view
@pytest.fixture(scope="module")
def cli():
    from bap.cli.main import app

    return typer.main.get_command(app)


def resolve(cli, tokens: list[str]):
    """``["data", "list", "--json"]`` -> ``("data list", <command>, ["--json"])``; fails on an unknown subcommand."""
    cmd, path, rest = cli, [], list(tokens)
    while _is_group(cmd):
        assert rest and rest[0] in cmd.commands, (
            f"README shows `bap {' '.join(tokens)}` but `bap {' '.join(path)}` has no subcommand "
            f"{rest[0] if rest else '(none given)'!r}; it has {sorted(cmd.commands)}"
        )
        path.append(rest[0])
        cmd = cmd.commands[rest.pop(0)]
    return " ".join(path), cmd, rest


def _is_group(cmd) -> bool:
    """A group of subcommands (typer vendors its own click: duck-typed, no click import)."""
    return isinstance(getattr(cmd, "commands", None), dict)


def accepted_flags(cmd) -> set[str]:
    flags = {"--help", "-h"}
    for p in cmd.params:
        flags.update(o for o in [*p.opts, *p.secondary_opts] if o.startswith("-"))
    return flags


def _tokens(line: str) -> list[str]:
    tokens = shlex.split(line)
    assert tokens[0] == "bap", line
    return tokens[1:]


def _readme_commands(text: str) -> list[tuple[str, str]]:
    """``(where, command text)`` for every ``bap ...`` the README shows: fenced blocks, the CLI table, prose."""
    found = [("code block", c) for c in block_commands(text)]
    for cmd, desc in cli_table(text):
        # the table's description column lists flags of the command in the first column
        found.append(("CLI table", cmd + " " + " ".join(FLAG.findall(desc))))
    found += [("inline code", s) for s in inline_code(text) if s.startswith("bap ")]
    return found


def _cli_table_line(cmd: str) -> str:
    """A table cell as a runnable command: metavariables substituted, ``[--json]`` optional parts kept."""
    tokens = [PLACEHOLDERS.get(t, t) for t in cmd.replace("[", " ").replace("]", " ").split()]
    return " ".join(tokens)


# ------------------------------------------------------------------------------------------------ the workspace
@pytest.fixture(scope="module")
def workspace(tiny_export, tmp_path_factory) -> Path:
    """A directory holding the README's example paths: the tiny export as exports/default-b0.5, two images."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(tiny_export[0], root / EXPORT)
    rng = np.random.default_rng(0)
    digit = np.zeros((28, 28), np.uint8)
    digit[5:8, 6:22] = 255  # a "7": a bar and a diagonal stroke
    for i in range(8, 24):
        digit[i, max(6, 21 - (i - 8)) : max(6, 21 - (i - 8)) + 3] = 255
    Image.fromarray(digit, "L").save(root / "digit.png")
    wall = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(wall, "RGB").save(root / "wall.jpg", quality=90)
    return root


# ------------------------------------------------------------------------------------------------ Python snippet
def _comments(src: str) -> dict[int, str]:
    return {
        t.start[0]: t.string.lstrip("#").strip()
        for t in tokenize.generate_tokens(io.StringIO(src).readline)
        if t.type == tokenize.COMMENT
    }


def _shape(value: object) -> object:
    """The structure of a literal: container types and lengths, leaf types (int counts as float)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, len(value), [_shape(v) for v in value])
    if isinstance(value, dict):
        return ("dict", sorted(value), [_shape(v) for v in value.values()])
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def _literal(text: str) -> object | None:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def _path_literals(src: str) -> list[str]:
    """String constants of the snippet that name files (a directory or an image)."""
    return [
        n.value
        for n in ast.walk(ast.parse(src))
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and ("/" in n.value or n.value.lower().endswith((".png", ".jpg", ".jpeg", ".onnx")))
    ]


def test_readme_has_a_python_snippet():
    assert python_blocks(_readme()), "README.md lost its ```python block (the Python API example)"


@pytest.mark.parametrize("index", range(len(python_blocks(_readme()))))
def test_python_snippet_runs_and_prints_what_its_comments_claim(index, workspace, monkeypatch):
    src = python_blocks(_readme())[index]
    monkeypatch.chdir(workspace)
    for path in _path_literals(src):
        assert Path(path).exists(), f"the README snippet uses {path!r}; provide it in the `workspace` fixture"
    ns: dict[str, object] = {"__name__": "__readme__"}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(src, f"README.md python block {index}", "exec"), ns)
    lines = buf.getvalue().splitlines()

    comments = _comments(src)
    prints = [
        s
        for s in ast.parse(src).body
        if isinstance(s, ast.Expr)
        and isinstance(s.value, ast.Call)
        and isinstance(s.value.func, ast.Name)
        and s.value.func.id == "print"
    ]
    assert len(lines) == len(prints), f"expected one line per print() of the snippet, got:\n{buf.getvalue()}"
    for stmt, line in zip(prints, lines, strict=True):
        assert line.strip(), f"print() on snippet line {stmt.lineno} printed an empty line"
        claim = _literal(comments.get(stmt.lineno, ""))
        if claim is not None:  # the comment shows an example value: the output has its structure
            got = _literal(line)
            assert got is not None, f"snippet line {stmt.lineno} printed {line!r}, not a literal like {claim!r}"
            assert _shape(got) == _shape(claim), (
                f"snippet line {stmt.lineno}: printed {line!r}, README claims {claim!r}"
            )
    _check_snippet_values(ns)


def _check_snippet_values(ns: dict[str, object]) -> None:
    """What the snippet's comments say about ``preds`` and ``logits``, where the snippet defines them."""
    model = ns.get("model")
    if "preds" in ns:
        for p in ns["preds"]:  # type: ignore[attr-defined]
            probs = [prob for _, prob in p.top_k]
            assert all(isinstance(c, str) for c, _ in p.top_k)
            assert all(type(x) is float and 0.0 <= x <= 1.0 for x in probs), p.top_k
            assert probs == sorted(probs, reverse=True), p.top_k
    if "logits" in ns and "batch" in ns:
        logits, batch = np.asarray(ns["logits"]), np.asarray(ns["batch"])
        man = model.manifest  # type: ignore[attr-defined]
        assert logits.shape == (batch.shape[0], man.k_max), "# [B, K_max]"
        call = re.search(r"logits\(batch, domains=(\[[^\]]*\])", "\n".join(python_blocks(_readme())))
        if call:  # "-inf beyond each domain's classes"
            for row, d in zip(logits, ast.literal_eval(call[1]), strict=True):
                k = len(model.classes[model.domains[d]])  # type: ignore[attr-defined]
                assert np.isfinite(row[:k]).all() and np.isneginf(row[k:]).all(), (d, row)


def test_the_self_describing_model_onnx_loads_alone(workspace):
    """The snippet's comment: ``rt.load`` takes the export directory "or the self-describing model.onnx alone"."""
    import bap.runtime as rt

    lone = workspace / "lone"
    lone.mkdir(exist_ok=True)
    shutil.copy(workspace / EXPORT / "model.onnx", lone / "model.onnx")
    model = rt.load(lone / "model.onnx")
    (pred,) = model.predict([workspace / "digit.png"], domains=["mnist"], top_k=3)
    assert len(pred.top_k) == 3 and model.manifest.domain_names


def test_library_calls_named_in_the_readme_exist():
    """``bap.trainer.train(TrainConfig(...))`` and every other dotted ``bap.`` name in inline code resolves."""
    for span in inline_code(_readme()):
        m = re.fullmatch(r"(bap(?:\.\w+)+)(?:\((\w+)\(.*\)\))?", span)
        if not m:
            continue
        _resolve_dotted(m[1])
        if m[2]:  # the config class comes from the function's module: bap.trainer.train(TrainConfig(...))
            owner = m[1].rsplit(".", 1)[0]
            assert hasattr(importlib.import_module(owner), m[2]), f"README names `{span}`, but {owner} has no {m[2]}"


def _resolve_dotted(name: str) -> object:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"README names `{name}`, but {'.'.join(parts[:i])} has no {attr!r}"
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"README names `{name}`, which does not import")


# ------------------------------------------------------------------------------------------------ CLI examples
def test_every_readme_command_exists_with_the_flags_it_shows(cli):
    commands = _readme_commands(_readme())
    assert len(commands) >= 8, commands  # the code blocks and the CLI table at least
    problems = []
    for where, line in commands:
        path, cmd, rest = resolve(cli, _tokens(_cli_table_line(line)))
        unknown = sorted({f.split("=")[0] for f in FLAG.findall(" ".join(rest))} - accepted_flags(cmd))
        if unknown:
            problems.append(f"{where}: `{line}`: bap {path} does not accept {', '.join(unknown)}")
    assert not problems, "README.md shows flags the CLI does not have:\n" + "\n".join(problems)


def test_readme_code_block_commands_parse(cli):
    """The full command lines of the code blocks parse (arguments, option values), without running them."""
    for line in block_commands(_readme()):
        path, cmd, rest = resolve(cli, _tokens(line))
        try:
            cmd.make_context(f"bap {path}", rest, resilient_parsing=False)
        except Exception as e:  # the CLI parser's usage errors
            msg = e.format_message() if hasattr(e, "format_message") else repr(e)
            pytest.fail(f"README.md code block `{line}` does not parse: {msg}")


def test_every_flag_in_the_readme_belongs_to_some_command(cli):
    """Flags in prose (``--graph tables``, ``--pretrain-source union``) exist on at least one command."""
    every: set[str] = set()
    stack = [cli]
    while stack:
        c = stack.pop()
        every |= accepted_flags(c)
        if _is_group(c):
            stack.extend(c.commands.values())
    # spans of other tools (`jetson_clocks --show`, `pip install ...`) are not bap's
    spans = [s for s in inline_code(_readme()) if s.startswith(("--", "bap "))]
    shown = {f for span in spans for f in FLAG.findall(span)}
    assert shown - every == set(), f"README.md shows flags no bap command accepts: {sorted(shown - every)}"


def test_defaults_the_cli_table_states_are_the_cli_defaults(cli):
    """``--round-to ... (default 8)``, ``--budgets (default `1.0,0.5`)``: what the table says is what --help says."""
    checked = 0
    for cmd_cell, desc in cli_table(_readme()):
        _, cmd, _ = resolve(cli, _tokens(_cli_table_line(cmd_cell)))
        for m in re.finditer(r"`(--[\w-]+)[^`]*` \(default `?([^`;)]+)`?", desc):
            param = next(p for p in cmd.params if m[1] in p.opts)
            claim, default = m[2].strip(), param.default
            same = float(claim) == default if isinstance(default, float) else str(default) == claim
            assert same, (
                f"CLI table: bap {cmd_cell.split()[1]} {m[1]} (default {claim}); the CLI's default is {default!r}"
            )
            checked += 1
    assert checked >= 3


def test_every_readme_command_has_help(cli, run_cli):
    paths = sorted({resolve(cli, _tokens(_cli_table_line(line)))[0] for _, line in _readme_commands(_readme())})
    for path in paths:
        res = run_cli([*path.split(), "--help"])
        assert res.code == 0 and res.out.strip(), f"bap {path} --help: exit {res.code}\n{res.err}"


def _cheap_lines(cli) -> list[str]:
    """The README's cheap commands as runnable lines (table metavariables substituted; optional parts with and without)."""
    lines = list(block_commands(_readme()))
    for cmd_cell, _ in cli_table(_readme()):
        lines.append(_cli_table_line(re.sub(r"\[[^\]]*\]", "", cmd_cell)))
        lines.append(_cli_table_line(cmd_cell))
    out = []
    for line in dict.fromkeys(" ".join(line.split()) for line in lines):
        path, _, _ = resolve(cli, _tokens(line))
        if path in CHEAP:
            out.append(line)
    return out


def test_the_cheap_readme_commands_cover_what_the_readme_shows(cli):
    ran = {resolve(cli, _tokens(line))[0] for line in _cheap_lines(cli)}
    assert ran == set(CHEAP), f"README.md no longer shows {sorted(set(CHEAP) - ran)}"


@pytest.mark.parametrize("line", _cheap_lines(typer.main.get_command(importlib.import_module("bap.cli.main").app)))
def test_cheap_readme_command_runs_on_the_tiny_export(line, cli, workspace, monkeypatch, run_cli):
    monkeypatch.chdir(workspace)
    args = _tokens(line)
    path, _, _ = resolve(cli, args)
    if path == "bench":  # the README's bench, made fast: one batch size, no warm-up, no RSS subprocesses
        args += FAST_BENCH
    res = run_cli(args)
    assert res.code == 0 and res.error is None, f"`{line}` (as `bap {' '.join(args)}`): exit {res.code}\n{res.err}"
    assert res.out.strip(), f"`{line}` printed nothing"
    if "--json" in args:
        json.loads(res.out)
    if path == "predict":
        assert "digit.png" in res.out
    if path in ("eval", "bench"):
        assert "mnist" in res.out or "multi-domain" in res.out


def test_embedded_suite_table_matches_bap_data_list(run_cli):
    """The README's suite table (classes, train / val / test per domain) is what ``bap data list --json`` says."""
    section = _readme().split("## The embedded suite", 1)[1].split("\n## ", 1)[0]
    readme = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"\d+", cells[1]):
            name = cells[0].split()[0]
            readme[name] = (int(cells[1]), *(int(x) for x in cells[2].split("/")))
    res = run_cli(["data", "list", "--json"])
    assert res.code == 0, res.err
    cli_rows = {r["name"]: (r["classes"], r["train"], r["val"], r["test"]) for r in json.loads(res.out)}
    assert readme == cli_rows, "README.md's embedded-suite table differs from `bap data list --json`"


# ------------------------------------------------------------------------------------------------ links, layout
def test_relative_links_and_layout_paths_exist():
    text = _readme()
    missing = [
        link
        for link in re.findall(r"\]\(([^)\s]+)\)", text)
        if "://" not in link and not link.startswith("#") and not (ROOT / link.split("#", 1)[0]).exists()
    ]
    layout = next(body for lang, body in fenced_blocks(text) if "bap/core/" in body)
    missing += [
        tok
        for line in layout.splitlines()
        if (tok := line.split(" ", 1)[0]).endswith("/") and not (ROOT / tok).is_dir()
    ]
    assert not missing, f"README.md names paths that do not exist: {missing}"


# ------------------------------------------------------------------------------------------------ verified on
def _verified_on(monkeypatch):
    """``benchmarks/verified_on.py`` as a module (``benchmarks/`` is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("verified_on", ROOT / "benchmarks" / "verified_on.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(importlib.import_module("sys").modules, "verified_on", module)
    spec.loader.exec_module(module)
    return module


def test_verified_on_block_matches_the_result_files(monkeypatch):
    """The README's results table lists every results/*.json with the CPU and versions it recorded.

    Only the part derived from the result files is compared: the live machine facts differ on every machine.
    """
    vo = _verified_on(monkeypatch)
    why = vo.stale(_readme())
    assert why is None, (
        f"README.md's 'Verified on' block is stale with respect to benchmarks/results/*.json; "
        f"regenerate it with `{vo.REGENERATE}` and commit README.md.\n{why}"
    )


def test_verified_on_reads_both_result_formats(monkeypatch, tmp_path):
    vo = _verified_on(monkeypatch)
    machine = {"cpu": "CPU A", "date": "2026-01-02 03:04 UTC", "versions": {"onnxruntime": "1.0", "torch": "2.0"}}
    (tmp_path / "a.json").write_text(json.dumps({"rows": [], "machine": machine}))
    bench = {"cpu": "CPU B", "versions": {"onnxruntime": "1.1"}}
    (tmp_path / "b.json").write_text(
        json.dumps({"format": "bap.bench/1", "created": "2026-01-03T23:30:00-0100", "device": bench})
    )
    (tmp_path / "c.json").write_text(json.dumps({"rows": []}))
    assert vo.result_rows(tmp_path) == [
        ["`a.json`", "2026-01-02", "CPU A", "1.0", "2.0"],
        ["`b.json`", "2026-01-04", "CPU B", "1.1", "not recorded"],
        ["`c.json`", "not recorded", "not recorded", "not recorded", "not recorded"],
    ]
    text = "intro\n" + vo.block({"cpu": "X", "logical_cpus": 2, "os": "L", "versions": {}, "date": "d"}, tmp_path)
    assert vo.stale(text, tmp_path) is None
    (tmp_path / "d.json").write_text(json.dumps({"rows": []}))
    assert "d.json" in vo.stale(text, tmp_path)
