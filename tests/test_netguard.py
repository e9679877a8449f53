"""Outbound URL checks: every internal address form is refused, public ones pass."""

from __future__ import annotations

import pytest

from fastsvd.errors import InvalidInput
from fastsvd.net.guard import check_url, is_public


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1",
        "169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::",
        "fc00::1", "fd12:3456::1", "fe80::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
        "64:ff9b::7f00:1", "ff02::1",
    ],
)  # fmt: skip
def test_internal_addresses_are_not_public(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are(address: str) -> None:
    assert is_public(address)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8000/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://2130706433/hook",  # 127.0.0.1 as one decimal number
        "http://0177.0.0.1/hook",  # octal
        "http://127.1/hook",  # short form
        "http://0x7f000001/hook",  # hexadecimal
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/",
    ],
)
def test_internal_targets_are_refused_by_the_system_resolver(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_url(url, "fal_webhook")
    assert caught.value.field == "fal_webhook"


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return {
            "public.example": ["93.184.215.14"],
            "sneaky.example": ["93.184.215.14", "10.1.2.3"],
        }[host]

    assert check_url("https://public.example/h", "f", resolver=resolver).addresses == [
        "93.184.215.14"
    ]
    with pytest.raises(InvalidInput, match="not a public address"):
        check_url("https://sneaky.example/h", "f", resolver=resolver)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("ftp://example.com/", "scheme"),
        ("https://user:pw@example.com/", "credentials"),
        ("https:///nohost", "no host"),
        ("http://[::1", "not a valid URL"),
        ("https://example.com:99999/", "not a valid URL"),
    ],
)
def test_malformed_or_other_scheme_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_url(url, "image_url", resolver=lambda h, p: ["93.184.215.14"])


def test_pinned_request_keeps_the_name_for_host_and_tls() -> None:
    checked = check_url(
        "https://hooks.example:8443/a?b=1", "f", resolver=lambda h, p: ["93.184.215.14"]
    )
    url, host, extensions = checked.pinned()
    assert url == "https://93.184.215.14:8443/a?b=1"
    assert host == {"host": "hooks.example:8443"}
    assert extensions == {"sni_hostname": "hooks.example"}


def test_private_targets_can_be_allowed_for_development() -> None:
    assert check_url("http://127.0.0.1:9/h", "f", allow_private=True).addresses == ["127.0.0.1"]
