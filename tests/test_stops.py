"""How `fwd run` ends when it cannot end well: an output that cannot be written is
refused before the first packet (or, found only when writing, stops the engine with
exit status 2), and every fatal stop still prints the counters, the accounting line
and the pool check, with one line saying why, and never a traceback."""

from __future__ import annotations

from test_run import fwd

from conftest import Lab, no_shm_leak


def with_output(lab: Lab, port: str, tx: str) -> None:
    """Point `port`'s tx capture at `tx` in the lab's config."""
    text = lab.config_path.read_text()
    assert f'tx = "out/{port}.pcap"' in text
    lab.config_path.write_text(text.replace(f'tx = "out/{port}.pcap"', f'tx = "{tx}"'))


def test_an_output_under_a_regular_file_is_refused_before_anything_runs(tmp_path):
    lab = Lab(tmp_path)
    with_output(lab, "p1", "in/p0.pcap/p1.pcap")
    want = f"{tmp_path}/in/p0.pcap/p1.pcap: cannot write: Not a directory"
    for command in ("check", "run"):
        r = fwd(command, str(lab.config_path))
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [f"{lab.config_path}: port[1].tx: {want}"]
        assert r.stdout == ""  # nothing ran: no counters to tell
    assert not (tmp_path / "out").exists()  # and nothing was written
    assert no_shm_leak(r.pid) == []
