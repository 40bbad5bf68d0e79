"""The documentation keeps up with the code.

- docs/config.md documents every section and key engine/config.py accepts (its key
  tuples), each with its type, default, allowed values, reload behaviour and an
  example, the default of each key as the dataclasses give it, and every choice;
- README's command table names every `fwd` command (the click groups of
  engine/cli/main.py) and its options, and no command that does not exist;
- configs/default.toml passes `fwd check` and shows every section.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest

from engine import config as C
from engine.cli.main import main as fwd_main

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DOC = ROOT / "docs" / "config.md"
README = ROOT / "README.md"
DEFAULT = ROOT / "configs" / "default.toml"

# how each top-level key of the file is written in its `##` heading
ARRAYS = ("port", "route", "neighbor")  # [[x]]: arrays of tables
SECTION_KEYS = {
    "engine": C._ENGINE_KEYS,
    "port": C._PORT_KEYS,
    "route": C._ROUTE_KEYS,
    "neighbor": C._NEIGHBOR_KEYS,
    "ipv4": C._IPV4_KEYS,
    "reassembly": C._REASSEMBLY_KEYS,
    "icmp": C._ICMP_KEYS,
    "dpdk": C._DPDK_KEYS,
    "metrics": C._METRICS_KEYS,
}
# each key's default as its dataclass holds it (keys whose field has the key's name)
SECTION_DEFAULTS = {
    "engine": C.EngineConfig(),
    "route": C.RouteConfig(prefix=0, prefix_len=0),
    "ipv4": C.Ipv4Config(),
    "reassembly": C.ReassemblyConfig(),
    "icmp": C.IcmpConfig(),
    "dpdk": C.DpdkConfig(),
    "metrics": C.MetricsConfig(),
}
CHOICES = {
    ("engine", "datapath"): C.DATAPATHS,
    ("engine", "log_level"): C.LOG_LEVELS,
    ("port", "driver"): C.DRIVERS,
    ("route", "type"): C.ROUTE_TYPES,
    ("reassembly", "mode"): C.REASSEMBLY_MODES,
    ("dpdk", "hugepages"): C.DPDK_HUGEPAGES,
    ("dpdk", "mode"): C.DPDK_MODES,
}
FIELDS = ("Type", "Default", "Allowed", "Reload", "Example")


def heading(name: str) -> str:
    if name == "include":
        return "include"
    return f"[[{name}]]" if name in ARRAYS else f"[{name}]"


def sections(text: str, level: int) -> dict[str, str]:
    """The body under each heading of `level` (`##` = 2) whose text starts with a code
    span, by that span: up to the next heading of the same or a higher level."""
    out: dict[str, str] = {}
    name, body = None, []
    for line in text.splitlines():
        m = re.match(r"(#+) ", line)
        if m and len(m.group(1)) <= level:
            if name is not None:
                out[name] = "\n".join(body)
            name, body = None, []
            found = re.match(r"#+ `([^`]+)`", line)
            if found and len(m.group(1)) == level:
                name = found.group(1)
            continue
        body.append(line)
    if name is not None:
        out[name] = "\n".join(body)
    return out


def toml(value: object) -> str:
    """A default as TOML spells it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return str(value)


def field_line(body: str, name: str) -> str:
    m = re.search(rf"^- {name}: (.*)$", body, re.M)
    assert m, f"no '- {name}:' line"
    return m.group(1)


@pytest.fixture(scope="module")
def doc() -> str:
    return CONFIG_DOC.read_text()


def test_every_top_level_key_has_a_section(doc):
    documented = sections(doc, 2)
    missing = [heading(k) for k in C._TOP_KEYS if heading(k) not in documented]
    assert not missing, f"docs/config.md has no '## `...`' section for {missing}"
    # an included file's allowed tables are named in the include section
    for k in C._INCLUDE_KEYS:
        assert heading(k) in documented["include"]


