"""The URL host policy against the ways around it an audit found (issue 12): other
spellings of the metadata address, IPv4 inside IPv6, a trailing dot, other clouds'
metadata addresses. Each is refused with or without an allow-list, even one that
would match it; ordinary hosts still pass."""

from __future__ import annotations

import pytest

from controller.url_policy import HostPolicy, parse_allowed_hosts, url_problems
from tests.unit.test_start_input import plan_with_hook

OPEN = HostPolicy()
# An allow-list as wide as it gets: the refusals come before it.
EVERYTHING = HostPolicy(parse_allowed_hosts("*, 0.0.0.0/0, ::/0"))
ORDINARY = HostPolicy(
    parse_allowed_hosts("127.0.0.1, localhost, deploy.example.com, *.internal, [::1]")
)

METADATA = "169.254.169.254, a cloud metadata address"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        # 169.254.169.254 as inet_aton (and so the resolver) reads it
        ("http://2852039166/latest/meta-data", f"host 2852039166 is {METADATA}"),
        ("http://0xa9fea9fe/", f"host 0xa9fea9fe is {METADATA}"),
        ("http://0XA9FEA9FE/", f"host 0xa9fea9fe is {METADATA}"),
        ("http://0251.0376.0251.0376/", f"host 0251.0376.0251.0376 is {METADATA}"),
        ("http://169.254.43518/", f"host 169.254.43518 is {METADATA}"),
        ("http://169.16689662/", f"host 169.16689662 is {METADATA}"),
        ("http://0xa9.0xfe.0xa9.0xfe:80/", f"host 0xa9.0xfe.0xa9.0xfe is {METADATA}"),
        ("http://169.254.169.254./", f"host 169.254.169.254. is {METADATA}"),
        # IPv4 inside IPv6
        ("http://[::ffff:169.254.169.254]/", f"host [::ffff:169.254.169.254] is {METADATA}"),
        ("http://[::ffff:a9fe:a9fe]/", f"host [::ffff:a9fe:a9fe] is {METADATA}"),
        ("http://[::169.254.169.254]/", f"host [::169.254.169.254] is {METADATA}"),
        ("http://[64:ff9b::a9fe:a9fe]/", f"host [64:ff9b::a9fe:a9fe] is {METADATA}"),
        ("http://[::a9fe:a9fe%25eth0]/", f"host [::a9fe:a9fe%25eth0] is {METADATA}"),
        # other clouds' metadata addresses
        ("http://169.254.169.254/", "host 169.254.169.254 is a cloud metadata address"),
        ("http://169.254.170.2/v2/credentials", "host 169.254.170.2 is a cloud metadata"),
        ("http://100.100.100.200/latest/meta-data", "host 100.100.100.200 is a cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data", "host [fd00:ec2::254] is a cloud metadata"),
        ("http://[FD00:EC2:0:0::254]/", "host [fd00:ec2:0:0::254] is fd00:ec2::254, a cloud"),
        ("http://192.0.0.192/opc/v1", "host 192.0.0.192 is a cloud metadata address"),
        ("http://[::ffff:100.100.100.200]/", "is 100.100.100.200, a cloud metadata address"),
        # the rest of link-local
        ("http://169.254.1.1/", "host 169.254.1.1 is a link-local address"),
        ("http://2851995649/", "host 2851995649 is 169.254.0.1, a link-local address"),
        ("http://[fe80::1]:8080/", "host [fe80::1] is a link-local address"),
        ("http://[fe80::1%25eth0]/", "host [fe80::1%25eth0] is a link-local address"),
        ("http://[::ffff:169.254.1.1]/", "is 169.254.1.1, a link-local address"),
        # metadata names, however written
        ("http://metadata.google.internal/computeMetadata/v1", "host metadata.google.internal"),
        ("http://metadata.google.internal./", "host metadata.google.internal. is a cloud"),
        ("http://Metadata.Google.Internal./", "host metadata.google.internal. is a cloud"),
        ("http://metadata/", "host metadata is a cloud metadata host name"),
        ("http://metadata./", "host metadata. is a cloud metadata host name"),
        ("http://metadata.azure.internal/", "host metadata.azure.internal is a cloud"),
        ("http://instance-data/latest", "host instance-data is a cloud metadata host name"),
        ("http://instance-data.ec2.internal./", "host instance-data.ec2.internal. is a cloud"),
        # hosts a resolver or another parser could read otherwise
        ("http://metadata.google.internal../", "is not a host name"),
        ("http://%6detadata/", "host %6detadata is not a host name"),
        ("http://xn--80ak6aa92e.com./", None),
        ("http://m\N{FULLWIDTH LATIN SMALL LETTER E}tadata/", "is not a host name"),
    ],
)
@pytest.mark.parametrize("policy", [OPEN, EVERYTHING], ids=["no allow-list", "allow all"])
def test_every_way_to_write_a_metadata_or_link_local_host_is_refused(
    url: str, reason: str | None, policy: HostPolicy
) -> None:
    problem = policy.problem(url)
    if reason is None:  # an IDN in its xn-- form is an ordinary name
        assert problem is None
        return
    assert problem is not None and reason in problem, problem
    assert problem.endswith(": refused"), problem


