"""Configuration, the command line and clean shutdown of a real `segsync run` process."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.commands.cli import main
from agent.config import ConfigError, build_config, load_toml, read_peers_file
from protocol.peerlist import PeerEntry
from helpers import free_port, wait_healthy

SEGSYNC = [sys.executable, "-m", "agent.commands.cli"]


def test_defaults(tmp_path):
    cfg = build_config({"root": tmp_path})
    assert cfg.listen == "127.0.0.1:8200"
    assert (cfg.recent_window, cfg.backfill_interval, cfg.backfill_hours, cfg.max_concurrency) == (
        120, 60, 336, 5)


@pytest.mark.parametrize("values, message", [
    ({}, "--root is required"),
    ({"listen": "nowhere"}, "HOST:PORT"),
    ({"listen": "127.0.0.1:99999"}, "port"),
    ({"recent_window": -1}, "recent-window"),
    ({"backfill_interval": 0}, "backfill-interval"),
    ({"backfill_hours": 1.5}, "whole number"),
    ({"max_concurrency": 0}, "max-concurrency"),
    ({"log_level": "LOUD"}, "log-level"),
    ({"peers": ["ftp://x"]}, "http"),
    ({"listen": "0.0.0.0:8200"}, "--token-file"),
    ({"listen": "0.0.0.0:8200"}, "--tls-cert and --tls-key"),
    ({"token_file": "/nonexistent/token"}, "token file"),
])
def test_bad_values_rejected(tmp_path, values, message):
    if values:
        values = {"root": tmp_path, **values}
    with pytest.raises(ConfigError, match=message.replace("-", ".").replace("+", ".")):
        build_config(values)


def test_non_loopback_allowed_with_token_and_tls_or_insecure(tmp_path):
    import trustme

    from tls_helpers import issue

    token = tmp_path / "t"
    token.write_text("abc")
    files = issue(trustme.CA(), tmp_path / "tls", "n")
    build_config({"root": tmp_path, "listen": "0.0.0.0:8200", "token_file": token,
                  **files.settings()})
    build_config({"root": tmp_path, "listen": "0.0.0.0:8200", "insecure": True})
    build_config({"root": tmp_path, "listen": "0.0.0.0:8200", "token_file": token,
                  "insecure": True, "peers": ["http://b.example:8200"]})
    # each start-up error names exactly what is missing
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0 without TLS \(--tls-cert and --tls-key\);"):
        build_config({"root": tmp_path, "listen": "0.0.0.0:8200", "token_file": token})
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0 without a token \(--token-file\);"):
        build_config({"root": tmp_path, "listen": "0.0.0.0:8200", **files.settings()})
    with pytest.raises(ConfigError, match="without a token .* and TLS"):
        build_config({"root": tmp_path, "listen": "0.0.0.0:8200"})


def test_clear_text_peers_refused_while_holding_a_token(tmp_path):
    token = tmp_path / "t"
    token.write_text("abc")
    base = {"root": tmp_path, "token_file": token}
    with pytest.raises(ConfigError, match="refusing peer http://b.example:8200"):
        build_config({**base, "peers": ["http://b.example:8200"]})
    peers_file = tmp_path / "peers"
    peers_file.write_text("https://b.example:8200\nhttp://10.1.2.3:8200\n")
    with pytest.raises(ConfigError, match="refusing peer http://10.1.2.3:8200"):
        build_config({**base, "peers_file": peers_file})
    # loopback peers, https peers, or no token at all: nothing to leak
    build_config({**base, "peers": ["http://127.0.0.1:8201", "https://b.example:8200"]})
    build_config({"root": tmp_path, "peers": ["http://b.example:8200"]})
    # a node file's line for this node, and a peer pinned as a wubloader node (its
    # client never carries the token), are not refused
    peers_file.write_text("a http://10.1.2.1:8200\nold http://10.1.2.3:8000\n"
                          "https://b.example:8200\n")
    with pytest.raises(ConfigError, match="refusing peer http://10.1.2.1:8200"):
        build_config({**base, "peers_file": peers_file,
                      "peer_kinds": {"http://10.1.2.3:8000": "wubloader"}})
    with pytest.raises(ConfigError, match="refusing peer http://10.1.2.3:8000"):
        build_config({**base, "peers_file": peers_file, "node_name": "a"})
    build_config({**base, "peers_file": peers_file, "node_name": "a",
                  "peer_kinds": {"http://10.1.2.3:8000": "wubloader"}})


def test_tls_files_checked_at_start_up(tmp_path):
    import trustme

    from tls_helpers import issue

    files = issue(trustme.CA(), tmp_path / "tls", "n")
    other = issue(trustme.CA(), tmp_path / "tls2", "m")
    base = {"root": tmp_path}
    cases = [
        ({"tls_cert": files.cert}, "--tls-key is missing"),
        ({"tls_cert": files.cert, "tls_key": other.key}, "not a usable pair"),
        ({"tls_cert": tmp_path / "nope.crt", "tls_key": files.key}, "nope.crt: No such file"),
        ({"tls_cert": files.key, "tls_key": files.key}, "not a PEM certificate"),
        ({"tls_ca": tmp_path / "none.pem"}, "tls-ca .*none.pem"),
        ({"tls_cert": files.cert, "tls_key": files.key, "tls_client_auth": True},
         "needs --tls-ca"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_config({**base, **values})
    conf = tmp_path / "segsync.toml"
    conf.write_text(f'tls-cert = "{files.cert}"\ntls-key = "{files.key}"\n'
                    f'tls-ca = "{files.ca}"\ntls-client-auth = true\ntls-reload-interval = 2\n')
    cfg = build_config({**base, **load_toml(conf)})
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_ca) == (files.cert, files.key, files.ca)
    assert cfg.tls_client_auth is True and cfg.tls_reload_interval == 2


def test_toml_and_flags(tmp_path):
    conf = tmp_path / "segsync.toml"
    conf.write_text(f'root = "{tmp_path}"\nrecent-window = 30\npeer = ["http://a:1"]\n')
    values = load_toml(conf)
    assert values == {"root": str(tmp_path), "recent_window": 30, "peers": ["http://a:1"]}
    values.update({"recent_window": 5})  # a flag overrides the file
    cfg = build_config(values)
    assert cfg.recent_window == 5 and cfg.peers == ["http://a:1"]
    conf.write_text("bogus = 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_toml(conf)
    conf.write_text("root = \n")
    with pytest.raises(ConfigError):
        load_toml(conf)


def test_peers_file_parsing(tmp_path):
    """Both formats (more in test_peerlist.py); a bad line names the file and the line."""
    path = tmp_path / "peers"
    path.write_text("# c\nhttp://a:1/\n\nb http://b:2 # x\nhttp://a:1\n")
    assert read_peers_file(path) == [PeerEntry(None, "http://a:1"), PeerEntry("b", "http://b:2")]
    path.write_text("http://a:1\nnot-a-url\n")
    with pytest.raises(ConfigError, match=f"peers file {path}: line 2: "):
        read_peers_file(path)


def test_cli_reports_bad_config(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["run", "--root", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err
    # a missing root is created only once everything else is valid
    assert main(["run", "--root", str(tmp_path / "missing"), "--listen", "nonsense"]) == 2
    assert "must be HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_signal(tmp_path, sig):
    port = free_port()
    proc = subprocess.Popen(
        SEGSYNC + ["run", "--root", str(tmp_path), "--listen", f"127.0.0.1:{port}",
                   "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log=proc.stderr.read)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "shutting down" in err
    assert err.lstrip().startswith("{")  # JSON log lines