@pytest.mark.parametrize("section", sorted(SECTION_KEYS))
def test_every_key_is_documented(doc, section):
    body = sections(doc, 2)[heading(section)]
    keys = sections(body, 3)
    missing = [k for k in SECTION_KEYS[section] if k not in keys]
    assert not missing, f"docs/config.md: {heading(section)} does not document {missing}"
    unknown = [k for k in keys if k not in SECTION_KEYS[section]]
    assert not unknown, f"docs/config.md: {heading(section)} documents unknown keys {unknown}"
    for key, text in keys.items():
        for name in FIELDS:
            try:
                field_line(text, name)
            except AssertionError as err:
                raise AssertionError(f"{heading(section)} {key}: {err}") from None


def test_next_hop_keys_are_documented(doc):
    nexthops = sections(sections(doc, 2)["[[route]]"], 3)["nexthops"]
    keys = sections(nexthops, 4)
    assert sorted(keys) == sorted(C._NEXTHOP_KEYS)
    for text in keys.values():
        for name in FIELDS:
            field_line(text, name)


def test_driver_keys_are_named_with_their_driver(doc):
    port = sections(doc, 2)["[[port]]"]
    keys = sections(port, 3)
    for driver, names in C._DRIVER_KEYS.items():
        for k in names:
            assert f"{driver} driver only" in keys[k], f"port {k}: say it is for {driver}"


@pytest.mark.parametrize("section", sorted(SECTION_DEFAULTS))
def test_defaults_are_the_dataclasses(doc, section):
    keys = sections(sections(doc, 2)[heading(section)], 3)
    obj = SECTION_DEFAULTS[section]
    for f in dataclasses.fields(obj):
        if f.name not in SECTION_KEYS[section] or (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            continue  # a required key: no default
        value = getattr(obj, f.name)
        line = field_line(keys[f.name], "Default")
        # an empty value is "unset" or [] (a key one may leave out)
        spelled = {"unset", "[]"} if value in (None, ()) else {f"`{toml(value)}`"}
        assert any(s in line for s in spelled), \
            f"{heading(section)} {f.name}: default is {toml(value)}, doc says {line!r}"


def test_port_defaults_are_the_parsers(doc, tmp_path):
    """[[port]] defaults are the parser's own (no dataclass holds them): a port that
    leaves out mtu and addresses."""
    (tmp_path / "in.pcap").write_bytes(b"")
    (tmp_path / "c.toml").write_text('[[port]]\nname = "p0"\ndriver = "pcap"\n'
                                     'rx = "in.pcap"\ntx = "out.pcap"\n'
                                     'mac = "02:00:00:00:00:01"\n')
    (port,) = C.load_config(tmp_path / "c.toml").ports
    keys = sections(sections(doc, 2)["[[port]]"], 3)
    assert f"`{port.mtu}`" in field_line(keys["mtu"], "Default")
    assert port.addresses == () and "`[]`" in field_line(keys["addresses"], "Default")


def test_choices_are_listed(doc):
    for (section, key), choices in CHOICES.items():
        line = field_line(sections(sections(doc, 2)[heading(section)], 3)[key], "Allowed")
        missing = [c for c in choices if f'"{c}"' not in line]
        assert not missing, f"{heading(section)} {key}: Allowed lacks {missing}"


def test_ranges_are_the_parsers(doc):
    def allowed(section: str, key: str) -> str:
        return field_line(sections(sections(doc, 2)[heading(section)], 3)[key], "Allowed")

    assert f"1 to {C.MAX_WORKERS}" in allowed("engine", "workers")
    assert f"1 to {C.MAX_BATCH}" in allowed("engine", "batch")
    assert f"{C.MIN_MTU} to {C.MAX_MTU}" in allowed("port", "mtu")
    assert str(C.MAX_METRIC) in allowed("route", "metric")
    assert f"at most {C.UNIX_PATH_MAX} bytes" in allowed("engine", "control_socket")
    nexthops = sections(sections(doc, 2)["[[route]]"], 3)["nexthops"]
    assert f"1 to {C.MAX_NEXTHOPS} members" in field_line(nexthops, "Allowed")
    assert f"at most {C.MAX_PORTS} are supported" in sections(doc, 2)["[[port]]"]
    for flag in C.DPDK_ENGINE_EAL:
        assert f"`{flag}`" in sections(sections(doc, 2)["[dpdk]"], 3)["eal_args"]


# --- README's command table ---------------------------------------------------------


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...],
                                                                     click.Command]:
    """Every leaf command under `group`, by its words (`("route", "add")`)."""
    out: dict[tuple[str, ...], click.Command] = {}
    for name, cmd in group.commands.items():
        words = prefix + (name,)
        if isinstance(cmd, click.Group):
            out.update(commands(cmd, words))
        else:
            out[words] = cmd
    return out


