"""The pure transport-security rules (protocol/transport.py)."""

import datetime as dt
import ipaddress

import pytest

from protocol.transport import (
    is_dns_name, listen_problem, node_alt_names, plain_peer_problem, reload_due, token_receivers,
    tls_options_problem, validity_problem,
)


@pytest.mark.parametrize("loopback, token, tls, insecure, missing", [
    (True, False, False, False, None),
    (False, True, True, False, None),
    (False, False, False, True, None),
    (False, True, False, False, ["TLS (--tls-cert and --tls-key)"]),
    (False, False, True, False, ["a token (--token-file)"]),
    (False, False, False, False, ["a token (--token-file)", "TLS (--tls-cert and --tls-key)"]),
])
def test_listen_rule_names_exactly_what_is_missing(loopback, token, tls, insecure, missing):
    problem = listen_problem("0.0.0.0", loopback, token, tls, insecure)
    if missing is None:
        assert problem is None
        return
    assert problem.startswith("refusing to listen on 0.0.0.0 without ")
    assert "--insecure" in problem
    for what in missing:
        assert what in problem
    for what in {"a token (--token-file)", "TLS (--tls-cert and --tls-key)"} - set(missing):
        assert what not in problem


@pytest.mark.parametrize("scheme, loopback, token, insecure, refused", [
    ("http", False, True, False, True),
    ("http", False, True, True, False),    # the operator said so
    ("http", False, False, False, False),  # no token to leak
    ("http", True, True, False, False),    # never leaves the machine
    ("https", False, True, False, False),
])
def test_plain_peer_rule(scheme, loopback, token, insecure, refused):
    problem = plain_peer_problem(f"{scheme}://b:8200", scheme, loopback, token, insecure)
    assert (problem is not None) == refused
    if refused:
        assert "b:8200" in problem and "https://" in problem and "--insecure" in problem


def test_token_receivers_leave_out_this_node_and_wubloader_peers():
    entries = [("http://a:1", "a"), ("http://b:1", "b"), ("http://c:1", None),
               ("http://w:8000", "w")]
    assert token_receivers(entries, "a", {"http://w:8000"}) == ["http://b:1", "http://c:1"]
    # a bare URL is never this node (several agents may share a host)
    assert token_receivers([("http://a:1", None)], "a", set()) == ["http://a:1"]


@pytest.mark.parametrize("cert, key, ca, client_auth, expect", [
    (False, False, False, False, None),
    (True, True, False, False, None),
    (True, True, True, True, None),
    (False, False, True, False, None),     # a client that only trusts a CA
    (True, False, False, False, "--tls-key is missing"),
    (False, True, False, False, "--tls-cert is missing"),
    (True, True, False, True, "needs --tls-ca"),
    (False, False, True, True, "needs --tls-cert and --tls-key"),
])
def test_tls_options_that_go_together(cert, key, ca, client_auth, expect):
    problem = tls_options_problem(cert, key, ca, client_auth)
    assert problem is None if expect is None else expect in problem


def test_validity_against_the_given_clock():
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    assert validity_problem(start, end, start + dt.timedelta(days=1)) is None
    assert validity_problem(start, end, end) is None
    assert "expired at 2027-01-01 00:00:00" in validity_problem(
        start, end, end + dt.timedelta(seconds=1))
    assert "not valid before 2026-01-01" in validity_problem(
        start, end, start - dt.timedelta(seconds=1))


def test_alt_names_node_extras_and_addresses():
    dns, ips = node_alt_names("a.example", ["a.example", "A.EXAMPLE", "b"], ["10.0.0.1", "::1"])
    assert dns == ["a.example", "b"]
    assert ips == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")]
    dns, ips = node_alt_names("192.0.2.7", [], ["192.0.2.7"])  # a node named by its address
    assert dns == [] and ips == [ipaddress.ip_address("192.0.2.7")]


@pytest.mark.parametrize("dns, ips, bad", [
    (["bad name"], [], "'bad name' is not a valid DNS name"),
    (["-x.example"], [], "not a valid DNS name"),
    ([], ["10.0.0.300"], "'10.0.0.300' is not an IP address"),
    ([], ["a.example"], "not an IP address"),
])
def test_alt_names_refuse_junk(dns, ips, bad):
    with pytest.raises(ValueError, match=bad):
        node_alt_names("a", dns, ips)


def test_dns_names():
    assert is_dns_name("node-1.example.org") and is_dns_name("*.example.org")
    assert is_dns_name("localhost")
    assert not is_dns_name("") and not is_dns_name("a..b") and not is_dns_name("x" * 64)
    assert not is_dns_name("a/b") and not is_dns_name("*")


def test_reload_waits_for_files_that_hold_still():
    loaded, new, newer = ("c1", "k1"), ("c2", "k1"), ("c2", "k2")
    assert not reload_due(loaded, loaded, loaded)
    assert not reload_due(loaded, loaded, new)      # just changed: wait one look
    assert not reload_due(loaded, new, newer)       # the key changed too: wait again
    assert reload_due(loaded, newer, newer)         # held still: load it
    assert not reload_due(loaded, None, None)       # gone: keep what is loaded
    assert not reload_due(loaded, newer, None)
