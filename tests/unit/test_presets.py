"""Presets: every host they name passes the grammar, and `@name` expands in allow lists."""

from __future__ import annotations

import pytest

from awf_kernel.errors import PolicyError
from awf_kernel.policy import parse_domain, parse_domains, resolve_policy
from awf_kernel.presets import PRESETS, Preset, expand


@pytest.mark.parametrize("preset", list(PRESETS.values()), ids=list(PRESETS))
def test_every_preset_host_is_a_valid_entry(preset):
    assert isinstance(preset, Preset) and preset.name and preset.description
    assert preset.domains and len(set(preset.domains)) == len(preset.domains)
    for i, host in enumerate(preset.domains):
        assert str(parse_domain(host, f"preset @{preset.name}[{i}]")) == host  # already canonical


@pytest.mark.parametrize("name,must_have", [
    ("pypi", {"pypi.org", "files.pythonhosted.org"}),
    ("conda", {"conda.anaconda.org", "repo.anaconda.com"}),
    ("github", {"github.com", "api.github.com", "codeload.github.com", "objects.githubusercontent.com",
                "raw.githubusercontent.com"}),
    ("huggingface", {"huggingface.co", "cdn-lfs.huggingface.co", "cdn-lfs-us-1.huggingface.co"}),
])
def test_required_presets_and_hosts(name, must_have):
    assert must_have <= set(expand("@" + name))


def test_presets_admit_only_what_they_name():
    policy = resolve_policy(admin_allow=parse_domains(["@pypi", "@github"], "t"))
    assert policy.decide("files.pythonhosted.org").allowed and policy.decide("api.github.com").allowed
    for host in ("evil.pypi.org", "pythonhosted.org", "gist.github.com.evil.net", "githubusercontent.com"):
        assert not policy.decide(host).allowed, host


def test_huggingface_xet_storage_is_reachable():
    policy = resolve_policy(admin_allow=parse_domains(["@huggingface"], "t"))
    assert policy.decide("cas-bridge.xethub.hf.co").allowed and policy.decide("cdn-lfs-us-1.hf.co").allowed


def test_expand_accepts_name_with_or_without_at():
    assert expand("@pypi") == expand("pypi") == PRESETS["pypi"].domains


def test_unknown_preset_lists_known_ones_and_names_the_entry():
    with pytest.raises(PolicyError) as info:
        parse_domains(["a.com", "@pipy"], "notebook metadata awf.allow_domains")
    text = str(info.value)
    assert "awf.allow_domains[1]" in text and "'@pipy'" in text
    for name in PRESETS:
        assert "@" + name in text


def test_presets_expand_in_place_and_dedup():
    rules = parse_domains(["pypi.org", "@pypi", "pypi.org"], "t")
    assert [str(r) for r in rules] == ["pypi.org", "files.pythonhosted.org"]


def test_presets_can_be_disabled():
    with pytest.raises(PolicyError, match="'@pypi' is not a host name"):
        parse_domains(["@pypi"], "admin domain_ceiling", allow_presets=False)


def test_a_bad_host_inside_a_preset_names_the_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "broken", Preset("broken", "test", ("ok.example.com", "bad host")))
    with pytest.raises(PolicyError) as info:
        parse_domains(["@broken"], "x.allow_domains")
    assert "x.allow_domains[0] (@broken)" in str(info.value) and "'bad host'" in str(info.value)