def command_table() -> dict[tuple[str, ...], str]:
    """README's command table: each command it names (alternatives `a\\|b` expanded)
    and the text of the row's first cell."""
    text = README.read_text()
    part = text.split("## Commands", 1)[1]
    rows = [line for line in part.splitlines() if line.startswith("| `fwd ")]
    table: dict[tuple[str, ...], str] = {}
    groups = {name for name, c in fwd_main.commands.items() if isinstance(c, click.Group)}
    for row in rows:
        cell = re.split(r"(?<!\\)\|", row)[1]
        for span in re.findall(r"`([^`]+)`", cell):
            words = span.replace("\\|", "|").split()
            if words[:1] != ["fwd"] or len(words) < 2:
                continue
            if words[1] in groups:
                if len(words) < 3:
                    continue
                for sub in words[2].split("|"):
                    table[(words[1], sub)] = cell
            else:
                table[(words[1],)] = cell
    return table


def test_readme_command_table_names_every_command():
    table = command_table()
    cli = commands(fwd_main)
    missing = [" ".join(w) for w in cli if w not in table]
    assert not missing, f"README's command table lacks: {missing}"
    stale = [" ".join(w) for w in table if w not in cli]
    assert not stale, f"README's command table names commands that do not exist: {stale}"


def test_readme_command_table_names_every_option():
    """Every option a command shows in --help, but --help and --socket (said once for
    all the commands that talk to an engine, under the table)."""
    table = command_table()
    for words, cmd in commands(fwd_main).items():
        cell = table[words].replace("--[no-]", "--")
        for param in cmd.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            if "--socket" in param.opts:
                continue
            assert any(o in cell for o in param.opts), \
                f"README: fwd {' '.join(words)}: option {param.opts[-1]} is not in the table"
    text = README.read_text()
    assert "`--socket PATH`" in text.split("## Commands", 1)[1].split("How `fwd run` ends")[0]


def test_readme_points_inside_the_repository():
    text = README.read_text()
    assert "../" not in text, "README points outside the repository"
    assert "docs/config.md" in text


# --- configs/default.toml -------------------------------------------------------------


def test_default_config_passes_fwd_check():
    from click.testing import CliRunner

    result = CliRunner().invoke(fwd_main, ["check", str(DEFAULT)])
    assert result.exit_code == 0, result.output
    assert ": ok (" in result.output


def test_default_config_shows_every_section():
    """Every section, and every key in its section, appears in configs/default.toml,
    set or commented out."""
    blocks: dict[str, str] = {}
    name = ""
    for line in DEFAULT.read_text().splitlines():
        m = re.match(r"#? ?\[\[?(\w+)\]\]?\s*(#.*)?$", line)
        if m:
            name = m.group(1)
            continue
        blocks[name] = blocks.get(name, "") + line + "\n"
    assert re.search(r"^#? ?include = ", blocks.get("", ""), re.M), \
        "configs/default.toml does not show include (before the first table)"
    for section, keys in SECTION_KEYS.items():
        assert section in blocks, f"configs/default.toml does not show {heading(section)}"
        for key in keys:
            assert re.search(rf"^#? ?{key} = ", blocks[section], re.M), \
                f"configs/default.toml does not show {heading(section)} {key}"
    assert re.search(r"nexthops = \[\{via = ", blocks["route"]), \
        "configs/default.toml does not show a [[route]] with nexthops"