def test_the_refusal_names_the_field_the_url_came_from() -> None:
    plan = plan_with_hook("http://0xa9fea9fe")
    assert url_problems(plan, {}, EVERYTHING) == [
        "runbook.disable_canary.http.url: host 0xa9fea9fe is 169.254.169.254, a cloud "
        "metadata address (AWS, GCP, Azure, OpenStack, Oracle): refused"
    ]
    assert url_problems(plan_with_hook("http://metadata.google.internal."), {}, OPEN) == [
        "runbook.disable_canary.http.url: host metadata.google.internal. is a cloud "
        "metadata host name: refused"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/healthz",
        "http://localhost:8080/healthz",
        "http://localhost./healthz",
        "https://deploy.example.com/api/v1/disable",
        "http://DEPLOY.example.com./x",
        "http://slot-blue.internal:8080",
        "http://[::1]:8080/healthz",
        "http://[0:0:0:0:0:0:0:1]/",
        "http://[::ffff:127.0.0.1]:8080/",
        "http://2130706433:8080/",
    ],
)
@pytest.mark.parametrize("policy", [OPEN, ORDINARY], ids=["no allow-list", "allowed"])
def test_ordinary_hosts_still_pass(url: str, policy: HostPolicy) -> None:
    assert policy.problem(url) is None


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.2/", "host 127.0.0.2 is"),
        ("http://2130706434/", "host 2130706434 is 127.0.0.2,"),
        ("http://[::2]/", "host [::2] is 0.0.0.2,"),
        ("http://[::ffff:10.0.0.1]/", "host [::ffff:10.0.0.1] is 10.0.0.1,"),
        ("http://example.com/", "host example.com is"),
        ("http://internal/", "host internal is"),
    ],
)
def test_the_allow_list_judges_the_same_normalised_host(url: str, host: str) -> None:
    assert ORDINARY.problem(url) == (
        f"{host} not among the allowed hosts "
        "(127.0.0.1, localhost, deploy.example.com, *.internal, [::1])"
    )


def test_allow_list_addresses_and_networks_match_any_spelling() -> None:
    policy = HostPolicy(parse_allowed_hosts("10.0.0.0/8, 192.168.1.1, 10.*, localhost."))
    for url in [
        "http://10.1.2.3/",
        "http://0x0a010203/",
        "http://167838211/",
        "http://[::ffff:10.1.2.3]/",
        "http://192.168.1.1/",
        "http://192.168.257/",
        "http://localhost/",
    ]:
        assert policy.problem(url) is None, url
    assert policy.problem("http://192.168.1.2/") is not None
